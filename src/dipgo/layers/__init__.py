"""LAPTOP-Diff: remove whole layers of the denoiser for good, chosen by a one-shot additive criterion,
then (optionally) retrain the smaller denoiser by normalised distillation from the original.

    from dipgo.layers import LayersConfig, prune
    from dipgo.models.distill import DistillConfig
    result = prune(pipe, LayersConfig(ratio=0.5, criterion="output", distill=DistillConfig(steps=500)))
    result.save("out/sd-half")
    pipe = dipgo.load_pruned("out/sd-half")      # a stock pipeline class; removed layers cost nothing

Parts: ``pruning`` (the config, :func:`prune`, the result), ``candidates`` (each layer's costs, and
temporary removal), ``criteria`` (output loss, magnitude, similarity, handcrafted; additivity). What depth
pruning shares lives in :mod:`dipgo.models`: the surgery (``surgery``), captured calls and training sets
(``data``), the knapsack (``select``), the retraining (``distill``) and the folders (``folders``). The
result composes with DiP-GO: search a schedule on the pruned pipeline as on any other.
"""

from ..models.distill import DistillConfig
from ..models.folders import load_pruned, save_pruned
from .criteria import CRITERIA
from .pruning import LayerPruning, LayersConfig, layer_scores, prune, prune_layers

__all__ = ["prune", "LayersConfig", "DistillConfig", "LayerPruning", "prune_layers", "layer_scores",
           "save_pruned", "load_pruned", "CRITERIA"]
