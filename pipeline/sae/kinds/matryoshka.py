"""``matryoshka``: an objective over nested latent prefixes that wraps any kind (Bussmann et al.
2025 and Nabeshima 2025, "Learning Multi-Level Features with Matryoshka Sparse Autoencoders";
saev's ``Matryoshka`` objective).

With prefix sizes ``s_1 < s_2 < … < s_P = S`` (``prefixes``), the first ``s_p`` latents alone
reconstruct the input at prefix p::

    x̂_p = f[:, :s_p] @ W_dec[:s_p] + b_dec
    loss = mean_p MSE(x̂_p, x)  (+ the kind's own terms: λ·L1 for relu, AuxK for topk/batchtopk)

so early latents learn general features and later ones refine them. Encoding is the wrapped
kind's, unchanged (f is computed once; only the decode is nested), and the last prefix is the
ordinary reconstruction, so every stage that encodes or decodes treats a Matryoshka SAE as its
kind. The sweep table reports the normalised MSE at each prefix.

Where saev differs: saev samples ``n_prefixes`` random prefix lengths from a Pareto distribution
at every step (Nabeshima's variant). Ours uses fixed, configured prefixes (Bussmann's variant):
the same prefixes every step, recorded in the checkpoint, so the per-prefix metrics name the
prefixes the SAE was trained to reconstruct from. ``prefixes`` in the config may be fractions of S
(``0 < v <= 1``, floats) or latent counts (ints), ascending; the last must be S (or 1.0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def prefix_sizes(spec: Sequence[float | int], n_latents: int) -> tuple[int, ...]:
    """Latent counts ``s_1 < … < s_P = S`` from a config list of fractions (floats in (0, 1]) or
    counts (ints); a fraction becomes ``round(v · S)`` (at least 1). Raises ValueError on an empty,
    non-ascending or out-of-range list, or one that does not end at S."""
    if not spec:
        raise ValueError("matryoshka: prefixes must not be empty")
    sizes: list[int] = []
    for v in spec:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"matryoshka: prefix {v!r} is not a finite number")
        if isinstance(v, float):
            if not 0.0 < v <= 1.0:
                raise ValueError(f"matryoshka: fraction {v!r} is not in (0, 1]")
            sizes.append(max(1, round(v * n_latents)))
        else:
            sizes.append(int(v))
    if any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise ValueError(f"matryoshka: prefixes {list(spec)} give sizes {sizes} for S={n_latents}: not ascending")
    if sizes[0] < 1 or sizes[-1] != n_latents:
        raise ValueError(f"matryoshka: prefixes {list(spec)} give sizes {sizes}; they must end at S={n_latents}")
    return tuple(sizes)


def decode_prefixes(f_NS: Tensor, W_dec_SD: Tensor, b_dec_D: Tensor, prefixes: Sequence[int]) -> Tensor:
    """Reconstructions from each prefix, ``x̂ [..., P, D]``: ``x̂_p = f[..., :s_p] @ W_dec[:s_p] + b_dec``.

    Computed block by block (latents ``[s_{p−1}, s_p)``) and summed cumulatively, so the cost is
    one full decode."""
    starts = (0, *prefixes[:-1])
    blocks = [f_NS[..., a:b] @ W_dec_SD[a:b] for a, b in zip(starts, prefixes)]
    return torch.cumsum(torch.stack(blocks, dim=-2), dim=-2) + b_dec_D


def matryoshka_mse(x_hat_NPD: Tensor, x_ND: Tensor) -> Tensor:
    """The Matryoshka reconstruction loss: MSE (mean over N and D) averaged over the P prefixes."""
    return (x_hat_NPD - x_ND.unsqueeze(-2)).pow(2).mean()
