"""Write the vocabulary files of a small but real ``CLIPTokenizer``.

No CLIP vocabulary can be downloaded on our machines, so the zoo's text-to-image model carries its
own: the 256 byte-level symbols of CLIP's BPE (plain and with the end-of-word mark ``</w>``, as in the
real vocabulary, so every prompt tokenizes without unknown tokens) plus merge chains that turn the
words of the training prompts into single tokens. The files have CLIP's format, so the stock
``transformers.CLIPTokenizer`` reads them and ``StableDiffusionPipeline`` needs nothing from dipgo.
"""

from __future__ import annotations

import json
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
WORDS = ["a", "handwritten", "digit", "number", "of", "the", "zero", "one", "two", "three", "four",
         "five", "six", "seven", "eight", "nine"] + [str(d) for d in range(10)]


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def build_vocab(words: list[str] = WORDS) -> tuple[dict[str, int], list[str]]:
    """Return ``(vocab, merges)`` in CLIP's layout."""
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    merges: list[str] = []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        current = pieces[0]
        for piece in pieces[1:]:
            merge = f"{current} {piece}"
            if merge not in merges:
                merges.append(merge)
            current += piece
            if current not in tokens:
                tokens.append(current)
    tokens += [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def write_tokenizer(out_dir: str | Path, max_length: int = 16) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and the tokenizer configs into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab()
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": max_length, "do_lower_case": True,
        "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS,
    }, indent=2))
    return out
