"""SAE feature edits of cached activations, and re-forwards from the edited layer to the probe.

Dimension key: B images, T tokens, P patch tokens, D width, S SAE latents, K latents in one
edit, C classes, E edits (method × class jobs) stacked in one re-forward batch.

An edit sets latents ``i`` to values ``v_i`` on every patch token and KEEPS the SAE's error
term, so only the edited latents change::

    x' = x + Σ_i (v_i − f_i(x)) · W_dec[i] / scalar

``f`` is the SAE's encoding of the *scaled* input ``(x − mean) · scalar`` (the SAE's
``InputScaling``), so the decoder direction is mapped back to model space by ``/ scalar``.
The edit acts on the latent values after the SAE's activation, whatever its kind: for TopK /
BatchTopK SAEs nothing is re-ranked (the edited latents are set even where they are not among a
token's active ones, and the others keep their values), as if the edited latents were decoded on
top of the encoding. A random-vector edit adds a fixed vector ``u`` to every patch token instead.

The predictor runs only blocks ``l+1 … N−1``, the final norm and the linear probe, starting
from block ``l``'s (edited) output; baseline predictions use the very same path on the
unedited acts, so baseline and edit differ only by the edit.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pipeline.methods import Edit
from pipeline.models import Backbone
from pipeline.probes.linear import predict_classes
from pipeline.runtime import forward_precision
from pipeline.sae import InputScaling, SparseAutoencoder, encode_tokens


class LatentEditor:
    """Computes edit deltas on patch tokens for an SAE with its input scaling."""

    def __init__(self, sae: SparseAutoencoder, scaling: InputScaling, *, n_prefix: int):
        self.sae = sae
        self.scaling = scaling
        self.n_prefix = n_prefix
        self.n_latents = sae.W_enc.shape[1]

    @torch.no_grad()
    def latent_values(self, acts_BTD: Tensor, latents: tuple[int, ...]) -> Tensor:
        """f_i(x) on every patch token for the given latents only: [B, P, K] (cheap for large S)."""
        return encode_tokens(self.sae, self.scaling, acts_BTD, tokens=slice(self.n_prefix, None), latents_K=latents)

    @torch.no_grad()
    def set_latents(self, acts_BTD: Tensor, latents: tuple[int, ...], target) -> Tensor:
        """The patch-token change [B, P, D] that moves latents to ``target`` (broadcast to [B, P, K])."""
        f_BPK = self.latent_values(acts_BTD, latents)
        target = torch.as_tensor(target, dtype=torch.float32, device=acts_BTD.device)
        w_KD = self.sae.W_dec[list(latents)]
        return ((target - f_BPK) @ w_KD) / self.scaling.scalar

    @torch.no_grad()
    def delta(self, acts_BTD: Tensor, edit: Edit) -> Tensor:
        """The change to the patch tokens, [B, P, D] in model space."""
        b, t, d = acts_BTD.shape
        if edit.vector is not None:
            vec = torch.as_tensor(edit.vector, dtype=torch.float32, device=acts_BTD.device)
            return vec.expand(b, t - self.n_prefix, d)
        return self.set_latents(acts_BTD, edit.latents, edit.values)

    def apply_delta(self, acts_BTD: Tensor, delta_BPD: Tensor) -> Tensor:
        """acts (float32 copy) with ``delta`` added to the patch tokens; CLS and registers untouched."""
        out = acts_BTD.float().clone()
        out[:, self.n_prefix :] += delta_BPD
        return out

    def apply(self, acts_BTD: Tensor, edit: Edit) -> Tensor:
        """acts with the edit applied to the patch tokens (CLS and registers untouched), float32."""
        return self.apply_delta(acts_BTD, self.delta(acts_BTD, edit))


class ReforwardPredictor:
    """Block ``l`` output → blocks l+1…N−1 → final norm → probe → argmax over real classes."""

    def __init__(
        self,
        backbone: Backbone,
        probe: nn.Linear,
        *,
        layer: int,
        n_prefix: int,
        real_classes_only: bool = True,
        forward_dtype: str = "float32",
    ):
        self.backbone = backbone
        self.probe = probe
        self.block = backbone.resolve_layer(layer)
        self.n_prefix = n_prefix
        self.real_classes_only = real_classes_only
        self.forward_dtype = forward_dtype  # the precision the store was extracted at (its attrs say)

    @torch.no_grad()
    def logits(self, acts_BTD: Tensor) -> Tensor:
        """[B, P, C] probe logits of the patch tokens after re-forwarding."""
        with forward_precision(self.forward_dtype, self.backbone.device):
            final_BTD = self.backbone.forward_from(self.block, acts_BTD)
        return self.probe(final_BTD[:, self.n_prefix :].float())

    @torch.no_grad()
    def predict(self, acts_BTD: Tensor) -> Tensor:
        """[B, P] predicted class ids (never 0 = other when ``real_classes_only``)."""
        return predict_classes(self.logits(acts_BTD), real_classes_only=self.real_classes_only)
