"""The one place that turns a MODEL argument into a pipeline plus what is known about it.

A MODEL is a zoo name (a folder under ``zoo/``), a local diffusers folder (one with a
``model_index.json``), or a Hugging Face hub id (``org/name``) where a hub is reachable.

A model folder may carry a ``dipgo.json`` with its sampling defaults, which the CLI uses when the
user gives none::

    {"description": "...", "guidance_scale": 4.0,
     "prompts": ["...", ...]  or  "class_labels": [0, 1, ...],
     "fid_reference": "fid-reference.npz",     # FID statistics of the model's domain (optional)
     "classifier": "mnist-digits"}             # a zoo classifier for conditioning accuracy (optional)

Every zoo model has one; a user's own folder may have one too.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import DipgoError, ModelNotFoundError
from ..models.pipelines import load_pipeline

CARD = "dipgo.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def zoo_root() -> Path:
    """Where the zoo folders live: ``$DIPGO_ZOO`` or the repository's ``zoo/``."""
    env = os.environ.get("DIPGO_ZOO")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "zoo"


def _classifiers() -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    from .mnist import classify_digits

    return {"mnist-digits": classify_digits}


@dataclass(frozen=True)
class ModelSource:
    """A resolved MODEL: what ``from_pretrained`` takes, and the folder's ``dipgo.json`` (if any)."""

    name: str
    target: str
    card: dict = field(default_factory=dict)
    folder: Path | None = None

    @property
    def guidance_scale(self) -> float | None:
        g = self.card.get("guidance_scale")
        return float(g) if g is not None else None

    @property
    def fid_reference(self) -> Path | None:
        ref = self.card.get("fid_reference")
        return (self.folder / ref) if ref and self.folder is not None else None

    def classifier(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Maps images to the condition index they show (conditioning accuracy), if the model has one."""
        name = self.card.get("classifier")
        if not name:
            return None
        table = _classifiers()
        if name not in table:
            raise DipgoError(f"{self.name}'s {CARD} names an unknown classifier {name!r}; known: {sorted(table)}")
        return table[name]

    @property
    def defaults(self) -> dict:
        """Calibration defaults: ``{"prompts": [...]}`` or ``{"class_labels": [...]}``."""
        return {k: self.card[k] for k in ("prompts", "class_labels") if k in self.card}

    def load(self, dtype: torch.dtype = torch.float32):
        """The pipeline; a pruned folder (``dipgo layers`` / ``dipgo depth`` output) loads pruned."""
        if self.folder is not None and any((self.folder / f).is_file()
                                           for f in ("dipgo-layers.json", "dipgo-depth.json")):
            from ..depth.io import load_pruned

            return load_pruned(self.folder, dtype=dtype)
        return load_pipeline(self.target, dtype=dtype)

    def training_set(self, pipe, calibration):
        """The model's own training data for retraining (``"training_data"`` in its card), else None."""
        name = self.card.get("training_data")
        if not name:
            return None
        if name != "mnist-5k":
            raise DipgoError(f"{self.name}'s {CARD} names unknown training data {name!r}; known: ['mnist-5k']")
        from .mnist import training_set

        return training_set(pipe, calibration)


def _read_card(folder: Path) -> dict:
    path = folder / CARD
    if not path.is_file():
        return {}
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DipgoError(f"{path} is not valid JSON ({err}); fix or delete it") from err
    if not isinstance(card, dict):
        raise DipgoError(f"{path} must hold a JSON object")
    return card


def zoo_names(quick: bool = False) -> list[str]:
    """The zoo models: folders under :func:`zoo_root` with a diffusers ``model_index.json`` and a card
    (``quick=True``: only those whose card marks them for the quick bench, ``"bench_quick": true``)."""
    root = zoo_root()
    if not root.is_dir():
        return []
    names = sorted(p.name for p in root.iterdir() if (p / "model_index.json").is_file() and (p / CARD).is_file())
    return [n for n in names if _read_card(root / n).get("bench_quick")] if quick else names


def resolve(model: str) -> ModelSource:
    """Map a MODEL argument to a :class:`ModelSource`, or explain why it names nothing loadable."""
    root = zoo_root()
    if "/" not in model and not model.startswith((".", "~")) and (root / model / CARD).is_file():
        folder = root / model
        if not (folder / "model_index.json").is_file():
            raise ModelNotFoundError(
                f"zoo model {model!r} at {folder} has no model_index.json; set DIPGO_ZOO to the folder that "
                "holds the zoo, or rebuild it with zoo/train.py")
        return ModelSource(model, str(folder), _read_card(folder), folder)
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"{model!r} is a file; give a diffusers pipeline folder or a zoo name")
        if not (path / "model_index.json").is_file():
            raise ModelNotFoundError(
                f"{model!r} is a folder without model_index.json, so it is not a diffusers pipeline "
                "(save one with pipe.save_pretrained(folder))")
        return ModelSource(model, str(path), _read_card(path), path)
    if _HUB_ID.match(model):
        return ModelSource(model, model)  # a hub id: diffusers fetches it where a hub is reachable
    if "/" in model or model.startswith((".", "~")):
        raise ModelNotFoundError(f"folder {model!r} does not exist")
    raise ModelNotFoundError(
        f"unknown model {model!r}: use a zoo name ({', '.join(zoo_names()) or 'none found'}), a local diffusers "
        "folder, or a hub id such as 'org/name'")


def load(model: str, dtype: torch.dtype | str = torch.float32, device: str | None = None):
    """``(pipeline, source)`` for a MODEL argument, in ``dtype`` (a torch dtype or ``fp32``/``fp16``/``bf16``)
    on ``device`` (see :meth:`dipgo.dist.World.device`; default CPU)."""
    from ..dist import world
    from ..models.pipelines import parse_dtype

    source = resolve(model)
    pipe = source.load(parse_dtype(dtype) if isinstance(dtype, str) else dtype)
    if device is not None:
        pipe.to(world().device(device))
    return pipe, source
