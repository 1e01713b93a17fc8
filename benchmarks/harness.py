"""What the benchmark scripts share: paired timing, the quality pass, report writing and arguments.

Every script is a module of the ``benchmarks`` package and runs from the repository root against the
installed ``dipgo``:

    python -m benchmarks.wall_clock --help

* Paired timing (:func:`alternate`, :func:`paired_timing`): two (or more) callables timed in turn in short
  chunks, so that a drift of the machine longer than a chunk hits them alike. Each pass gives the median
  seconds per call of each and their ratio; over passes, the median ratio and its range.
* The quality pass (:class:`QualityPass`): the full model's images once, then each method or pruned
  pipeline on the same seeds, scored by :mod:`dipgo.evaluate.evaluation` (MACs as executed, FID,
  conditioning accuracy, PSNR/SSIM against the full model's images).
* Reports: JSON written atomically (:func:`write_json`), Markdown tables from rows (:func:`table`,
  :func:`write_markdown`), the machine a run was measured on (:func:`machine`).
* Arguments: the parser every script starts from (:func:`parser`) and the options they share; a measurement
  that needs a process of its own (:func:`child_json`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from dipgo.fileio import atomic_path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "out"  # what a benchmark makes but does not commit (pruned model folders: sizes)


# ----------------------------------------------------------------------------------------- arguments
def parser(doc: str) -> argparse.ArgumentParser:
    """The parser of a script whose module docstring is ``doc`` (shown whole by ``--help``)."""
    return argparse.ArgumentParser(prog=f"python -m benchmarks.{Path(sys.argv[0]).stem}", description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_threads(p: argparse.ArgumentParser, default: int | None) -> None:
    p.add_argument("--threads", type=int, default=default,
                   help="torch threads (default: %(default)s; none: torch's own choice)")


def add_report(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--report", action="store_true", help=f"only rewrite {what} from the JSON (no measuring)")


def set_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------- processes
def child_json(module: str, *args: str) -> dict:
    """Run ``python -m benchmarks.<module> ARGS`` in a fresh process from the repository root (a measurement
    that must not share a process, e.g. peak memory) and return the JSON object its last output line holds."""
    out = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *args], capture_output=True, text=True,
                         cwd=ROOT)
    if out.returncode:
        raise SystemExit(f"benchmarks.{module} {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    print(rec, flush=True)
    return rec


# ----------------------------------------------------------------------------------------- timing
Around = Callable[[], AbstractContextManager] | None


def alternate(fns: Sequence[Callable[[], object]], chunks: int, calls: int = 1, warmup: int = 1,
              around: Sequence[Around] | None = None) -> list[list[float]]:
    """Seconds per call of each of ``fns``, timed in turn: ``chunks`` rounds, each ``calls`` calls of
    ``fns[0]``, then of ``fns[1]``, ..., after ``warmup`` untimed calls of each.

    ``around[i]``, if given, makes a context entered around each chunk of ``fns[i]`` and outside its timed
    calls (a schedule applied and removed, say).
    """
    around = list(around) if around is not None else [None] * len(fns)
    if len(around) != len(fns):
        raise ValueError(f"around has {len(around)} entries for {len(fns)} callables")
    times: list[list[float]] = [[] for _ in fns]

    def chunk(i: int, n: int, store: list[float] | None) -> None:
        with (around[i] or nullcontext)():
            for _ in range(n):
                t0 = time.perf_counter()
                fns[i]()
                if store is not None:
                    store.append(time.perf_counter() - t0)

    for i in range(len(fns)):
        chunk(i, warmup, None)
    for _ in range(chunks):
        for i in range(len(fns)):
            chunk(i, calls, times[i])
    return times


@dataclass
class Paired:
    """Paired timing of a base callable and another: per pass, the median seconds per call of each."""

    base_s: list[float] = field(default_factory=list)
    other_s: list[float] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        """Per pass, the base's median time over the other's (the other's speedup)."""
        return [b / o for b, o in zip(self.base_s, self.other_s, strict=True)]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def ratio_range(self) -> tuple[float, float]:
        return min(self.ratios), max(self.ratios)

    @property
    def base_median_s(self) -> float:
        return statistics.median(self.base_s)

    @property
    def other_median_s(self) -> float:
        return statistics.median(self.other_s)


def paired_pass(base: Callable[[], object], other: Callable[[], object], chunks: int, calls: int = 1,
                warmup: int = 1, around: Sequence[Around] | None = None) -> tuple[float, float]:
    """One pass of :func:`alternate` over ``base`` and ``other``: the median seconds per call of each."""
    a, b = alternate((base, other), chunks, calls, warmup, around)
    return statistics.median(a), statistics.median(b)


def paired_timing(base: Callable[[], object], other: Callable[[], object], passes: int = 5, chunks: int = 10,
                  calls: int = 1, warmup: int = 1, around: Sequence[Around] | None = None) -> Paired:
    """``passes`` passes of :func:`paired_pass`; a pass's ratio compares times taken side by side, so the
    ratios vary less than the times do."""
    result = Paired()
    for _ in range(passes):
        a, b = paired_pass(base, other, chunks, calls, warmup, around)
        result.base_s.append(a)
        result.other_s.append(b)
    return result


def denoiser_call(pipe, calibration, rows: int = 1) -> tuple[tuple, dict]:
    """The inputs of one denoiser call of ``pipe`` (captured from a real generation) with every tensor of batch 1
    repeated to ``rows`` rows, for timing the denoiser alone."""
    import torch

    from dipgo.models.pipelines import capture_denoiser_call

    def rep(v):
        return v.repeat(rows, *[1] * (v.dim() - 1)) if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == 1 else v

    args, kwargs = capture_denoiser_call(pipe, calibration)
    return tuple(rep(a) for a in args), {k: rep(v) for k, v in kwargs.items()}


@contextmanager
def enabled(applied):
    """A bound method (:class:`dipgo.evaluate.baselines.Applied`) switched on for the block."""
    applied.enable()
    try:
        yield applied
    finally:
        applied.disable()


# ----------------------------------------------------------------------------------------- quality
class Model:
    """A zoo model (or a pruned pipeline folder) loaded for a benchmark: the pipeline with its scheduler
    set, its calibration (condition index == digit for the zoo models), guidance scale and judge."""

    def __init__(self, name: str, scheduler: str | None = "ddim"):
        from dipgo import zoo
        from dipgo.models.pipelines import default_calibration, set_scheduler

        self.name = name
        self.pipe, self.source = zoo.load(name)
        if scheduler:
            set_scheduler(self.pipe, scheduler)
        self.calibration = default_calibration(self.pipe, defaults=self.source.defaults)
        self.guidance = self.source.guidance_scale

    @cached_property
    def judge(self):
        """FID statistics and classifier of the model card (loaded on first use: some passes need neither)."""
        from dipgo.evaluate.evaluation import Judge

        return Judge.from_source(self.source)


class QualityPass:
    """The full model's ``n`` images (seeds ``seed``..., balanced conditions) once, then each method or pruned
    pipeline on the same seeds against them.

    A record is :func:`dipgo.evaluate.evaluation.compare`'s: MACs per image as executed, FID and conditioning
    accuracy with the model's judge, PSNR/SSIM against the full model's images as saved (8 bit).
    """

    def __init__(self, model: Model, n: int = 256, steps: int = 20, seed: int = 0, batch: int = 32,
                 progress: bool = False, scored: bool = True):
        from dipgo.evaluate.baselines import Full

        self.model, self.n, self.steps, self.seed, self.batch, self.progress = model, n, steps, seed, batch, progress
        self.scored = scored  # False: no FID or accuracy (only the comparison with the full model)
        ev = self.evaluator(model.pipe)
        try:
            self.full = ev.run(Full().bind(model.pipe, steps, model.guidance), progress=progress)
            self.q_full = ev.quality(self.full, None, progress=progress)
        finally:
            ev.close()

    def evaluator(self, pipe):
        from dipgo.evaluate.evaluation import Evaluator

        m = self.model
        return Evaluator(pipe, self.n, self.seed, m.guidance, self.batch, m.calibration,
                         m.judge if self.scored else None)

    def measure(self, applied=None, pipe=None):
        """``(record, run)`` of ``applied`` (a bound method; default: ``pipe`` as it is, at the pass's steps) on
        ``pipe`` (default: the model's own pipeline). Each measurement has its own evaluator, closed after it,
        so no probe stays on a pipeline that is copied or pruned next."""
        from dipgo.evaluate.baselines import Full
        from dipgo.evaluate.evaluation import compare

        pipe = self.model.pipe if pipe is None else pipe
        ev = self.evaluator(pipe)
        try:
            run = ev.run(applied or Full().bind(pipe, self.steps, self.model.guidance), progress=self.progress)
            q = ev.quality(run, self.full, progress=self.progress)
        finally:
            ev.close()
        return compare(ev, run, self.full, q, self.q_full), run

    def record(self, applied=None, pipe=None, **extra) -> dict:
        """The record of :meth:`measure`, with ``extra`` keys added."""
        rec, _ = self.measure(applied, pipe)
        rec.update(extra)
        return rec


# The committed bench searches (benchmarks/results/bench/searches/): one per model, base and budget, from each
# initialisation (everything kept; the fewer-steps schedule at the budget), the lower final consistency used.
SEARCHES = RESULTS / "bench" / "searches"
SEARCH_ITERATIONS = 60
INITS = ("keep", "uniform")


def search_batch(pipe, base: int) -> int:
    """Images per search iteration: 4 for a UNet at <= 20 steps (cheap unrolled runs), else 2."""
    from dipgo.models.pipelines import denoiser_of

    return 4 if hasattr(denoiser_of(pipe), "up_blocks") and base <= 20 else 2


def committed_search(m: Model, base: int, budget: float, directory: str | Path = SEARCHES,
                     scheduler: str = "ddim", progress: bool = False) -> tuple:
    """The search for ``budget`` fewer MACs at ``base`` steps as the committed ones were made: each
    initialisation loaded if saved, else searched and saved; ``(result, info)`` of the lower final consistency."""
    from dipgo.cache.search import Search, SearchConfig, load_result, save_result

    directory = Path(directory)
    tag = {"plms": "pndm", "dpm": "dpmpp", "dpm++": "dpmpp"}.get(scheduler, scheduler)
    found = []
    for init in INITS:
        path = directory / f"{m.name}-{tag}{base}-x{budget:g}-{init}.json"
        if not path.exists():
            cfg = SearchConfig(ratio=round(1 - 1 / budget, 4), num_inference_steps=base, guidance_scale=m.guidance,
                               iterations=SEARCH_ITERATIONS, batch=search_batch(m.pipe, base), init=init)
            ckpt = path.with_name(path.name + ".search.pt")
            result = Search(m.pipe, cfg, checkpoint_path=ckpt, calibration=m.calibration).run(progress=progress)
            save_result(result, path)
            ckpt.unlink(missing_ok=True)
        data = read_json(path)
        found.append((data["final_consistency"], init, path, data["seconds"]))
    best = min(found)
    info = {"init": best[1], "seconds": sum(f[3] for f in found), "final_consistency": {f[1]: f[0] for f in found}}
    return load_result(best[2], m.pipe), info


def summary(rec: dict) -> str:
    """One line of a record for progress output: MACs speedup, FID, accuracy, PSNR."""
    def num(key: str, fmt: str) -> str:
        return "-" if rec.get(key) is None else format(rec[key], fmt)

    return (f"MACs {rec['macs_speedup']:.2f}x, FID {num('fid', '.2f')}, acc {num('cond_acc', '.3f')}, "
            f"PSNR {num('psnr_vs_full', '.2f')}")


# ----------------------------------------------------------------------------------------- reports
def read_json(path: str | Path, default=None):
    """The JSON at ``path``, or ``default`` if there is no such file."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else default


def write_json(path: str | Path, data) -> Path:
    """Write ``data`` (indent 1, as every committed report) so the file appears whole or not at all."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))
    return path


def write_markdown(path: str | Path, lines: Iterable[str], echo: bool = True) -> Path:
    """Write a Markdown page from its lines (atomically); ``echo`` prints it too."""
    text = "\n".join(lines) + "\n"
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    if echo:
        print(text, end="")
    return path


def write_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return path


class RowReport:
    """A JSON report of measured rows, saved after every row. The rows of an interrupted run are kept when its
    ``settings`` keys match this run's (``keep`` may drop some of them). ``key`` names the fields that identify
    a row, so that a row completed in place (a column added) replaces its older copy when another process saves;
    without it, rows are told apart by their whole content."""

    def __init__(self, path: str | Path, report: dict, settings: Sequence[str],
                 keep: Callable[[dict], bool] | None = None, key: Sequence[str] | None = None):
        self.path, self.report, self.settings, self.keep = Path(path), report, tuple(settings), keep
        self.key = tuple(key) if key else None
        report.setdefault("rows", [])
        old = read_json(self.path)
        if self._same_settings(old):
            report["rows"] = [r for r in old["rows"] if keep is None or keep(r)]

    def _same_settings(self, other: dict | None) -> bool:
        return bool(other) and all(other.get(k) == self.report.get(k) for k in self.settings)

    @property
    def rows(self) -> list[dict]:
        return self.report["rows"]

    def find(self, **match) -> dict | None:
        """The first row whose keys have the given values."""
        return next((r for r in self.rows if all(r.get(k) == v for k, v in match.items())), None)

    def add(self, rec: dict, prefix: str = "") -> dict:
        """Append ``rec``, save, and print its :func:`summary`."""
        print(f"{prefix}{rec.get('label', rec.get('method'))}: {summary(rec)}", flush=True)
        self.rows.append(rec)
        self.save()
        return rec

    def save(self) -> None:
        """Write the report, first taking in rows another process (the same command on other models, say)
        saved to the same file meanwhile; a lock file keeps two saves from interleaving."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            disk = read_json(self.path)
            if self._same_settings(disk):
                self._merge([r for r in disk["rows"] if self.keep is None or self.keep(r)])
            write_json(self.path, self.report)

    def _merge(self, theirs: list[dict]) -> None:
        """Take in another process's rows: new ones are added; of two copies of one row (same ``key``), the one
        holding more fields is kept."""
        ident = (lambda r: tuple(r.get(k) for k in self.key)) if self.key else (lambda r: json.dumps(r, sort_keys=True))
        mine = {ident(r): i for i, r in enumerate(self.rows)}
        for r in theirs:
            i = mine.get(ident(r))
            if i is None:
                mine[ident(r)] = len(self.rows)
                self.rows.append(r)
            elif set(r) > set(self.rows[i]):
                self.rows[i] = r


def row(cells: Iterable[object]) -> str:
    """One Markdown table row."""
    return "|" + "".join(f" {c} |" for c in cells)


def table(head: Sequence[str], rows: Iterable[Iterable[object]] = ()) -> list[str]:
    """A Markdown table's lines: the head, its rule, then one line per row of cells (already formatted)."""
    return [row(head), "|" + "---|" * len(head), *(row(r) for r in rows)]


def machine() -> dict:
    """CPU, cores, threads, torch, allocator settings, Python and date of this run."""
    from dipgo.evaluate.bench import machine as describe

    return describe()


def how_to_run(module: str, args: str = "") -> str:
    """The command that runs benchmark ``module`` (e.g. ``"wall_clock"``), for a report's text."""
    return f"python -m benchmarks.{module}" + (f" {args}" if args else "")


def pruned_entries(results: Path) -> list[dict]:
    """Layer- and depth-pruned models measured by their own benchmarks (``benchmarks/results/layers`` and
    ``depth``, DDIM-20, the same images and seeds as the bench), as NTIRE entries. Their runtime is the
    denoiser call's latency ratio at 16 images (the whole generation's was not timed for them)."""
    out = []
    for kind in ("layers", "depth"):
        for path in sorted((results / kind).glob("*.json")):
            rep = json.loads(path.read_text())
            if "full" not in rep or "rows" not in rep:
                continue
            for r in rep["rows"]:
                speed = r.get("latency_ratio") or (r.get("latency_speedup") or {}).get("16")
                if not speed:
                    continue  # a DiP-GO combination: its speed is a whole-pipeline matter, not timed here
                name = f"{kind}: {r['label']} ({r['ratio']:g})"
                out.append({"model": rep["model"], "base": rep["steps"], "name": name, "runtime": 1 / speed,
                            "macs": 1 / r["macs_speedup"], "params": r["params"] / rep["full"]["params"],
                            "psnr_vs_full": r["psnr_vs_full"], "fid": r["fid"], "fid_full": r["fid_full"],
                            "source": f"{kind}/{path.name}"})
    return out
