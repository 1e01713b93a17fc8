"""The pruner network: learnable queries -> an encoder that mixes all gates -> a head per gate.

One query per (denoiser call, block). A small transformer encoder attends across *all* queries, so
every gate's score depends on every other gate's query (the public DiP-GO code discards its encoder
output, making gates independent; here a test checks that changing one query moves other gates).
A per-gate linear head maps each encoded query to two logits, keep and skip; the keep probability
is the gate's score. The heads start at zero weight with a bias that favours keep, so the search
starts from the full model (consistency loss 0), as in the paper.
"""

from __future__ import annotations

import torch
from torch import nn


class Pruner(nn.Module):
    def __init__(self, calls: int, blocks: int, dim: int = 64, layers: int = 2, heads: int = 4,
                 keep_bias: float = 2.0):
        super().__init__()
        self.calls, self.blocks = calls, blocks
        self.queries = nn.Parameter(torch.randn(calls, blocks, dim) * 0.5)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 2, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head_weight = nn.Parameter(torch.zeros(calls, blocks, dim, 2))
        self.head_bias = nn.Parameter(torch.tensor([keep_bias, 0.0]).expand(calls, blocks, 2).clone())

    def logits(self) -> torch.Tensor:
        """(calls, blocks, 2) keep/skip logits."""
        h = self.encoder(self.queries.reshape(1, -1, self.queries.shape[-1]))
        h = self.norm(h).reshape(self.calls, self.blocks, -1)
        return torch.einsum("cbd,cbdk->cbk", h, self.head_weight) + self.head_bias

    def forward(self) -> torch.Tensor:
        """(calls, blocks) keep probabilities in (0, 1)."""
        return self.logits().softmax(-1)[..., 0]

    @torch.no_grad()
    def init_from_mask(self, mask: torch.Tensor, margin: float = 3.0) -> None:
        """Start from a given keep/skip pattern instead of keep-everything (e.g. a fewer-steps schedule)."""
        self.head_bias.copy_(torch.stack([margin * (2 * mask - 1), torch.zeros_like(mask)], -1))


def straight_through(scores: torch.Tensor, hardness: float = 1.0, threshold: float = 0.5) -> torch.Tensor:
    """Gates whose forward value is ``hardness * hard + (1 - hardness) * soft``, gradient of the soft score.

    ``hardness=1`` is the straight-through estimator (hard 0/1 forward, softmax gradient backward);
    the search anneals from soft to hard so the soft phase gives informative gradients and the hard
    phase closes the gap to the binary SubNet the runtime executes.
    """
    hard = (scores > threshold).to(scores.dtype)
    return scores + hardness * (hard - scores).detach()
