"""Offloading and skip schedules, in both orders (offload then ``dipgo.apply``, and apply then offload).

Model CPU offload (accelerate) wraps the denoiser's ``forward`` and re-wraps it after every pipeline call;
group offloading (diffusers) registers hooks in the same registries as dipgo's. On this CPU-only machine the
onload and offload devices are both the CPU, so a transfer is a no-op; what is checked is that every hook
still runs where it must (counted), that the images equal the non-offloaded dipgo pipeline's, and, with
group offloading to disk (which empties the offloaded weights), that no block computes without its weights.
"""

from collections import Counter

import pytest
import torch
from accelerate.hooks import CpuOffload
from diffusers.hooks.group_offloading import ModuleGroup
from families_adapters import STEPS, Family, random_lora

import dipgo
from dipgo.cache.hooks import BLOCK_HOOK, attachment_of
from dipgo.cache.hooks.offload import GROUP_OFFLOADING
from dipgo.errors import DipgoError

ORDERS = ["offload_then_apply", "apply_then_offload"]


@pytest.fixture
def onloads(monkeypatch) -> Counter:
    """Group offloading's onloads, per offload group."""
    counts: Counter = Counter()
    original = ModuleGroup.onload_

    def counting(self):
        counts[self] += 1
        return original(self)

    monkeypatch.setattr(ModuleGroup, "onload_", counting)
    return counts


@pytest.fixture
def cpu_offload_calls(monkeypatch) -> Counter:
    """Calls of accelerate's model CPU offload hook (which moves the model in), per model class."""
    counts: Counter = Counter()
    original = CpuOffload.pre_forward

    def counting(self, module, *args, **kwargs):
        counts[type(module).__name__] += 1
        return original(self, module, *args, **kwargs)

    monkeypatch.setattr(CpuOffload, "pre_forward", counting)
    return counts


def _in_order(f: Family, schedule, order: str, offload) -> None:
    if order == "offload_then_apply":
        offload()
        dipgo.apply(f.pipe, schedule)
    else:
        dipgo.apply(f.pipe, schedule)
        offload()


def _reference(f: Family, schedule) -> tuple[torch.Tensor, torch.Tensor]:
    """The stock images and the scheduled images, without offloading."""
    stock = f.run()
    dipgo.apply(f.pipe, schedule)
    scheduled = f.run()
    dipgo.remove(f.pipe)
    return stock, scheduled


@pytest.mark.parametrize("order", ORDERS)
def test_model_cpu_offload(order, cpu_offload_calls):
    f = Family("sd")
    schedule = f.schedule()
    stock, scheduled = _reference(f, schedule)
    _in_order(f, schedule, order, lambda: f.pipe.enable_model_cpu_offload(device="cpu"))
    state, unet = attachment_of(f.den).state, type(f.den).__name__
    reused = int((schedule.mask() == 0).sum())
    for i in range(1, 3):  # the pipeline takes its offload hooks off and puts them back after each call
        torch.testing.assert_close(f.run(), scheduled, atol=0, rtol=0)
        assert state.reused == i * reused  # dipgo's hooks survive the re-wrapping
        assert cpu_offload_calls[unet] == i * STEPS  # every denoiser call moves the model in (on an accelerator)
    f.pipe.remove_all_hooks()  # offloading off, dipgo stays
    torch.testing.assert_close(f.run(), scheduled, atol=0, rtol=0)
    f.pipe.enable_model_cpu_offload(device="cpu")
    dipgo.remove(f.pipe)
    cpu_offload_calls.clear()
    for i in range(1, 3):  # nothing of dipgo's comes back when the pipeline re-wraps the denoiser
        torch.testing.assert_close(f.run(), stock, atol=0, rtol=0)
        assert cpu_offload_calls[unet] == i * STEPS  # and the offload hook still runs


def _group(module: torch.nn.Module) -> ModuleGroup | None:
    """The offload group whose hook sits on ``module``, if any."""
    registry = getattr(module, "_diffusers_hook", None)
    hook = registry.get_hook(GROUP_OFFLOADING) if registry is not None else None
    return None if hook is None else hook.group


