"""Latents of model-space activations: the input scaling, then the SAE's own encoder.

Dimension key: B images, T tokens, D width, S latents, K chosen latents.

Every reader of SAE latents outside training (latent statistics, class F1, interventions,
manipulate) calls :func:`encode_tokens`, so the scaling and the encoder rule
(:meth:`SparseAutoencoder.encode`) are applied in one place.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from pipeline.sae.model import SparseAutoencoder
from pipeline.sae.scaling import InputScaling


def encode_tokens(
    sae: SparseAutoencoder,
    scaling: InputScaling | None,
    x_TD: Tensor,
    *,
    tokens: slice = slice(None),
    latents_K: Tensor | Sequence[int] | None = None,
) -> Tensor:
    """Latents f of the tokens ``x[..., tokens, :]`` (model space, any leading dims), in float32.

    ``tokens`` picks a subset along the token axis (``slice(n_prefix, None)``: the patches;
    ``slice(0, 1)``: the CLS token); ``latents_K`` computes only those latents ([..., K]
    instead of [..., S]). ``scaling`` None means the input is already in the SAE's space.
    """
    x = x_TD[..., tokens, :].float()
    if scaling is not None:
        x = scaling.apply(x)
    return sae.encode(x, latents_K)
