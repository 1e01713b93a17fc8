"""Runtime hooks: backup connections on a denoiser's blocks, one small hook class per mode.

Built on diffusers' own hook machinery (``diffusers.hooks.HookRegistry`` / ``ModelHook``), the way its
FirstBlockCache attaches, so no pipeline code is forked. Each attachment installs:

* a root :class:`CallCounterHook` on the denoiser that numbers the calls of each generation (diffusers'
  SD/DiT pipelines expose no step counter) and resets the shared :class:`RunState` when one starts;
* one block hook per block, of the mode's class: :class:`ScheduleHook` (a static schedule),
  :class:`SearchGateHook` (the search's gates) or :class:`PolicyHook` (a dynamic :class:`Policy`);
* with a pipeline's scheduler, :class:`SetTimestepsPatch`, so ``set_timesteps`` marks each generation.

Each mode has a config dataclass and an ``apply_*`` function in its own module; hooks share state only
through the ``RunState`` they are given.
"""

from .attachment import Attachment, attachment_of, install, uninstall
from .block import BlockHook, parse_mode
from .counter import CallCounterHook
from .policy import PolicyConfig, PolicyHook, apply_policy
from .scheduler_patch import SetTimestepsPatch
from .search_gates import CHECKPOINT_HOOK, CheckpointHook, SearchGateConfig, SearchGateHook, apply_search_gates
from .state import BLOCK_HOOK, ROOT_HOOK, Policy, RunState
from .static_schedule import WHOLE_CALL_HOOK, ScheduleConfig, ScheduleHook, WholeCallHook, apply_schedule

__all__ = ["Attachment", "attachment_of", "install", "uninstall", "BlockHook", "parse_mode", "CallCounterHook",
           "PolicyConfig", "PolicyHook", "apply_policy", "SetTimestepsPatch", "CHECKPOINT_HOOK", "CheckpointHook",
           "SearchGateConfig", "SearchGateHook", "apply_search_gates", "BLOCK_HOOK", "ROOT_HOOK", "Policy",
           "RunState", "WHOLE_CALL_HOOK", "ScheduleConfig", "ScheduleHook", "WholeCallHook", "apply_schedule"]