@pytest.mark.parametrize("family", ["sd", "flux"])
@pytest.mark.parametrize("order", ORDERS)
def test_block_level_group_offloading(family, order, onloads, tmp_path):
    f = Family(family)
    schedule = f.schedule()
    stock, scheduled = _reference(f, schedule)
    _in_order(f, schedule, order, lambda: f.den.enable_group_offload(
        "cpu", offload_type="block_level", num_blocks_per_group=1, offload_to_disk_path=str(tmp_path)))
    onloads.clear()
    torch.testing.assert_close(f.run(), scheduled, atol=0, rtol=0)
    computed = dict(zip(schedule.blocks, schedule.mask().sum(0).tolist(), strict=True))
    groups = {name: _group(f.den.get_submodule(name)) for name in schedule.blocks}
    groups = {name: group for name, group in groups.items() if group is not None}  # UNet mid blocks have none
    assert len(groups) >= 4
    for name, group in groups.items():
        # offloading first: dipgo's hook is the outer one, so a reused block is not moved in
        want = computed[name] if order == "offload_then_apply" else STEPS
        assert onloads[group] == want, (name, onloads)
    dipgo.remove(f.pipe)
    torch.testing.assert_close(f.run(), stock, atol=0, rtol=0)


@pytest.mark.parametrize("order", ORDERS)
def test_leaf_level_group_offloading(order, onloads):
    f = Family("sd")
    schedule = f.schedule()
    stock, scheduled = _reference(f, schedule)
    _in_order(f, schedule, order, lambda: f.den.enable_group_offload("cpu", offload_type="leaf_level"))
    onloads.clear()
    torch.testing.assert_close(f.run(), scheduled, atol=0, rtol=0)
    block = f.den.get_submodule(schedule.blocks[0])  # its layers move in only when it computes, in either order
    groups = [g for g in map(_group, block.modules()) if g is not None]
    assert groups and all(onloads[g] == int(schedule.mask()[:, 0].sum()) for g in groups)
    dipgo.remove(f.pipe)
    torch.testing.assert_close(f.run(), stock, atol=0, rtol=0)


def test_groups_of_several_blocks(tmp_path):
    f = Family("flux")
    schedule = f.schedule(reused=(0,))  # reuses the first block of the group [block 0, block 1]
    stock, scheduled = _reference(f, schedule)

    def offload(path: str) -> None:
        f.den.enable_group_offload("cpu", offload_type="block_level", num_blocks_per_group=2,
                                   offload_to_disk_path=path)

    dipgo.apply(f.pipe, schedule)  # dipgo first: its hooks sit beneath the offload hooks, every block moves in
    offload(str(tmp_path / "a"))
    torch.testing.assert_close(f.run(), scheduled, atol=0, rtol=0)
    dipgo.remove(f.pipe)

    g = Family("flux")
    g.den.enable_group_offload("cpu", offload_type="block_level", num_blocks_per_group=2,
                               offload_to_disk_path=str(tmp_path / "b"))
    with pytest.raises(DipgoError, match="num_blocks_per_group=1.*or call dipgo.apply before enabling group"):
        dipgo.apply(g.pipe, schedule)
    assert not dipgo.is_applied(g.pipe)
    assert all(BLOCK_HOOK not in getattr(m, "_diffusers_hook", {}).hooks for m in g.den.modules()
               if hasattr(m, "_diffusers_hook"))
    torch.testing.assert_close(g.run(), stock, atol=0, rtol=0)


@pytest.mark.parametrize("order", ORDERS)
def test_lora_loaded_under_group_offloading(order, onloads):
    """Loading a LoRA takes group offloading off and puts it back: dipgo's hooks must stay in force."""
    f = Family("sd")
    schedule = f.schedule()
    lora = random_lora(f.pipe)
    f.pipe.load_lora_weights(lora)
    _, scheduled = _reference(f, schedule)
    f.pipe.unload_lora_weights()
    _in_order(f, schedule, order, lambda: f.den.enable_group_offload(
        "cpu", offload_type="block_level", num_blocks_per_group=1))
    f.pipe.load_lora_weights(lora)
    state = attachment_of(f.den).state
    state.reused = 0
    torch.testing.assert_close(f.run(), scheduled, atol=0, rtol=0)
    assert state.reused == int((schedule.mask() == 0).sum())
    dipgo.remove(f.pipe)
