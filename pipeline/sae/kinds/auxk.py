"""``auxk``: the auxiliary loss that revives dead latents of k-sparse SAEs (Gao et al. 2024,
appendix A.2; saev's ``AuxK``). Added to the loss of ``topk`` / ``batchtopk`` members.

With the main reconstruction's residual ``e = x − x̂`` (no gradient through it) and the latents
that have not fired for ``dead_tokens`` training tokens (mask ``dead_S``)::

    z_NS = relu(h_NS) · 1[h_Ns among the k_aux largest pre-activations of row N over dead latents]
    ê_ND = z_NS @ W_dec
    L_aux = α · mean_{N,D} (ê − e)²

so gradients reach dead latents' encoder and decoder through the part of x the live latents
miss. k_aux is capped at the number of dead latents; with none dead, L_aux = 0.

Where saev differs: saev decodes ``z`` with the full decoder, ``b_dec`` included, so its AuxK
target is ``e − b_dec`` rather than the residual; ours reconstructs the residual, which has no
bias (as OpenAI's reference).
"""

from __future__ import annotations

import torch
from torch import Tensor


def auxk_loss(
    h_NS: Tensor, W_dec_SD: Tensor, x_ND: Tensor, x_hat_ND: Tensor, dead_S: Tensor, *, k_aux: int, alpha: float
) -> Tensor:
    """``α · mean (z @ W_dec − (x − x̂))²`` over the ``k_aux`` largest dead pre-activations per row.

    No host sync (it runs every training step): the top ``min(k_aux, S)`` of the masked
    pre-activations are taken whatever the number of dead latents, live ones masked to −inf (so
    they enter ``z`` as relu(−inf) = 0, which is the cap at the number of dead latents), and the
    loss is multiplied by ``any(dead_S)`` (0 with none dead)."""
    k = min(int(k_aux), h_NS.shape[-1])
    if k <= 0:
        return x_ND.new_zeros(())
    residual_ND = (x_ND - x_hat_ND).detach()
    masked_NS = h_NS.masked_fill(~dead_S, float("-inf"))
    top = torch.topk(masked_NS, k, dim=-1, sorted=False)
    z_NS = torch.zeros_like(h_NS).scatter(-1, top.indices, torch.relu(top.values))
    return alpha * (z_NS @ W_dec_SD - residual_ND).pow(2).mean() * dead_S.any().to(x_ND.dtype)
