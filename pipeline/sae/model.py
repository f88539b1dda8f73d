"""The sparse autoencoder (SAE) of saev (Stevens et al., OSU-NLP-Group/saev), bugs fixed.

Dimension keys used in names and docstrings: N tokens (a batch), D model width,
S latents (``n_latents = exp_factor * D``), M sweep members, P Matryoshka prefixes.

    h_NS  = (x_ND - b_dec_D) @ W_enc_DS + b_enc_S            # pre-activations (default convention)
    f_NS  = σ(h_NS)                                          # the kind's activation (``sae.activation``)
    x̂_ND  = f_NS @ W_dec_SD + b_dec_D                        # decode

σ is ReLU by default; :mod:`pipeline.sae.kinds` registers the others (TopK, BatchTopK) with their
formulas. An SAE trained with the Matryoshka objective records its ``prefixes`` (latent counts
s_1 < … < s_P = S) and :meth:`SparseAutoencoder.decode_prefixes` gives each prefix's
reconstruction; encoding and the full decode do not depend on them.

Encoder conventions (``encoder_subtracts_b_dec``)
-------------------------------------------------
saev changed its encoder without changing the checkpoint format in a way that marks it:

* **Pre-schema checkpoints** (header is the bare config: ``d_vit``, ``exp_factor``,
  ``n_reinit_samples``, ``sparsity_coeff``, ``ghost_grads``, ...; this is what the public
  ``osunlp/SAE_*`` checkpoints on Hugging Face carry) were written by code whose forward was
  ``relu((x - b_dec) @ W_enc + b_enc)`` ("Remove encoder bias as per Anthropic") -> subtract.
* **Schema 1** headers (``cls`` = ``"Relu"``/``"TopK"``/``"BatchTopK"``, format 1A; or
  ``"SparseAutoencoderConfig"``, format 1B, a shape saev's loaders read but no committed saev
  code wrote) came from code of *both* conventions: saev subtracted ``b_dec`` until commit
  ``e7ca004`` (and on the PR-14 branch that forked before it), not after. The header shape cannot
  tell them apart; its ``commit`` can: :mod:`pipeline.sae.saev_history` lists every schema-1
  writer with its encoder. An absent or unknown commit falls back to ``relu(x @ W_enc + b_enc)``
  with a warning (:mod:`pipeline.sae.checkpoint`).
* Schemas 2-5 were all written by code computing ``x @ W_enc + b_enc`` -> no subtraction.
* saev's current loader reads pre-schema checkpoints into its newer model, so it silently
  encodes the public legacy SAEs without subtracting b_dec; it refuses schema-1 files (their
  ``d_vit`` + ``exp_factor``). :mod:`pipeline.sae.checkpoint` picks the convention as above.

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

from .kinds import Activation, ReLU
from .kinds.matryoshka import decode_prefixes

ENCODER_SUBTRACT = "relu((x - b_dec) @ W_enc + b_enc)"
ENCODER_PLAIN = "relu(x @ W_enc + b_enc)"


class SparseAutoencoder(nn.Module):
    """SAE with parameters ``W_enc [D,S]``, ``b_enc [S]``, ``W_dec [S,D]``, ``b_dec [D]`` and the
    activation module ``activation`` (its buffers, if any, are in the state dict as ``activation.*``).

    Args:
        d_model: D, the width of the activations.
        n_latents: S, the number of latents.
        seed: seeds the initialisation (a private generator; global RNG untouched).
        encoder_subtracts_b_dec: encoder convention, see the module docstring.
        activation: σ, a :class:`pipeline.sae.kinds.Activation` (default ReLU).
        prefixes: Matryoshka prefix sizes (ascending latent counts ending at S), or None.
    """

    def __init__(
        self,
        d_model: int,
        n_latents: int,
        *,
        seed: int = 0,
        encoder_subtracts_b_dec: bool = True,
        activation: Activation | None = None,
        prefixes: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if d_model <= 0 or n_latents <= 0:
            raise ValueError(f"d_model and n_latents must be positive, got {d_model}, {n_latents}")
        self.d_model = int(d_model)
        self.n_latents = int(n_latents)
        self.seed = int(seed)
        self.encoder_subtracts_b_dec = bool(encoder_subtracts_b_dec)
        self.activation: Activation = activation if activation is not None else ReLU()
        if prefixes is not None:
            prefixes = tuple(int(p) for p in prefixes)
            if not prefixes or any(b <= a for a, b in zip(prefixes, prefixes[1:])) or prefixes[0] < 1:
                raise ValueError(f"prefixes must be ascending positive latent counts, got {list(prefixes)}")
            if prefixes[-1] != self.n_latents:
                raise ValueError(f"prefixes {list(prefixes)} must end at S={self.n_latents}")
        self.prefixes: tuple[int, ...] | None = prefixes

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
    def kind(self) -> str:
        """The activation's registered kind (``relu``, ``topk``, ``batchtopk``, ...)."""
        return self.activation.kind

    @property
    def encoder(self) -> str:
        """The encoder convention as a formula string (stored in checkpoint headers)."""
        return ENCODER_SUBTRACT if self.encoder_subtracts_b_dec else ENCODER_PLAIN

    def pre_acts(self, x_ND: Tensor, latents_K: Tensor | Sequence[int] | None = None) -> Tensor:
        """Pre-activations h [..., S] (before the activation σ); accepts any leading dims.

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
        """Latents f_NS = σ(pre_acts(x)); leading dims are kept ([..., D] -> [..., S]).

        With ``latents_K``: those latents only, [..., K], the same numbers as
        ``encode(x)[..., latents_K]``. When σ is elementwise (ReLU; BatchTopK's threshold at
        inference) only those K encoder columns are computed; otherwise (TopK, which must rank
        all S) the full encoding is computed and indexed. Every caller (training, statistics,
        F1, interventions, manipulate) encodes through here.
        """
        if latents_K is None:
            return self.activation(self.pre_acts(x_ND))
        if self.activation.elementwise:
            return self.activation(self.pre_acts(x_ND, latents_K))
        idx_K = torch.as_tensor(latents_K, dtype=torch.long, device=x_ND.device)
        return self.activation(self.pre_acts(x_ND))[..., idx_K]

    def decode(self, f_NS: Tensor) -> Tensor:
        """Reconstruction x̂_ND = f @ W_dec + b_dec ([..., S] -> [..., D])."""
        return f_NS @ self.W_dec + self.b_dec

    def decode_prefixes(self, f_NS: Tensor, prefixes: Sequence[int] | None = None) -> Tensor:
        """Matryoshka reconstructions from each prefix, ``[..., P, D]`` (``x̂_p = f[:, :s_p] @
        W_dec[:s_p] + b_dec``); ``prefixes`` defaults to the SAE's own (its last one equals
        :meth:`decode`). Raises ValueError when neither is set."""
        prefixes = self.prefixes if prefixes is None else tuple(int(p) for p in prefixes)
        if prefixes is None:
            raise ValueError("this SAE has no Matryoshka prefixes; pass prefixes=")
        return decode_prefixes(f_NS, self.W_dec, self.b_dec, prefixes)

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
        extra = f", prefixes={list(self.prefixes)}" if self.prefixes else ""
        return (
            f"d_model={self.d_model}, n_latents={self.n_latents}, seed={self.seed}, encoder={self.encoder!r}, "
            f"kind={self.activation.describe()!r}{extra}"
        )
