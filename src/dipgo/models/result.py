"""What a weight-pruning method hands back: the pruned pipeline, what was chosen, and what it costs.

Layer pruning (:class:`dipgo.layers.LayerPruning`) and depth pruning (:class:`dipgo.depth.DepthPruning`)
return subclasses of :class:`PrunedModel`, so callers (the CLI, benchmarks) read the costs, record the
metadata and write the folder the same way whichever method ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .select import Selection


@dataclass(kw_only=True)
class PrunedModel:
    """A pruned pipeline and how it was made.

    ``pipe`` shares the original pipeline's components except its denoiser, a pruned copy; the original
    is left untouched. ``params_full`` / ``macs_full`` are the unpruned denoiser's parameters and MACs per
    call, ``params`` / ``macs`` the pruned one's. ``history`` holds one row per training step (empty for a
    one-shot result) and ``seconds`` the time each stage took.
    """

    pipe: object
    selection: Selection
    scores: dict
    by: str
    ratio: float
    params_full: int
    params: int
    macs_full: int
    macs: int
    history: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)

    def info(self) -> dict:
        """The metadata a pruned folder records (JSON-ready): the measure, the target and the costs."""
        return {"by": self.by, "ratio": self.ratio, "params_full": self.params_full, "params": self.params,
                "macs_full": self.macs_full, "macs": self.macs, "seconds": self.seconds}

    def describe(self) -> str:
        """One line saying what was pruned, for the CLI's report."""
        return f"pruned {len(self.selection.names)} modules"

    def save(self, folder: str | Path) -> Path:
        """Write the pruned pipeline and :meth:`info` to ``folder`` (``dipgo.load_pruned`` reads it back)."""
        raise NotImplementedError(f"{type(self).__name__} does not say how it is saved")
