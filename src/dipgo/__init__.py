"""dipgo: make pretrained diffusion models cheaper to sample from.

    import dipgo
    schedule = dipgo.prune(pipe, ratio=0.8, prompts=[...])   # DiP-GO: which (step, block) pairs reuse their cache
    dipgo.apply(pipe, schedule)                               # attach it: skipped blocks do no work
    dipgo.compile_blocks(pipe)                                # optional: torch.compile the gated blocks
    dipgo.remove(pipe)                                        # detach it

    pruned = dipgo.layers.prune(pipe, dipgo.layers.LayersConfig(ratio=0.5))   # LAPTOP-Diff layer pruning
    pruned = dipgo.depth.prune(pipe, dipgo.depth.DepthConfig(ratio=0.375))    # UPDP depth pruning
    pipe = dipgo.load_pruned("out/folder")                    # a layer- or depth-pruned model, stock class

Layout (imports run one way, down): ``cli`` -> ``evaluate`` and ``zoo`` -> the three methods side by side,
``cache`` (DiP-GO; ``api`` is its facade), ``layers`` (LAPTOP-Diff) and ``depth`` (UPDP) -> the shared layer
``models`` (adapters, costs, surgery, calibration data, selection, distillation, folders) -> ``errors``,
``fileio``, ``dist``, ``version``. ``tests/test_layout.py`` checks it.
"""

from . import depth, layers
from .api import PruneConfig, apply, compile_blocks, generation, is_applied, prune, remove, summary
from .cache.postprocess import schedule_at_ratio
from .cache.schedule import Schedule, ScheduleError
from .depth.io import load_pruned
from .errors import DipgoError
from .malloc import tune_malloc
from .models.calibration import Calibration
from .version import __version__ as __version__

__all__ = ["apply", "remove", "summary", "prune", "PruneConfig", "generation", "is_applied", "compile_blocks",
           "schedule_at_ratio", "Schedule", "ScheduleError", "DipgoError", "Calibration", "load_pruned",
           "tune_malloc", "layers", "depth"]
