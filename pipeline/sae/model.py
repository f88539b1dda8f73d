"""The ReLU sparse autoencoder (SAE) of saev (Stevens et al., OSU-NLP-Group/saev), bugs fixed.

Dimension keys used in names and docstrings: N tokens (a batch), D model width,
S latents (``n_latents = exp_factor * D``), M sweep members.

    f_NS  = relu((x_ND - b_dec_D) @ W_enc_DS + b_enc_S)     # encode (default convention)
    x̂_ND  = f_NS @ W_dec_SD + b_dec_D                        # decode

Encoder conventions (``encoder_subtracts_b_dec``)
-------------------------------------------------
saev changed its encoder without changing the checkpoint format in a way that marks it:

* **Pre-schema checkpoints** (header is the bare config: ``d_vit``, ``exp_factor``,
  ``n_reinit_samples``, ``sparsity_coeff``, ``ghost_grads``, ...; this is what the public
  ``osunlp/SAE_*`` checkpoints on Hugging Face carry) were written by code whose forward was
  ``relu((x - b_dec) @ W_enc + b_enc)`` ("Remove encoder bias as per Anthropic") -> subtract.
* The first ``"schema": 1`` dumps (header ``cls`` = ``"Relu"``/``"TopK"``/...) were written by
  *both* conventions: early schema-1 code still subtracted b_dec, later schema-1 code (same header
  shape) computes ``relu(x @ W_enc + b_enc)``. The header cannot tell them apart.
* Schema 1 with ``cls`` = ``"SparseAutoencoderConfig"`` and schemas 2-5 come from code with a
  separate ``encode`` that computes ``relu(x @ W_enc + b_enc)`` -> no subtraction.
* saev's current loader reads pre-schema checkpoints into that newer model, so it silently
  encodes the public legacy SAEs without subtracting b_dec. :mod:`pipeline.sae.checkpoint`
  picks the convention from the header style instead (see there).

Both are the same family (``x @ W_enc + (b_enc - b_dec @ W_enc)`` is the other one with a
different encoder bias), so this class implements both with one flag. Our own checkpoints
record the flag explicitly in their header.

Initialisation (as newer saev): ``W_dec`` kaiming-uniform with decoder rows rescaled to unit
norm, ``W_enc = W_dec.T`` (a copy, not a view), both biases zero; ``init_b_dec_`` then sets
``b_dec`` to the data mean (saev defined ``init_b_dec`` but its training loop never called it;
ours does).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

ENCODER_SUBTRACT = "relu((x - b_dec) @ W_enc + b_enc)"
ENCODER_PLAIN = "relu(x @ W_enc + b_enc)"


class SparseAutoencoder(nn.Module):
    """ReLU SAE with parameters ``W_enc [D,S]``, ``b_enc [S]``, ``W_dec [S,D]``, ``b_dec [D]``.

    Args:
        d_model: D, the width of the activations.
        n_latents: S, the number of latents.
        seed: seeds the initialisation (a private generator; global RNG untouched).
        encoder_subtracts_b_dec: encoder convention, see the module docstring.
    """

    def __init__(self, d_model: int, n_latents: int, *, seed: int = 0, encoder_subtracts_b_dec: bool = True) -> None:
        super().__init__()
        if d_model <= 0 or n_latents <= 0:
            raise ValueError(f"d_model and n_latents must be positive, got {d_model}, {n_latents}")
        self.d_model = int(d_model)
        self.n_latents = int(n_latents)
        self.seed = int(seed)
        self.encoder_subtracts_b_dec = bool(encoder_subtracts_b_dec)

        gen = torch.Generator().manual_seed(self.seed)
        W_dec_SD = torch.empty(self.n_latents, self.d_model)
        nn.init.kaiming_uniform_(W_dec_SD, generator=gen)
        W_dec_SD /= W_dec_SD.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.W_dec = nn.Parameter(W_dec_SD)
        self.W_enc = nn.Parameter(W_dec_SD.T.clone().contiguous())
        self.b_enc = nn.Parameter(torch.zeros(self.n_latents))
        self.b_dec = nn.Parameter(torch.zeros(self.d_model))

    @property
    def exp_factor(self) -> float:
        """S / D (an int for every SAE trained here)."""
        ratio = self.n_latents / self.d_model
        return int(ratio) if ratio == int(ratio) else ratio

    @property
    def encoder(self) -> str:
        """The encoder convention as a formula string (stored in checkpoint headers)."""
        return ENCODER_SUBTRACT if self.encoder_subtracts_b_dec else ENCODER_PLAIN

    def pre_acts(self, x_ND: Tensor, latents_K: Tensor | Sequence[int] | None = None) -> Tensor:
        """Pre-activations h [..., S] (before the ReLU); accepts any leading dims.

        With ``latents_K`` only those latents' columns are computed: [..., K], the same numbers
        as ``pre_acts(x)[..., latents_K]`` at K/S of the cost.
        """
        if self.encoder_subtracts_b_dec:
            x_ND = x_ND - self.b_dec
        if latents_K is None:
            return x_ND @ self.W_enc + self.b_enc
        idx_K = torch.as_tensor(latents_K, dtype=torch.long, device=x_ND.device)
        return x_ND @ self.W_enc[:, idx_K] + self.b_enc[idx_K]

    def encode(self, x_ND: Tensor, latents_K: Tensor | Sequence[int] | None = None) -> Tensor:
        """Latents f_NS = relu(pre_acts(x)); leading dims are kept ([..., D] -> [..., S]).

        With ``latents_K``: those latents only, [..., K]. Exact for this ReLU SAE, where each
        latent reads only its own encoder column; every caller (training, statistics, F1,
        interventions, manipulate) encodes through here, so an SAE with another activation
        (TopK, JumpReLU) changes this one method.
        """
        return torch.relu(self.pre_acts(x_ND, latents_K))

    def decode(self, f_NS: Tensor) -> Tensor:
        """Reconstruction x̂_ND = f @ W_dec + b_dec ([..., S] -> [..., D])."""
        return f_NS @ self.W_dec + self.b_dec

    def forward(self, x_ND: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(x̂_ND, f_NS)``."""
        f_NS = self.encode(x_ND)
        return self.decode(f_NS), f_NS

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale every row of W_dec (one latent's direction) to unit L2 norm, in place."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_grads_(self) -> None:
        """Remove from ``W_dec.grad`` each row's component parallel to that row of W_dec.

        Works for rows of any non-zero norm (divides by ‖row‖², unlike saev's original, which
        assumed unit rows); zero rows are left alone. Call after ``backward`` and before the
        optimiser step; the step then only rotates decoder rows, and ``normalize_decoder_``
        afterwards undoes the second-order change in length.
        """
        if self.W_dec.grad is None:
            return
        W_SD = self.W_dec.data
        norm_sq_S = (W_SD * W_SD).sum(dim=1)
        coef_S = (self.W_dec.grad * W_SD).sum(dim=1) / norm_sq_S.clamp_min(1e-30)
        coef_S = torch.where(norm_sq_S > 0, coef_S, torch.zeros_like(coef_S))
        self.W_dec.grad.sub_(coef_S[:, None] * W_SD)

    @torch.no_grad()
    def init_b_dec_(self, mean_D: Tensor) -> None:
        """Set ``b_dec`` to the data mean (in the SAE's input space, i.e. after scaling)."""
        mean_D = torch.as_tensor(mean_D, dtype=self.b_dec.dtype, device=self.b_dec.device)
        if mean_D.shape != (self.d_model,):
            raise ValueError(f"mean_D has shape {tuple(mean_D.shape)}, expected ({self.d_model},)")
        self.b_dec.copy_(mean_D)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_latents={self.n_latents}, seed={self.seed}, encoder={self.encoder!r}"
