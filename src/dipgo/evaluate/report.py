"""Cost reports of a model: what ``dipgo info`` prints."""

from __future__ import annotations

import torch

from .. import zoo
from ..dist import world
from ..models.adapters import block_names, resolve_blocks
from ..models.costs import count_macs, count_params, measure_latency
from ..models.pipelines import capture_denoiser_call, default_calibration, denoiser_of


def model_info(model: str, runs: int = 20, warmup: int = 3, device: str | None = None, dtype: str = "fp32") -> dict:
    """Blocks with params and MACs per denoiser call (batch 1, no CFG), totals and measured latency
    (on ``device`` in ``dtype``; CUDA timings use CUDA events)."""
    pipe, source = zoo.load(model, dtype, device)
    dev = world().device(device)
    denoiser = denoiser_of(pipe)
    args, kwargs = capture_denoiser_call(pipe, default_calibration(pipe, defaults=source.defaults))
    names = block_names(denoiser)
    blocks = resolve_blocks(denoiser, names)
    counter = count_macs(denoiser, args, kwargs, scopes=blocks)
    with torch.no_grad():
        latency = measure_latency(lambda: denoiser(*args, **kwargs), runs=runs, warmup=warmup, device=dev)
    sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
    return {
        "model": model,
        "pipeline": type(pipe).__name__,
        "denoiser": type(denoiser).__name__,
        "input_shape": list(sample.shape) if sample is not None else None,
        "blocks": [{"name": n, "params": count_params(m), "macs": counter.by_scope.get(n, 0)}
                   for n, m in blocks.items()],
        "macs_per_call": counter.total,
        "params": count_params(denoiser),
        "latency_ms": latency.median_ms,
        "latency": latency.to_dict(),
        "threads": torch.get_num_threads(),
        "device": str(dev),
        "dtype": dtype,
    }
