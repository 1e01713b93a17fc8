"""Several processes working on one search, eval or bench: the few collectives dipgo needs.

Launched the standard way, ``torchrun --nproc_per_node N -m dipgo ...`` or ``accelerate launch
--multi_gpu --num_processes N -m dipgo ...``, every process runs the same command. The launcher sets
``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; :func:`world` then starts the process group through
accelerate's ``PartialState`` (NCCL on CUDA, gloo on CPU) and checks that every rank runs the same
dipgo, torch and diffusers, because ranks that disagree would silently compute different things.

How the work is split, and why the results do not depend on the number of processes:

* eval/bench: image ``i`` is generated from seed ``seed + i`` whatever batch it lands in, so each rank
  takes a contiguous slice of the indices (:meth:`World.shard`, any ``n``, divisible or not) and rank
  0 receives the images in index order;
* search: every rank draws the same conditions and seeds from the same generator, generates its slice
  of the batch, and the pruner's gradients are summed over ranks, each rank's loss weighted by its
  share of the batch, so the update is that of the whole batch;
* files (checkpoints, schedules, reports) are written by rank 0 only; a checkpoint is read by rank 0
  and broadcast, so nodes need no shared disk.

With one process (no launcher) every method here is a no-op.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from . import version
from .errors import DipgoError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def main(self) -> bool:
        """Rank 0: the process that prints, writes files and reads checkpoints."""
        return self.rank == 0

    def shard(self, n: int, rank: int | None = None) -> range:
        """This rank's contiguous slice of ``range(n)``; slices differ by at most one item (and may be
        empty when ``n`` is smaller than the world)."""
        r = self.rank if rank is None else rank
        return range(r * n // self.size, (r + 1) * n // self.size)

    def gather(self, obj: Any) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.size == 1:
            return [obj]
        import torch.distributed as dist

        out: list = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any = None) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.size == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 only and give its result to every rank; a :class:`DipgoError` it raises is
        raised on every rank (so no rank waits forever for an answer that will not come)."""
        if self.size == 1:
            return fn()
        result: tuple = ("ok", None)
        if self.main:
            try:
                result = ("ok", fn())
            except DipgoError as err:
                result = ("error", str(err))
        kind, value = self.broadcast(result)
        if kind == "error":
            raise DipgoError(value)
        return value

    def all_reduce(self, tensors: list[torch.Tensor]) -> float:
        """Sum ``tensors`` over ranks in place (one message); returns the seconds it took."""
        if self.size == 1 or not tensors:
            return 0.0
        import torch.distributed as dist

        t0 = time.perf_counter()
        device = torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")
        flat = torch.cat([t.detach().reshape(-1).to(device, torch.float32) for t in tensors])
        dist.all_reduce(flat)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()
        return time.perf_counter() - t0

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self, wait: bool = True) -> None:
        """Leave the process group: after a barrier (``wait``), so no rank exits while another is still in a
        collective; without one on error paths, where the others may never reach it. A process that exits
        with its gloo group still alive can abort at exit."""
        global _WORLD
        if self.size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                if wait:
                    dist.barrier()
                dist.destroy_process_group()
        _WORLD = None

    def device(self, requested: str | None = None) -> torch.device:
        """The device this rank computes on: ``requested`` (``cpu``, ``cuda``, ``cuda:1``, ...), where a bare
        ``cuda`` means this rank's own GPU (``LOCAL_RANK``); default CPU."""
        if requested is None:
            return torch.device("cpu")
        dev = torch.device(requested)
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise DipgoError(f"--device {requested}: no CUDA device is available here; use --device cpu")
            if dev.index is None:
                dev = torch.device("cuda", self.local_rank if self.size > 1 else torch.cuda.current_device())
        return dev


_WORLD: World | None = None


def versions() -> dict:
    """What must agree across ranks for them to compute the same thing."""
    found = {"dipgo": version.__version__, "torch": torch.__version__}
    try:
        import diffusers

        found["diffusers"] = diffusers.__version__
    except ImportError:  # pragma: no cover - a dependency
        found["diffusers"] = None
    return found


def check_versions(w: World) -> None:
    """Refuse ranks that run different dipgo/torch/diffusers versions: they would not agree on gates or images."""
    seen = w.gather(versions())
    if any(v != seen[0] for v in seen):
        lines = ", ".join(f"rank {r}: " + " ".join(f"{k} {v}" for k, v in s.items()) for r, s in enumerate(seen))
        raise DipgoError(f"the processes of this run have different versions ({lines}); install the same dipgo, "
                         "torch and diffusers on every node")


def world(cpu: bool | None = None) -> World:
    """The processes this run is part of: just this one, or those a launcher (torchrun, ``accelerate
    launch``) started, which this joins on first use. ``cpu`` forces the gloo backend (default: CPU
    unless CUDA is available)."""
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        _WORLD = World()
        return _WORLD
    from accelerate import PartialState

    use_cpu = not torch.cuda.is_available() if cpu is None else cpu
    state = PartialState(cpu=use_cpu)
    if state.num_processes != size:
        raise DipgoError(f"WORLD_SIZE is {size} but the process group has {state.num_processes} processes; launch "
                         "with torchrun or 'accelerate launch'")
    _WORLD = World(state.process_index, state.num_processes, state.local_process_index,
                   "nccl" if "nccl" in str(state.backend) else str(state.backend))
    try:
        check_versions(_WORLD)
    except DipgoError:
        _WORLD.close()  # every rank saw the same versions and raises the same error
        raise
    return _WORLD

