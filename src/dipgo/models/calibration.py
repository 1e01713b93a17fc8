"""Calibration inputs: what a model is conditioned on while dipgo prunes or evaluates it.

DiP-GO needs no training images, only conditions: prompts for a text-to-image pipeline, class ids
for a class-conditional one, nothing for an unconditional one. A :class:`Calibration` holds the
user's list and hands out conditions per search iteration (drawn at random) or per evaluation
(every condition in turn). A condition is an *index* into the list, so that evaluation can relate
an image to the condition that made it (e.g. a classifier's accuracy) whatever the list holds.

A text model given no prompts uses :data:`GENERIC_PROMPTS` (varied subjects, styles and
compositions, written for this project), so an SD user does not calibrate on someone else's domain.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DipgoError

KINDS = ("prompt", "class", "none")

GENERIC_PROMPTS: tuple[str, ...] = (
    "a photograph of an astronaut riding a horse on the moon",
    "a red fox sitting in a snowy forest at dawn, telephoto lens",
    "a bowl of ramen with a soft-boiled egg, studio food photography",
    "an oil painting of a lighthouse on a cliff during a storm",
    "a watercolor illustration of a hummingbird drinking from a flower",
    "a cozy reading nook with a window seat and rain outside",
    "a futuristic city skyline at night with flying cars, neon lights",
    "a close-up portrait of an elderly fisherman with a weathered face",
    "a minimalist poster of a mountain range in pastel colors",
    "a medieval castle on a hill surrounded by autumn trees",
    "a golden retriever puppy playing in a field of sunflowers",
    "a steaming cup of coffee on a wooden table, morning light",
    "a pixel art scene of a knight fighting a dragon",
    "an isometric 3d render of a tiny island with a windmill",
    "a black and white photograph of a busy train station in the 1950s",
    "a bouquet of tulips in a glass vase on a windowsill",
    "an underwater coral reef with a sea turtle and sunbeams",
    "a sports car drifting on a mountain road, motion blur",
    "a charcoal sketch of a ballerina mid-leap",
    "a desert landscape with sand dunes and a camel caravan at sunset",
    "a robot chef cooking pancakes in a retro kitchen",
    "a snowy village street decorated with lanterns at night",
    "a macro photograph of a dew drop on a spider web",
    "a fantasy map of an archipelago drawn on old parchment",
    "a bustling street food market in Bangkok, vibrant colors",
    "a cat wearing a tiny wizard hat, digital art",
    "a modern living room with large windows and indoor plants",
    "a stained glass window depicting a phoenix",
    "a hot air balloon festival over green valleys",
    "an ancient library with towering bookshelves and floating candles",
    "a plate of colorful macarons arranged in a spiral",
    "a lone tree on a hill under the milky way",
    "a comic book panel of a superhero landing in a city street",
    "a japanese zen garden with raked sand and a maple tree",
    "a vintage typewriter on a desk with scattered letters",
    "an impressionist painting of a sailboat harbor",
    "a polar bear swimming in turquoise arctic water",
    "a steampunk airship above a foggy industrial city",
    "a high-resolution photo of a bowl of fresh fruit",
    "a children's book illustration of a bear having a picnic",
)


def _digest(items: Sequence) -> str:
    return hashlib.sha256(json.dumps(list(items)).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Calibration:
    """The conditions a model is pruned and evaluated on.

    ``kind`` is ``"prompt"`` (``items`` are strings), ``"class"`` (``items`` are class ids) or
    ``"none"`` (unconditional; ``items`` is empty). ``generic`` marks the built-in prompt set.
    """

    kind: str
    items: tuple = ()
    generic: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise DipgoError(f"unknown calibration kind {self.kind!r}; use one of {KINDS}")
        if self.kind != "none" and not self.items:
            raise DipgoError(f"a {self.kind} calibration needs at least one item")
        if self.kind == "prompt" and not all(isinstance(p, str) and p.strip() for p in self.items):
            raise DipgoError("every calibration prompt must be a non-empty string")
        if self.kind == "class" and not all(isinstance(c, int) and c >= 0 for c in self.items):
            raise DipgoError(f"class labels must be non-negative integers, got {list(self.items)[:5]}")

    # ------------------------------------------------------------------ construction
    @classmethod
    def prompts(cls, prompts: Sequence[str]) -> Calibration:
        return cls("prompt", tuple(str(p).strip() for p in prompts))

    @classmethod
    def class_labels(cls, labels: Sequence[int], num_classes: int | None = None) -> Calibration:
        labels = tuple(int(y) for y in labels)
        if num_classes is not None:
            bad = [y for y in labels if not 0 <= y < num_classes]
            if bad:
                raise DipgoError(f"class label(s) {bad} out of range: this model has classes 0..{num_classes - 1}")
        return cls("class", labels)

    @classmethod
    def unconditional(cls) -> Calibration:
        return cls("none")

    @classmethod
    def generic_prompts(cls) -> Calibration:
        return cls("prompt", GENERIC_PROMPTS, generic=True)

    # ------------------------------------------------------------------ use
    def __len__(self) -> int:
        return max(1, len(self.items))

    def draw(self, n: int, generator: torch.Generator) -> list[int]:
        """``n`` condition indices drawn uniformly at random (fresh conditions every search iteration)."""
        return torch.randint(0, len(self), (n,), generator=generator).tolist()

    def cycle(self, n: int, start: int = 0) -> list[int]:
        """``n`` condition indices, every condition in turn: balanced to within one for any ``n``."""
        if n < 1:
            raise DipgoError(f"number of images must be >= 1, got {n}")
        return [(start + i) % len(self) for i in range(n)]

    def kwargs(self, conditions: Sequence[int]) -> dict:
        """Pipeline ``__call__`` arguments asking for these conditions (one image each)."""
        if self.kind == "prompt":
            return {"prompt": [self.items[c] for c in conditions]}
        if self.kind == "class":
            return {"class_labels": [self.items[c] for c in conditions]}
        return {"batch_size": len(conditions)}

    def describe(self) -> dict:
        """What a schedule records: how many conditions there were and a hash of them (not the text)."""
        return {"kind": self.kind, "count": len(self.items), "sha256": _digest(self.items),
                **({"generic": True} if self.generic else {})}


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line of UTF-8 text; blank lines and lines starting with '#' are ignored, and so is a
    byte-order mark. A line holding control characters (other than tabs) is refused, naming the line: the
    file is binary, or was cut or corrupted."""
    path = Path(path)
    if not path.is_file():
        raise DipgoError(f"prompts file {path} does not exist or is not a file; give a text file with one prompt "
                         "per line")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        raise DipgoError(f"prompts file {path} is not UTF-8 text, or is corrupt or truncated inside a character "
                         f"({err}); save it as UTF-8 text, one prompt per line") from err
    except OSError as err:
        raise DipgoError(f"prompts file {path} cannot be read ({err})") from err
    prompts = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        control = sorted({c for c in text if unicodedata.category(c) == "Cc" and c != "\t"})
        if control:
            codes = ", ".join(f"U+{ord(c):04X}" for c in control)
            raise DipgoError(f"prompts file {path} line {number} holds control characters ({codes}): the file is "
                             "binary or corrupt; give a text file with one prompt per line")
        prompts.append(text)
    if not prompts:
        raise DipgoError(f"prompts file {path} is empty; write one prompt per line")
    return prompts


def parse_class_labels(text: str) -> list[int]:
    """``"1,5,207"`` or ``"0-9"`` -> a list of class ids."""
    labels: list[int] = []
    try:
        for part in str(text).split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                labels += list(range(int(lo), int(hi) + 1))
            else:
                labels.append(int(part))
    except ValueError as err:
        raise DipgoError(f"class labels must be integers like '1,5,207' or a range '0-9', got {text!r}") from err
    if not labels:
        raise DipgoError(f"no class labels in {text!r}")
    return labels
