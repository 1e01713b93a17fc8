"""dipgo: make pretrained diffusion models cheaper to sample from (DiP-GO skip schedules).

    import dipgo
    schedule = dipgo.prune(pipe, ratio=0.8, prompts=[...])   # learn which (step, block) pairs can reuse their cache
    dipgo.apply(pipe, schedule)                               # attach it: skipped blocks do no work
    dipgo.remove(pipe)                                        # detach it

    pipe = dipgo.load_pruned("out/folder")                    # a layer- or depth-pruned model, stock class

Layout (imports run one way, down): ``cli`` -> ``evaluate`` -> ``zoo`` -> ``depth`` (UPDP) -> ``layers``
(LAPTOP-Diff) -> ``cache`` (DiP-GO; ``api`` is its facade) -> ``models`` (adapters, costs, pipeline helpers every method
shares) -> ``errors``/``fileio``.
"""

from .api import apply, is_applied, prune, remove, summary  # noqa: E402
from .cache.postprocess import schedule_at_ratio  # noqa: E402
from .cache.schedule import Schedule, ScheduleError  # noqa: E402
from .depth.io import load_pruned  # noqa: E402
from .errors import DipgoError  # noqa: E402
from .malloc import tune_malloc  # noqa: E402
from .models.calibration import Calibration  # noqa: E402
from .version import __version__ as __version__

__all__ = ["apply", "remove", "summary", "prune", "is_applied", "schedule_at_ratio", "Schedule",
           "ScheduleError", "DipgoError", "Calibration", "load_pruned", "tune_malloc"]
