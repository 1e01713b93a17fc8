"""UPDP: progressive depth pruning. Chosen blocks of the denoiser are made linear gradually (activations
and norms blended towards the identity / a frozen BatchNorm while the model is distilled from the
original), then merged by reparameterisation into single convs or linear maps.

    from dipgo.depth import DepthConfig, prune
    from dipgo.models.distill import DistillConfig
    result = prune(pipe, DepthConfig(ratio=0.5, distill=DistillConfig(steps=600)))  # half the candidate blocks
    result.save("out/dit-depth")
    pipe = dipgo.load_pruned("out/dit-depth")                   # stock pipeline class, merged blocks

Stages (UPDP's four): the supernet (``supernet.linearise``: every candidate block holds its original and
its pruned form, sharing weights), the subnet choice (``supernet.linearise_scores`` + the shared knapsack,
``dipgo.models.select``), the progressive training (``dipgo.models.distill`` with a ramp of ``lam``), the
merge (``supernet.merge``). ``mode="abrupt"`` (DepthShrinker-style: linear from the first step) and
``mode="remove"`` (plain block removal, as in layer pruning) are the baselines, trained the same way. The
ramp eases each block into its linear form, which matters most when training is short; abrupt gives the
final linear form every training step.

Ratios: ``by="depth"`` (default) is the share of the candidate blocks merged; ``by="macs"`` / ``"params"``
the share of the denoiser's MACs per call / parameters that merging saves (blocks that save nothing at
that measure, such as UNet resnets for MACs, are not candidates then).
"""

from ..models.distill import DistillConfig
from .forms import FORMS, pruned_form, register_form
from .io import load_pruned, save_depth
from .pruning import BY, MODES, DepthConfig, DepthPruning, depth_scores, prune, prune_depth, ramp

__all__ = ["prune", "DepthConfig", "DistillConfig", "DepthPruning", "prune_depth", "depth_scores", "save_depth",
           "load_pruned", "register_form", "pruned_form", "FORMS", "MODES", "BY", "ramp"]
