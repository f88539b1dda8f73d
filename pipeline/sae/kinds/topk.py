"""``topk``: each token keeps its k largest pre-activations (Gao et al. 2024, "Scaling and
evaluating sparse autoencoders"; saev's ``TopK``).

    f_NS = relu(h_NS) · 1[h_Ns among the k largest of row N]          (ours, ``keep_negative`` false)
    f_NS = h_NS · 1[h_Ns among the k largest of row N]                 (saev, ``keep_negative`` true)

L0 is at most k per token, exactly k when a row has k positive pre-activations. Ties at the k-th
value are broken as ``torch.topk`` breaks them. No L1 penalty: k sets the sparsity; the AuxK loss
(:mod:`.auxk`) is usually added to revive dead latents.

Where saev differs: saev's ``TopKActivation`` masks the pre-activations without a ReLU, so when a
row has fewer than k positive pre-activations the largest *negative* ones are kept as negative
latent values. Ours applies the ReLU afterwards (as OpenAI's reference ``TopK(postact_fn=ReLU)``):
a negative "activation" is not a feature firing, it would count in L0, and decoding it adds the
opposite of a dictionary direction. saev's checkpoints are loaded with ``keep_negative=True`` so
their encodings are saev's exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Activation


def topk_mask(h: Tensor, k: int) -> Tensor:
    """Boolean mask [..., S] of the k largest entries of each row (k capped at S)."""
    k = min(int(k), h.shape[-1])
    idx = torch.topk(h, k, dim=-1, sorted=False).indices
    return torch.zeros_like(h, dtype=torch.bool).scatter_(-1, idx, True)


class TopK(Activation):
    kind = "topk"

    def __init__(self, k: int = 32, keep_negative: bool = False) -> None:
        super().__init__()
        if int(k) <= 0:
            raise ValueError(f"topk: k must be a positive integer, got {k!r}")
        self.k = int(k)
        self.keep_negative = bool(keep_negative)

    def forward(self, h: Tensor) -> Tensor:
        # the k values scattered into zeros: the same numbers as masking h, in one pass over [N, S]
        top = torch.topk(h, min(self.k, h.shape[-1]), dim=-1, sorted=False)
        values = top.values if self.keep_negative else torch.relu(top.values)
        return torch.zeros_like(h).scatter(-1, top.indices, values)

    def params(self) -> dict:
        return {"k": self.k, **({"keep_negative": True} if self.keep_negative else {})}
