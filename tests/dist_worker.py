"""What each process of the multi-process tests runs (started by torchrun from test_distributed.py).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/dist_worker.py run OUT [--die-at K]
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/dist_worker.py versions OUT

``run``: an evaluation (5 images, batch 2: a world that divides neither) and a 4-iteration search (batch 3)
on a tiny random DiT; rank 0 saves the images, records and scores to OUT. With ``--die-at K`` rank 1
exits abruptly at the start of iteration K, as a crashed process would.
``versions``: rank 1 pretends to run another dipgo; every rank writes the error it got to OUT.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

STEPS, GUIDANCE = 4, 2.0


def setup():
    from families import tiny_dit

    from dipgo.models.pipelines import default_calibration

    pipe = tiny_dit()
    return pipe, default_calibration(pipe, None, [3, 17])


def evaluate_and_search(out: Path, die_at: int | None = None, world_=None) -> dict:
    """The work both the 2-process run and the 1-process reference do (the test calls it in-process)."""
    from dipgo.cache.search import Search, SearchConfig
    from dipgo.evaluate.baselines import FewerSteps, Full
    from dipgo.evaluate.evaluation import Evaluator

    pipe, cal = setup()
    ev = Evaluator(pipe, n=5, seed=0, guidance_scale=GUIDANCE, batch=2, calibration=cal, world_=world_)
    try:
        full = ev.run(Full().bind(pipe, STEPS, GUIDANCE), progress=False)
        fewer = ev.run(FewerSteps(2).bind(pipe, STEPS, GUIDANCE), progress=False)
        quality = ev.quality(fewer, full, progress=False)
    finally:
        ev.close()

    class Crashing(Search):
        def step(self, att):
            if die_at is not None and self.iteration == die_at and self.world.rank == 1:
                os._exit(3)  # no clean-up, no checkpoint: a killed process
            return super().step(att)

    cfg = SearchConfig(ratio=0.5, num_inference_steps=STEPS, guidance_scale=GUIDANCE, iterations=4, batch=3,
                       checkpoint_every=1)
    search = Crashing(pipe, cfg, checkpoint_path=out / "search.pt", calibration=cal, world_=world_)
    resumed_at = search.iteration
    result = search.run(progress=False)
    found = {"full": full.images, "fewer": fewer.images, "macs": (full.macs, fewer.macs), "quality": quality,
             "scores": result.scores, "history": result.history, "resumed_at": resumed_at}
    if search.world.main:
        torch.save(found, out / "result.pt")
    return found


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("task", choices=("run", "versions"))
    p.add_argument("out")
    p.add_argument("--die-at", type=int, default=None)
    args = p.parse_args()
    out = Path(args.out)
    torch.set_num_threads(1)
    if args.task == "versions":
        import dipgo
        from dipgo import dist

        if os.environ.get("RANK") == "1":
            dipgo.version.__version__ = "0.0.1-other"  # what every version check reads
        try:
            dist.world()
            message = "no error"
        except dipgo.DipgoError as err:
            message = str(err)
        (out / f"rank{os.environ['RANK']}.txt").write_text(message)
        return
    from dipgo.dist import world

    evaluate_and_search(out, args.die_at)
    world().close()


if __name__ == "__main__":
    main()
