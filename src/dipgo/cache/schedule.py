"""The skip schedule: which blocks each denoiser call computes, as a versioned, checked JSON file.

A schedule is bound to one denoiser (its class and a hash of its config), one block list, one
scheduler class and one number of inference steps. ``Schedule.check`` refuses any other pipeline
with a message saying exactly what differs, because a schedule applied to the wrong model or step
count silently produces garbage rather than an error.

Steps are counted in denoiser *calls* per generation: one per scheduler step for DDIM, DPM-Solver
and Euler; PNDM/PLMS calls the model twice at its second timestep, so a PLMS-50 schedule has 51
entries. With classifier-free guidance batched into one call (as all diffusers SD/DiT pipelines do)
cond and uncond share the call; pipelines that call cond and uncond separately use ``branches=2``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..errors import DipgoError
from ..fileio import atomic_path
from ..models.identity import config_hash

SCHEMA_VERSION = 1
# Version 2 marks a schedule whose reused blocks are forecast, so that a dipgo without forecasting refuses it by
# its version rather than by a field it does not know. Schedules without a forecast stay version 1.
FORECAST_VERSION = 2
# Version 3 marks an order-2 forecast in the Taylor form, so that a dipgo that only knows the polynomial form
# refuses it by its version. Version-2 files are polynomial forecasts; orders 0 and 1 keep their versions.
TAYLOR_VERSION = 3
READ_VERSIONS = (SCHEMA_VERSION, FORECAST_VERSION, TAYLOR_VERSION)
FORECAST_ORDERS = (0, 1, 2)
FORECAST_FORMS = ("taylor", "polynomial")
# Fields added after the first version-1 files were written: a file without one means its default.
LATER_FIELDS = ("forecast_order", "forecast_form")


def _pipeline_lines(rec: dict | None) -> list[str]:
    """How the pruning pipeline chose this schedule: its candidates on held-out images and the comparison."""
    if not isinstance(rec, dict) or not isinstance(rec.get("candidates"), dict):
        return []
    held = rec.get("held_out") or {}
    lines = [f"chosen on {held.get('n')} held-out images (seeds from {held.get('seed')}), {rec.get('effort')} effort; "
             "candidates after reaching the budget (PSNR vs the full model):"]
    width = max(map(len, rec["candidates"]), default=0)
    lines += [f"  {k:<{width}} {v:6.2f} dB{'  <- best start, then refined' if k == rec.get('winner') else ''}"
              for k, v in rec["candidates"].items()]
    c = rec.get("compared")
    lines.append(f"result: {rec.get('psnr', float('nan')):.2f} dB"
                 + (f"; {c['label']} at {c['macs_speedup']:.2f}x fewer MACs: {c['psnr']:.2f} dB" if c else ""))
    return lines


class ScheduleError(DipgoError):
    """A schedule file that is corrupt, or that does not fit the pipeline it is applied to."""


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _require(ok: bool, name: str, rule: str, value) -> None:
    """Raise a :class:`ScheduleError` naming field ``name`` unless ``ok``."""
    if not ok:
        raise ScheduleError(f"schedule field {name!r} must be {rule}, got {_short(value)}; re-run 'dipgo prune' "
                            "or fix the file")


def _is_text_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


@dataclass
class Schedule:
    """Per-call lists of computed blocks, plus everything needed to check it fits a pipeline."""

    model_class: str
    config_hash: str
    blocks: list[str]
    num_inference_steps: int
    scheduler: str
    steps: list[list[str]]  # steps[i]: names of the blocks computed at denoiser call i
    cache_modes: dict[str, str] = field(default_factory=dict)  # block -> "output" | "residual"
    branches: int = 1
    output_block: str | None = None  # see adapters.BlockGraph.output_block
    requested_ratio: float | None = None
    achieved_ratio: float | None = None
    macs_full: int | None = None  # MACs of one generation, per image, CFG included
    macs: int | None = None
    meta: dict = field(default_factory=dict)
    version: int = SCHEMA_VERSION
    # How a reused block's value is formed from its last computed ones: 0 reuses the last one (DiP-GO's
    # backup connection); 1 and 2 extrapolate from the last 2 or 3, in call index, in ``forecast_form``: a
    # Taylor series (TaylorSeer's) or the polynomial through them. The two differ only at order 2, so a
    # schedule of a lower order always says "taylor".
    forecast_order: int = 0
    forecast_form: str = "taylor"

    def __post_init__(self):
        if self.forecast_order in (0, 1) and self.forecast_form in FORECAST_FORMS:
            self.forecast_form = "taylor"
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise a :class:`ScheduleError` naming the first field that is missing, of the wrong type or out of
        range, or that contradicts another."""
        self._validate_header()
        self._validate_steps()
        self._validate_costs()

    def _validate_header(self) -> None:
        for name in ("model_class", "config_hash", "scheduler"):
            _require(isinstance(getattr(self, name), str), name, "a string", getattr(self, name))
        _require(_is_text_list(self.blocks), "blocks", "a list of block names (non-empty strings)", self.blocks)
        if not self.blocks:
            raise ScheduleError("schedule has no blocks (field 'blocks' is empty)")
        if len(set(self.blocks)) != len(self.blocks):
            raise ScheduleError(f"schedule lists a block twice in field 'blocks': {self.blocks}")
        _require(_is_int(self.num_inference_steps) and self.num_inference_steps >= 1, "num_inference_steps",
                 "an integer >= 1", self.num_inference_steps)
        _require(_is_int(self.branches) and self.branches >= 1, "branches",
                 "an integer >= 1 (denoiser calls per step with their own caches)", self.branches)
        _require(self.output_block is None or self.output_block in self.blocks, "output_block",
                 "null or one of the schedule's blocks", self.output_block)
        _require(isinstance(self.meta, dict), "meta", "a dict", self.meta)
        if isinstance(self.forecast_order, bool) or self.forecast_order not in FORECAST_ORDERS:
            raise ScheduleError(f"forecast_order must be one of {FORECAST_ORDERS}, got {self.forecast_order!r}")
        if self.forecast_form not in FORECAST_FORMS:
            raise ScheduleError(f"forecast_form must be one of {FORECAST_FORMS}, got {_short(self.forecast_form)}")
        _require(isinstance(self.cache_modes, dict) and all(isinstance(m, str) for m in self.cache_modes.values()),
                 "cache_modes", "a dict from block name to cache mode", self.cache_modes)
        unknown = sorted(set(self.cache_modes) - set(self.blocks), key=str)
        if unknown:
            raise ScheduleError(f"schedule field 'cache_modes' names block(s) {unknown} that are not in field "
                                f"'blocks' {self.blocks}; re-run 'dipgo prune' or fix the file")
        bad_modes = {m for m in self.cache_modes.values() if m.partition(":")[0] not in ("output", "residual")}
        if bad_modes:
            raise ScheduleError(f"unknown cache mode(s) {sorted(bad_modes)} in field 'cache_modes'; use 'output' or "
                                "'residual[:inputs]'")

    def _validate_steps(self) -> None:
        _require(isinstance(self.steps, list), "steps", "a list with one list of block names per denoiser call",
                 self.steps)
        if not self.steps:
            raise ScheduleError("schedule has no steps (field 'steps' is empty)")
        if len(self.steps) < self.num_inference_steps * self.branches:
            raise ScheduleError(f"schedule field 'steps' has {len(self.steps)} rows, but field 'num_inference_steps' "
                                f"({self.num_inference_steps}) times field 'branches' ({self.branches}) needs at least "
                                f"{self.num_inference_steps * self.branches}, one per denoiser call; re-run "
                                "'dipgo prune' or fix the file")
        known = set(self.blocks)
        for i, kept in enumerate(self.steps):
            _require(isinstance(kept, list) and all(isinstance(b, str) for b in kept), f"steps[{i}]",
                     "a list of block names", kept)
            unknown = set(kept) - known
            if unknown:
                raise ScheduleError(f"step {i} (field 'steps') computes unknown block(s) {sorted(unknown)}; blocks "
                                    f"are {self.blocks}")
            if len(set(kept)) != len(kept):
                raise ScheduleError(f"step {i} (field 'steps') lists a block twice: {kept}")
        for i in range(min(self.branches, len(self.steps))):
            if set(self.steps[i]) != known:
                raise ScheduleError(f"call {i} must compute every block (nothing is cached yet in the first "
                                    f"'branches'={self.branches} calls; field 'steps')")

    def _validate_costs(self) -> None:
        for name in ("macs", "macs_full"):
            value = getattr(self, name)
            _require(value is None or (_is_int(value) and value >= 0), name, "null or an integer >= 0", value)
        if self.macs is not None and self.macs_full is not None and self.macs > self.macs_full:
            raise ScheduleError(f"schedule field 'macs' ({self.macs}) exceeds field 'macs_full' ({self.macs_full}); "
                                "re-run 'dipgo prune' or fix the file")
        for name in ("requested_ratio", "achieved_ratio"):
            value = getattr(self, name)
            _require(value is None or (_is_number(value) and 0 <= value < 1), name, "null or a number in [0, 1)",
                     value)

    @property
    def num_calls(self) -> int:
        return len(self.steps)

    def computes(self, call: int, block: str) -> bool:
        return block in self._sets()[call]

    def _sets(self) -> list[frozenset]:
        if getattr(self, "_cached_sets", None) is None or len(self._cached_sets) != len(self.steps):
            self._cached_sets = [frozenset(s) for s in self.steps]
        return self._cached_sets

    def mask(self) -> torch.Tensor:
        """(calls, blocks) 0/1 tensor: 1 where the block is computed."""
        index = {b: j for j, b in enumerate(self.blocks)}
        m = torch.zeros(len(self.steps), len(self.blocks))
        for i, kept in enumerate(self.steps):
            for b in kept:
                m[i, index[b]] = 1
        return m

    # ------------------------------------------------------------------ checks against a pipeline
    def check(self, denoiser: torch.nn.Module, scheduler=None, num_inference_steps: int | None = None) -> None:
        """Raise :class:`ScheduleError` naming every difference between this schedule and the target."""
        problems = []
        if type(denoiser).__name__ != self.model_class:
            problems.append(f"model class: schedule is for {self.model_class}, pipeline has {type(denoiser).__name__}")
        elif config_hash(denoiser) != self.config_hash:
            problems.append(f"model config hash: schedule {self.config_hash}, pipeline {config_hash(denoiser)} "
                            "(same class, different architecture)")
        modules = dict(denoiser.named_modules())
        missing = [b for b in self.blocks if b not in modules]
        if missing:
            problems.append(f"blocks missing from the model: {missing}")
        if scheduler is not None and type(scheduler).__name__ != self.scheduler:
            problems.append(f"scheduler: schedule is for {self.scheduler}, pipeline has {type(scheduler).__name__} "
                            f"(set pipe.scheduler = {self.scheduler}.from_config(pipe.scheduler.config))")
        if num_inference_steps is not None and num_inference_steps != self.num_inference_steps:
            problems.append(f"num_inference_steps: schedule is for {self.num_inference_steps}, "
                            f"pipeline called with {num_inference_steps}")
        if problems:
            raise ScheduleError("schedule does not fit this pipeline:\n  - " + "\n  - ".join(problems))

    # ------------------------------------------------------------------ step-count transfer
    def transferred(self, num_inference_steps: int, num_calls: int) -> Schedule:
        """This schedule mapped to another step count over normalised time (an explicit opt-in: the
        schedule was searched for ``self.num_inference_steps``).

        Each call covers an equal share of the sampling run, ``[j, j + 1) / num_calls``. A target call's
        *mass* for a block is how much of its span the source computed that block in. One threshold for
        all blocks and calls turns mass into computed / reused, chosen so that the share of MACs computed
        matches the source schedule's (so its MACs ratio stays about the same). One shared threshold keeps
        blocks that the source computed together computed together (a per-block rule dephases them, which
        measured far worse on a UNet), and unlike a fixed 1/2 it keeps sparse blocks (a block computed on
        every third of 50 calls has mass 0.4 or 0.8 at 20 calls). The first ``branches`` calls compute
        everything, as every schedule must.
        """
        if num_inference_steps < 1 or num_calls < 1:
            raise ScheduleError(f"cannot transfer a schedule to {num_inference_steps} steps ({num_calls} calls)")
        if num_inference_steps == self.num_inference_steps and num_calls == self.num_calls:
            return self
        src, dst = self.num_calls, num_calls
        mask = self.mask().double()
        # overlap of target call j with source call i, both on [0, 1): (dst, src), in units of target calls
        lo = torch.maximum(torch.arange(dst)[:, None] / dst, torch.arange(src)[None, :] / src)
        hi = torch.minimum((torch.arange(dst)[:, None] + 1) / dst, (torch.arange(src)[None, :] + 1) / src)
        mass = ((hi - lo).clamp_min(0).double() * dst) @ mask  # (dst, blocks), each in [0, 1]
        mass[:min(self.branches, dst)] = 1.0
        profile = self.meta.get("cost_profile")
        weight = torch.tensor(profile["block_macs"] if profile else [1.0] * len(self.blocks), dtype=torch.float64)
        want = float((mask * weight).sum() / (src * weight.sum()))
        best = None
        for tau in torch.unique(mass[mass > 0]).tolist():
            share = float(((mass >= tau - 1e-9).double() * weight).sum() / (dst * weight.sum()))
            if best is None or abs(share - want) < best[0] - 1e-12:
                best = (abs(share - want), tau)
        new = (mass >= best[1] - 1e-9).float()
        steps = [[b for j, b in enumerate(self.blocks) if new[i, j] > 0] for i in range(dst)]
        macs = macs_full = achieved = None
        profile = self.meta.get("cost_profile")
        if profile and self.macs_full:
            from ..models.costs import CostProfile

            prof = CostProfile(**profile)
            cfg = max(1, round(self.macs_full / (src * prof.call_macs)))
            skip = self.output_block is not None and self.forecast_order == 0
            macs = int(prof.generation_macs(new, cfg, skip_empty_calls=skip))
            macs_full = int(prof.generation_macs(torch.ones_like(new), cfg))
            achieved = round(1 - macs / macs_full, 6)
        meta = dict(self.meta, transferred_from={"num_inference_steps": self.num_inference_steps,
                                                 "calls": self.num_calls, "achieved_ratio": self.achieved_ratio})
        return replace(self, num_inference_steps=num_inference_steps, steps=steps, macs=macs, macs_full=macs_full,
                       achieved_ratio=achieved, meta=meta)

    # ------------------------------------------------------------------ summary
    def summary(self) -> str:
        """A human-readable table of what is computed (#) and reused (.) per call."""
        width = max(len(b) for b in self.blocks)
        lines = [f"{self.model_class}, {self.scheduler} {self.num_inference_steps} steps, "
                 f"{self.num_calls} calls; # computed, . reused from cache"
                 + ("" if not self.forecast_order else
                    f" (forecast through the last {self.forecast_order + 1} computed values"
                    + (f", {self.forecast_form} form)" if self.forecast_order == 2 else ")"))]
        for b in self.blocks:
            row = "".join("#" if self.computes(i, b) else "." for i in range(self.num_calls))
            lines.append(f"{b:>{width}} {row}")
        full_calls = sum(len(s) == len(self.blocks) for s in self.steps)
        lines.append(f"{full_calls} full calls, {sum(len(s) == 0 for s in self.steps)} calls reuse every block")
        if self.macs_full and self.macs:
            lines.append(f"MACs per image: {self.macs / 1e9:.3f} G of {self.macs_full / 1e9:.3f} G "
                         f"({self.macs_full / self.macs:.2f}x fewer, "
                         f"pruned ratio {1 - self.macs / self.macs_full:.3f})")
        lines += _pipeline_lines(self.meta.get("pipeline"))
        return "\n".join(lines)

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("_cached_sets", None)
        d["version"] = (TAYLOR_VERSION if self.forecast_order == 2 and self.forecast_form == "taylor"
                        else FORECAST_VERSION if self.forecast_order else SCHEMA_VERSION)
        if d["version"] != TAYLOR_VERSION:
            d.pop("forecast_form")  # implied by the version: an older dipgo reads the file as it always did
        return {"format": "dipgo-schedule", **d}

    @classmethod
    def from_dict(cls, d: dict) -> Schedule:
        if not isinstance(d, dict) or d.get("format") != "dipgo-schedule":
            raise ScheduleError("not a dipgo schedule (missing \"format\": \"dipgo-schedule\")")
        version = d.get("version")
        if version not in READ_VERSIONS:
            raise ScheduleError(f"schedule format version {version!r} is not supported (this dipgo reads versions "
                                f"{', '.join(map(str, READ_VERSIONS))}); upgrade dipgo, or re-run 'dipgo prune'")
        if version == SCHEMA_VERSION and d.get("forecast_order", 0) not in (0, None):
            raise ScheduleError(f"a version-1 schedule has forecast_order={d.get('forecast_order')!r}, which version "
                                f"{FORECAST_VERSION} files hold; re-run 'dipgo prune'")
        fields = {k: v for k, v in d.items() if k != "format"}
        if version != TAYLOR_VERSION:
            fields.setdefault("forecast_form", "polynomial")  # versions 1 and 2 predate the Taylor form
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(names - set(fields) - set(LATER_FIELDS))
        unexpected = sorted(set(fields) - names)
        if missing or unexpected:
            raise ScheduleError(f"schedule file has missing or unexpected fields (missing: {missing}, unexpected: "
                                f"{unexpected}); re-run 'dipgo prune'")
        return cls(**fields)

    def save(self, path: str | Path) -> Path:
        """Write atomically: a temp file in the same folder, then an atomic rename."""
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=1))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Schedule:
        path = Path(path)
        if not path.is_file():
            raise ScheduleError(f"schedule file {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ScheduleError(f"schedule file {path} is corrupt or truncated ({err}); re-run 'dipgo prune'") from err
        try:
            return cls.from_dict(data)
        except ScheduleError as err:
            raise ScheduleError(f"schedule file {path}: {err}") from err
