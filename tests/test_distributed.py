"""Several processes (torchrun, CPU gloo): the same images, metrics and gates as one process; a crashed
rank resumes from the last checkpoint with nothing lost; mismatched versions are refused; the split of
any number of items; CUDA paths skip cleanly without a GPU."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dist_worker import evaluate_and_search

from dipgo.cli import main
from dipgo.dist import World
from dipgo.errors import DipgoError
from dipgo.models.costs import Stopwatch

WORKER = Path(__file__).with_name("dist_worker.py")


def torchrun(*args: str, procs: int = 2) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(procs), str(WORKER), *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def two_procs(tmp_path_factory):
    out = tmp_path_factory.mktemp("two")
    proc = torchrun("run", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out / "result.pt", weights_only=False)


@pytest.mark.parametrize("n,size", [(5, 2), (8, 2), (7, 3), (1, 2), (2, 4)])
def test_shards_cover_every_item_once(n, size):
    parts = [World(r, size).shard(n) for r in range(size)]
    assert [i for p in parts for i in p] == list(range(n))  # in order, so gathered images keep their seeds
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_one_process_world_is_a_no_op():
    w = World()
    assert w.main and w.gather(3) == [3] and w.broadcast("x") == "x" and w.all_reduce([torch.ones(2)]) == 0.0
    assert w.on_main(lambda: 5) == 5
    with pytest.raises(DipgoError, match="boom"):
        w.on_main(lambda: (_ for _ in ()).throw(DipgoError("boom")))


def test_two_processes_give_the_images_metrics_and_gates_of_one(two_procs, tmp_path):
    one = evaluate_and_search(tmp_path, world_=World())
    two = two_procs
    for key in ("full", "fewer"):  # 5 images over 2 ranks in batches of 2: seeds, not batches, decide
        assert two[key].shape == one[key].shape == (5, 3, 16, 16)
        torch.testing.assert_close(two[key], one[key], atol=1e-5, rtol=0)
    assert two["macs"] == one["macs"]
    assert two["quality"]["psnr_vs_full"] == pytest.approx(one["quality"]["psnr_vs_full"], abs=1e-3)
    # the stated tolerance: gate scores within 1e-4 after 4 iterations (float sums differ by rank count)
    torch.testing.assert_close(two["scores"], one["scores"], atol=1e-4, rtol=0)
    assert [h["kept_share"] for h in two["history"]] == pytest.approx([h["kept_share"] for h in one["history"]],
                                                                      abs=1e-5)
    assert all(h["comm_s"] >= 0 for h in two["history"]) and all("comm_s" not in h for h in one["history"])


def test_a_crashed_rank_resumes_from_the_last_checkpoint(two_procs, tmp_path):
    crashed = torchrun("run", str(tmp_path), "--die-at", "2")
    assert crashed.returncode != 0
    assert torch.load(tmp_path / "search.pt", weights_only=False)["iteration"] == 2
    again = torchrun("run", str(tmp_path))
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = torch.load(tmp_path / "result.pt", weights_only=False)
    assert resumed["resumed_at"] == 2
    torch.testing.assert_close(resumed["scores"], two_procs["scores"], atol=1e-6, rtol=0)  # nothing lost


def test_mismatched_versions_are_refused(tmp_path):
    proc = torchrun("versions", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        msg = (tmp_path / f"rank{rank}.txt").read_text()
        assert "different versions" in msg and "0.0.1-other" in msg and "same dipgo" in msg


def test_commands_that_do_not_split_are_refused_under_a_launcher(monkeypatch, capsys):
    monkeypatch.setattr("dipgo.cli.world", lambda: World(0, 2))
    assert main(["sample", "mnist-dit", "--n", "1", "--steps", "2"]) == 2
    assert "runs in one process" in capsys.readouterr().err


def test_bad_device_and_dtype_are_explained(capsys):
    from dipgo.models.pipelines import parse_dtype

    if not torch.cuda.is_available():
        assert main(["eval", "mnist-dit", "--method", "steps:1", "--steps", "2", "--n", "2", "--device", "cuda"]) == 2
        assert "no CUDA device is available here; use --device cpu" in capsys.readouterr().err
    assert main(["eval", "mnist-dit", "--dtype", "fp64"]) == 2
    assert "invalid choice: 'fp64'" in capsys.readouterr().err
    with pytest.raises(DipgoError, match="unknown dtype 'fp64'"):
        parse_dtype("fp64")


def test_bf16_eval_runs_on_cpu():
    from families import tiny_dit

    from dipgo.evaluate.baselines import FewerSteps
    from dipgo.evaluate.evaluation import evaluate
    from dipgo.models.pipelines import default_calibration

    pipe = tiny_dit().to(dtype=torch.bfloat16)
    rec = evaluate(pipe, FewerSteps(2), 4, n=2, guidance_scale=2.0, batch=2, progress=False,
                   calibration=default_calibration(pipe, None, [3]))
    assert rec["macs_speedup"] == pytest.approx(2.0) and rec["psnr_vs_full"] > 10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU here")
def test_cuda_stopwatch_times_the_kernels():
    x = torch.randn(2048, 2048, device="cuda")
    with Stopwatch("cuda") as w:
        for _ in range(10):
            x = x @ x / 2048
    assert w.cuda and w.ms > 0


def test_stopwatch_on_cpu():
    with Stopwatch("cpu") as w:
        sum(range(10000))
    assert not w.cuda and w.ms > 0


def test_cli_under_torchrun_speaks_once_and_matches_one_process(tmp_path, capsys):
    import json

    from families import tiny_dit

    folder = tmp_path / "tiny-dit"
    tiny_dit().save_pretrained(folder)
    argv = ["eval", str(folder), "--method", "steps:2", "--steps", "4", "--num-images", "3", "--batch", "2",
            "--class-labels", "3,17", "--guidance", "2"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "dipgo", *argv, "--json", str(tmp_path / "two.json")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('"method"') == 1  # rank 1 is silent
    assert main([*argv, "--json", str(tmp_path / "one.json")]) == 0
    one, two = (json.loads((tmp_path / f"{k}.json").read_text()) for k in ("one", "two"))
    for key in ("macs", "macs_full", "n"):
        assert two[key] == one[key]
    assert two["psnr_vs_full"] == pytest.approx(one["psnr_vs_full"], abs=1e-3)
