"""The pruner network and the search loop: mixing across gates, no collapse, checkpoint/resume."""

import pytest
import torch

from dipgo.cache.pruner import Pruner, straight_through
from dipgo.cache.search import Search, SearchConfig
from dipgo.errors import DipgoError


def test_pruner_starts_at_keep_everything():
    p = Pruner(calls=6, blocks=4)
    scores = p()
    assert scores.shape == (6, 4) and (scores > 0.5).all()


def test_encoder_mixes_information_across_gates():
    torch.manual_seed(0)
    p = Pruner(calls=5, blocks=3)
    with torch.no_grad():
        p.head_weight.normal_()          # trained heads are non-zero; at init they are exactly zero
        before = p()
        p.queries[2, 1] += torch.randn(p.queries.shape[-1])  # change one gate's query...
        after = p()
    changed = (after - before).abs() > 1e-6
    changed[2, 1] = False
    assert changed.sum() >= 10           # ...and the other gates' scores move too


def test_straight_through_is_hard_forward_soft_backward():
    s = torch.tensor([0.2, 0.7], requires_grad=True)
    g = straight_through(s)
    assert g.tolist() == [0.0, 1.0]
    (g * torch.tensor([1.0, 2.0])).sum().backward()
    assert s.grad.tolist() == [1.0, 2.0]
    half = straight_through(torch.tensor([0.2, 0.7]), hardness=0.5)
    assert torch.allclose(half, torch.tensor([0.1, 0.85]))


@pytest.mark.parametrize("kw,needle", [
    (dict(ratio=1.0), r"ratio must be in \(0, 1\)"),
    (dict(ratio=0.0), r"ratio must be in \(0, 1\)"),
    (dict(loss="lpips"), "unknown loss"),
    (dict(init="random"), "unknown init"),
    (dict(num_inference_steps=1), "num_inference_steps"),
    (dict(references=2, batch=4), r"references must be 0 .* or >= batch"),
])
def test_bad_search_settings(kw, needle):
    with pytest.raises(DipgoError, match=needle):
        SearchConfig(**kw)


def test_search_moves_gradually_and_resumes_exactly(sd_pipe, tmp_path):
    cfg = SearchConfig(ratio=0.6, num_inference_steps=6, iterations=14, batch=1, checkpoint_every=1, seed=3)
    whole = Search(sd_pipe, cfg).run(progress=False)

    class Interrupted(Search):  # killed at the start of iteration 7 of the same 14-iteration run
        def step(self, att):
            if self.iteration == 7:
                raise KeyboardInterrupt
            return super().step(att)

    ckpt = tmp_path / "search.pt"
    with pytest.raises(KeyboardInterrupt):
        Interrupted(sd_pipe, cfg, checkpoint_path=ckpt).run(progress=False)
    resumed = Search(sd_pipe, cfg, checkpoint_path=ckpt)
    assert resumed.iteration == 7 and len(resumed.history) == 7
    result = resumed.run(progress=False)
    # the resumed run is the uninterrupted one: the same scores, and the same history but for its clock
    torch.testing.assert_close(result.scores, whole.scores, atol=1e-6, rtol=0)
    assert [h["hard_kept_share"] for h in result.history] == [h["hard_kept_share"] for h in whole.history]
    hist = result.history
    assert [h["iteration"] for h in hist] == list(range(14))
    kept = [h["hard_kept_share"] for h in hist]
    # no collapse: the kept share falls, but never by more than half the model in one iteration,
    # and the gated images stay close to the full model's
    assert kept[-1] < 0.95
    assert max(a - b for a, b in zip(kept[:-1], kept[1:], strict=True)) < 0.5
    assert min(h["psnr"] for h in hist) > 15
    assert result.scores.shape == (6, 9)


def test_reference_pool_gives_the_fresh_references_and_resumes_exactly(sd_pipe, tmp_path):
    from dipgo.cache.runtime import attach, detach

    cfg = SearchConfig(ratio=0.5, num_inference_steps=4, iterations=4, batch=2, references=5, checkpoint_every=1)
    search = Search(sd_pipe, cfg)
    att = attach(search.denoiser, search.modules, search.graph.modes)
    try:
        search._build_pool(att.state)
        conditions, seeds, images = search.pool
        assert images.shape[0] == 5 == len(seeds)
        # each pooled image is what a fresh reference of that (condition, seed) would be
        fresh = search._sample(att.state, conditions[3:5], seeds[3:5])
    finally:
        detach(search.denoiser)
    # the pool samples 5 at once and this 2: batched matmuls round differently (a few 1e-5); another seed or
    # condition differs by 1e-1 and more
    torch.testing.assert_close(images[3:5], fresh, atol=5e-5, rtol=0)

    whole = Search(sd_pipe, cfg).run(progress=False)

    class Interrupted(Search):  # killed at the start of iteration 2 (Ctrl-C, a lost machine)
        def step(self, att):
            if self.iteration == 2:
                raise KeyboardInterrupt
            return super().step(att)

    ckpt = tmp_path / "pool.pt"
    with pytest.raises(KeyboardInterrupt):
        Interrupted(sd_pipe, cfg, checkpoint_path=ckpt).run(progress=False)
    resumed = Search(sd_pipe, cfg, checkpoint_path=ckpt)
    assert resumed.iteration == 2 and resumed.pool is None  # the pool is rebuilt, the same
    torch.testing.assert_close(resumed.run(progress=False).scores, whole.scores, atol=1e-6, rtol=0)


def test_resume_refuses_a_different_search(sd_pipe, tmp_path):
    ckpt = tmp_path / "s.pt"
    Search(sd_pipe, SearchConfig(ratio=0.5, num_inference_steps=4, iterations=1, batch=1),
           checkpoint_path=ckpt).run(progress=False)
    with pytest.raises(DipgoError, match="different search"):
        Search(sd_pipe, SearchConfig(ratio=0.7, num_inference_steps=4, iterations=1, batch=1), checkpoint_path=ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:100])          # truncated by a crash
    with pytest.raises(DipgoError, match="corrupt or truncated"):
        Search(sd_pipe, SearchConfig(ratio=0.5, num_inference_steps=4, iterations=1, batch=1), checkpoint_path=ckpt)


def test_search_scores_round_trip_and_refuse_other_pipelines(sd_pipe, tmp_path):
    from dipgo.cache.postprocess import schedule_at_ratio
    from dipgo.cache.search import load_result, save_result
    from dipgo.models.pipelines import set_scheduler

    set_scheduler(sd_pipe, "ddim")
    search = Search(sd_pipe, SearchConfig(ratio=0.5, num_inference_steps=4, iterations=2, batch=1))
    assert search.checkpointing is False  # auto: a small model searches without gradient checkpointing
    result = search.run(progress=False)
    path = save_result(result, tmp_path / "scores.json")
    back = load_result(path, sd_pipe)
    torch.testing.assert_close(back.scores, result.scores, atol=1e-6, rtol=0)
    assert back.graph.names == result.graph.names
    assert schedule_at_ratio(back, 0.4).steps == schedule_at_ratio(result, 0.4).steps
    set_scheduler(sd_pipe, "pndm")  # 4 PNDM steps make 5 calls: the scores no longer fit
    try:
        with pytest.raises(DipgoError, match="calls"):
            load_result(path, sd_pipe)
    finally:
        set_scheduler(sd_pipe, "ddim")
    path.write_text(path.read_text()[:50])
    with pytest.raises(DipgoError, match="corrupt"):
        load_result(path, sd_pipe)
