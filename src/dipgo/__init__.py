"""dipgo: make pretrained diffusion models cheaper to sample from (DiP-GO skip schedules).

    import dipgo
    schedule = dipgo.prune(pipe, ratio=0.8)   # learn which (step, block) pairs can reuse their cache
    dipgo.apply(pipe, schedule)               # attach it: skipped blocks do no work
    dipgo.remove(pipe)                        # detach it
"""

__version__ = "0.1.0"

from .api import apply, is_applied, prune, remove, schedule_at_ratio, summary  # noqa: E402
from .errors import DipgoError  # noqa: E402
from .schedule import Schedule, ScheduleError  # noqa: E402

__all__ = ["apply", "remove", "summary", "prune", "is_applied", "schedule_at_ratio", "Schedule",
           "ScheduleError", "DipgoError"]
