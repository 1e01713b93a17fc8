"""What every method binds to: one pipeline and step count, with the calls the evaluation makes around sampling."""

from __future__ import annotations


class Applied:
    """A method bound to one pipeline and step count: ``enable()`` / ``disable()`` install and remove it,
    ``before_generation()`` runs before each pipeline call, ``num_inference_steps`` is what the pipeline must be
    called with. ``probe_units``: module names the execution probe should watch instead of dipgo's blocks, for a
    method that skips modules inside them (None: the blocks)."""

    label = "full"
    probe_units: list[str] | None = None

    def __init__(self, pipe, num_inference_steps: int):
        self.pipe, self.num_inference_steps = pipe, num_inference_steps

    def enable(self) -> None:
        pass

    def disable(self) -> None:
        pass

    def before_generation(self) -> None:
        pass
