"""Train a sweep of SAEs on one pass over the data (saev's parallel sweep, bugs fixed).

Every member sees the same batch at the same step, so a sweep over kinds, λ / k, lr and
expansion factor reads the activation cache once. Each member has its kind's activation
(:mod:`pipeline.sae.kinds`: ``relu``, ``topk``, ``batchtopk``), optionally the Matryoshka objective
(fixed prefixes) and the AuxK loss. Per step and member::

    loss = R + λ_t · mean_N Σ_S f + L_aux
    R    = MSE = mean over N and D of (x̂ − x)²                      (Matryoshka: the mean over
           its prefixes p of mean_{N,D} (x̂_p − x)², :mod:`.kinds.matryoshka`)
    λ_t  = sparsity_coeff · min(1, t / sparsity_warmup_steps)      (λ_0 = 0; kinds with an L1
           penalty only, ``relu``; the k-sparse kinds have λ = 0)
    L_aux = AuxK (:mod:`.kinds.auxk`) when the member has one, over the latents dead for
           ``dead_tokens`` training tokens (this batch counted, as saev); else 0
    lr_t = lr · min(1, (t + 1) / lr_warmup_steps)
    backward → remove_parallel_grads_ → Adam step (lr_t) → normalize_decoder_

The SAEs train in ``train()`` mode (BatchTopK: the batch-wide top-k, its threshold θ moving) and
every metric is measured in ``eval()`` mode (BatchTopK: the JumpReLU with θ).

Fixes relative to saev: its sparsity warm-up wrote ``objective.sparsity_coeff`` while the loss
read the frozen ``cfg.sparsity_coeff``, so λ never warmed up (the full λ applied from step 0);
here the scheduled λ_t is what enters the loss (and is recorded per step in ``history``).
``b_dec`` starts at the data mean (saev's ``init_b_dec`` was never called). The token budget
counts real batch sizes (saev's ``BatchLimiter`` assumed full batches). The first step has a
non-zero lr (saev's warm-up spent step 0 at lr = 0).

Metrics (``mse``, ``normalized_mse`` = FVU, ``explained_variance`` = 1 − FVU, ``l0``, ``n_dead``,
``n_dense``; Matryoshka members: the normalised MSE of each prefix's reconstruction; the PCA
baseline) come from a held-out pass when ``eval_batches`` is given, else from the last
``metrics_fraction`` of training (measured on each batch just before the step that uses it). The
PCA baseline: the normalised MSE, on the same tokens, of the reconstruction from the first
``r`` principal components (L0 rounded half up) of the first ``pca_tokens`` training tokens (mean
included), i.e. the best linear code with as many numbers per token as the member's L0.

History (per logged step and member: tokens seen, lr, λ_t, loss, MSE, L1, AuxK, L0 and the
fraction of latents dead over the last ``dead_window_tokens``) is written into a buffer
preallocated for ``ceil(n_steps / log_every) + 1`` rows on the training device: no per-step
allocation lives past its step, so peak memory does not grow with the token budget (small
long-lived per-step tensors used to pin the allocator's heap between the batch buffers), and
the loop never waits for the device (no host sync per step: the AuxK dead mask and BatchTopK's
θ are computed on the device). ``on_step`` (optional) is called after every logged step.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import units
from ..config_schema import default
from .checkpoint import save_checkpoint
from .kinds import KINDS, get_kind, make_activation
from .kinds.auxk import auxk_loss
from .kinds.matryoshka import matryoshka_mse, prefix_sizes
from .model import SparseAutoencoder
from .scaling import InputScaling

DEAD_TOKENS_CAP = 10_000_000
"""saev's and OpenAI's AuxK dead threshold (tokens without firing); see :meth:`AuxK.dead_tokens_for`."""
DEAD_TOKENS_FRACTION = 0.1
"""...and at most this fraction of the token budget, so a latent can be revived during training."""


@dataclass(frozen=True)
class AuxK:
    """A member's AuxK dead-latent loss (:mod:`pipeline.sae.kinds.auxk`); the defaults are the config
    schema's (``sae.kinds[].auxk``: saev's k_aux 512 and alpha 1/32).

    Attributes:
        k_aux: dead latents (the largest pre-activations among them) that reconstruct the residual.
        alpha: the loss's weight.
        dead_tokens: a latent that has not fired for this many training tokens counts as dead;
            None → :meth:`dead_tokens_for` of the sweep's token budget.
    """

    k_aux: int = default("sae/kinds/[]/auxk/k_aux")
    alpha: float = default("sae/kinds/[]/auxk/alpha")
    dead_tokens: int | None = default("sae/kinds/[]/auxk/dead_tokens")

    def __post_init__(self) -> None:
        if isinstance(self.k_aux, bool) or int(self.k_aux) != self.k_aux or self.k_aux < 1:
            raise ValueError(f"auxk: k_aux must be a positive integer, got {self.k_aux!r}")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"auxk: alpha must be a positive number, got {self.alpha!r}")
        if self.dead_tokens is not None and (int(self.dead_tokens) != self.dead_tokens or self.dead_tokens < 1):
            raise ValueError(f"auxk: dead_tokens must be a positive integer or null, got {self.dead_tokens!r}")

    def dead_tokens_for(self, n_tokens: int) -> int:
        """The dead threshold in tokens: ``dead_tokens`` when set, else ``min(10M, n_tokens / 10)``.

        10M is saev's (and OpenAI's) threshold; saev trains on ~100M tokens, so there it is a
        tenth of the budget. Smaller budgets keep that tenth: with 10M and a 1M-token sweep no
        latent could ever count as dead and AuxK would never act; a tenth leaves the other 90 % of
        training for the revived latents (at least 1 token)."""
        if self.dead_tokens is not None:
            return int(self.dead_tokens)
        return max(1, min(DEAD_TOKENS_CAP, int(n_tokens * DEAD_TOKENS_FRACTION)))

    def to_dict(self) -> dict[str, Any]:
        return {"k_aux": int(self.k_aux), "alpha": float(self.alpha), "dead_tokens": self.dead_tokens}


@dataclass(frozen=True)
class SAEHparams:
    """One sweep member. ``seed`` None → ``TrainConfig.seed`` (same init for equal widths).

    ``kind`` names a registered SAE kind (:data:`pipeline.sae.kinds.KINDS`) and ``kind_params``
    its parameters (``k``, ``momentum``; the registry's defaults fill the rest, unknown names
    raise). ``sparsity_coeff`` (λ) applies only to kinds with an L1 penalty and must be 0 for the
    others. ``auxk`` adds the AuxK loss (k-sparse kinds only); ``prefixes`` trains with the
    Matryoshka objective (fractions of S or latent counts, :func:`~.kinds.matryoshka.prefix_sizes`).
    """

    lr: float
    sparsity_coeff: float
    exp_factor: int
    seed: int | None = None
    encoder_subtracts_b_dec: bool = True
    kind: str = "relu"
    kind_params: Mapping[str, Any] = field(default_factory=dict)
    auxk: AuxK | None = None
    prefixes: tuple[float | int, ...] | None = None

    def __post_init__(self) -> None:
        spec = get_kind(self.kind)  # KeyError naming the known kinds
        unknown = sorted(set(self.kind_params) - set(spec.params))
        if unknown:
            known = ", ".join(spec.params) or "none"
            raise ValueError(f"SAE kind {self.kind!r} has no parameter {unknown[0]!r} (its parameters: {known})")
        full = {**spec.params, **self.kind_params}
        make_activation(self.kind, **full)  # raises ValueError on a bad value
        object.__setattr__(self, "kind_params", MappingProxyType(full))
        if not spec.l1_penalty and self.sparsity_coeff != 0:
            raise ValueError(
                f"SAE kind {self.kind!r} has no L1 penalty: sparsity_coeff must be 0, got {self.sparsity_coeff!r}"
            )
        if self.auxk is not None and not spec.auxk:
            raise ValueError(f"SAE kind {self.kind!r} does not take the AuxK loss")
        if self.prefixes is not None:
            prefixes = tuple(self.prefixes)
            if not prefixes or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in prefixes):
                raise ValueError(f"matryoshka: prefixes must be a non-empty list of numbers, got {self.prefixes!r}")
            object.__setattr__(self, "prefixes", prefixes)  # sizes are checked at S (make_sae)

    def __hash__(self) -> int:
        return hash(
            (
                self.lr,
                self.sparsity_coeff,
                self.exp_factor,
                self.seed,
                self.encoder_subtracts_b_dec,
                self.kind,
                tuple(self.kind_params.items()),
                self.auxk,
                self.prefixes,
            )
        )

    def n_latents(self, d_model: int) -> int:
        """S = exp_factor · D."""
        return int(self.exp_factor) * int(d_model)

    @property
    def l1_penalty(self) -> bool:
        """The loss has the λ-weighted L1 term (the kind's registry flag)."""
        return KINDS[self.kind].l1_penalty

    @property
    def sparsity(self) -> str:
        """What sets the sparsity: ``λ=0.01`` (L1 kinds) or ``k=32``."""
        if self.l1_penalty:
            return f"λ={self.sparsity_coeff:g}"
        return f"k={self.kind_params['k']}" if "k" in self.kind_params else self.kind

    @property
    def label(self) -> str:
        """``x4 lr=0.001 λ=0.01`` for ReLU (as before kinds existed); others name the kind and
        what differs from its defaults: ``x4 lr=0.001 topk k=32 +auxk +matryoshka(3)``."""
        if self.kind == "relu":
            head = f"x{self.exp_factor} lr={self.lr:g} λ={self.sparsity_coeff:g}"
        else:
            params = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.kind_params.items())
            head = f"x{self.exp_factor} lr={self.lr:g} {self.kind}" + (f" {params}" if params else "")
        if self.auxk is not None:
            head += " +auxk"
        if self.prefixes is not None:
            head += f" +matryoshka({len(self.prefixes)})"
        return head

    def make_sae(self, d_model: int, seed: int) -> SparseAutoencoder:
        """The untrained SAE of this member (activation from the registry, Matryoshka sizes at S)."""
        S = self.n_latents(d_model)
        return SparseAutoencoder(
            d_model,
            S,
            seed=seed,
            encoder_subtracts_b_dec=self.encoder_subtracts_b_dec,
            activation=make_activation(self.kind, **self.kind_params),
            prefixes=None if self.prefixes is None else prefix_sizes(self.prefixes, S),
        )


@dataclass(frozen=True)
class TrainConfig:
    """Settings shared by all members of a sweep (they all see the same batches)."""

    n_tokens: int
    batch_size: int
    lr_warmup_steps: int
    sparsity_warmup_steps: int
    seed: int = 0
    metrics_fraction: float = 0.1
    """Without ``eval_batches``: metrics over the last this fraction of training tokens."""
    dense_threshold: float = 1e-2
    """A latent firing on more than this fraction of tokens counts as dense."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    log_every: int = 1
    """History rows: steps 0, k, 2k, … and the step that completes ``n_tokens``."""
    dead_window_tokens: int = 1 << 18
    """History's ``frac_dead``: latents that did not fire in the last this many tokens."""
    pca_tokens: int = 1 << 16
    """The PCA baseline is fitted on the first this many training tokens (a bounded sample: the
    batches are shuffled; its D×D moments cost N·D² per batch, on these tokens only)."""

    def __post_init__(self) -> None:
        if self.n_tokens <= 0 or self.batch_size <= 0:
            raise ValueError("n_tokens and batch_size must be positive")
        if self.lr_warmup_steps < 0 or self.sparsity_warmup_steps < 0:
            raise ValueError("warm-up steps must be >= 0")
        if not 0 < self.metrics_fraction <= 1:
            raise ValueError("metrics_fraction must be in (0, 1]")
        if self.log_every < 1 or self.dead_window_tokens < 1 or self.pca_tokens < 1:
            raise ValueError("log_every, dead_window_tokens and pca_tokens must be >= 1")

    @property
    def n_steps(self) -> int:
        """Steps for ``n_tokens`` at full batches."""
        return math.ceil(self.n_tokens / self.batch_size)

    @property
    def n_log_rows(self) -> int:
        """Upper bound on history rows: every ``log_every``-th step plus the last one."""
        return math.ceil(self.n_steps / self.log_every) + 1


def lr_at(step: int, peak: float, warmup_steps: int) -> float:
    """Linear warm-up: lr · min(1, (step + 1) / warmup); step 0 already trains."""
    if warmup_steps <= 0:
        return float(peak)
    return float(peak) * min(1.0, (step + 1) / warmup_steps)


def sparsity_coeff_at(step: int, peak: float, warmup_steps: int) -> float:
    """Linear warm-up of λ: 0 at step 0, ``peak`` from ``warmup_steps`` on."""
    if warmup_steps <= 0:
        return float(peak)
    return float(peak) * min(1.0, step / warmup_steps)


@dataclass
class LossTerms:
    loss: Tensor
    mse: Tensor
    """MSE of the full reconstruction (Matryoshka too: its last prefix), mean over N and D."""
    l1: Tensor
    aux: Tensor
    """The AuxK term (0 without AuxK)."""
    x_hat_ND: Tensor
    f_NS: Tensor
    x_hat_NPD: Tensor | None = None
    """Matryoshka members: each prefix's reconstruction."""

    def detach(self) -> LossTerms:
        return LossTerms(
            *(t.detach() for t in (self.loss, self.mse, self.l1, self.aux, self.x_hat_ND, self.f_NS)),
            x_hat_NPD=None if self.x_hat_NPD is None else self.x_hat_NPD.detach(),
        )


def sae_loss(
    sae: SparseAutoencoder,
    x_ND: Tensor,
    sparsity_coeff: float,
    *,
    auxk: AuxK | None = None,
    dead_S: Tensor | None = None,
) -> LossTerms:
    """The member's loss on ``x_ND`` (module docstring): reconstruction + λ · mean over the batch of
    Σ_S f (f ≥ 0, so this is L1; kinds with an L1 penalty only) + AuxK (when ``auxk`` and ``dead_S`` are given).

    With unit-norm decoder rows the L1 term equals the decoder-norm-weighted L1 of Anthropic/saev.
    ``dead_S``: latents dead before this batch; those that fire in it are taken out (saev's rule).
    Matryoshka SAEs (``sae.prefixes``) reconstruct from every prefix; the loss's reconstruction
    term is the mean of the prefixes' MSEs, ``mse`` the full reconstruction's.
    """
    h_NS = sae.pre_acts(x_ND)
    f_NS = sae.activation(h_NS)
    x_hat_NPD = None
    if sae.prefixes is None:
        x_hat_ND = sae.decode(f_NS)
        mse = (x_hat_ND - x_ND).pow(2).mean()
        recon = mse
    else:
        x_hat_NPD = sae.decode_prefixes(f_NS)
        x_hat_ND = x_hat_NPD[..., -1, :]
        recon = matryoshka_mse(x_hat_NPD, x_ND)
        mse = (x_hat_ND - x_ND).pow(2).mean()
    l1 = f_NS.sum(dim=-1).mean()
    loss = recon + sparsity_coeff * l1 if KINDS[sae.kind].l1_penalty else recon
    aux = x_ND.new_zeros(())
    if auxk is not None and dead_S is not None:
        dead_now_S = dead_S & ~(f_NS > 0).any(0)
        aux = auxk_loss(h_NS, sae.W_dec, x_ND, x_hat_ND, dead_now_S, k_aux=auxk.k_aux, alpha=auxk.alpha)
        loss = loss + aux
    return LossTerms(loss, mse, l1, aux, x_hat_ND, f_NS, x_hat_NPD)


def make_optimizer(sae: SparseAutoencoder, betas: tuple[float, float] = (0.9, 0.999)):
    device = next(sae.parameters()).device
    return torch.optim.Adam(sae.parameters(), lr=0.0, betas=betas, fused=device.type == "cuda")


def train_step(
    sae: SparseAutoencoder,
    opt: torch.optim.Optimizer,
    x_ND: Tensor,
    *,
    lr: float,
    sparsity_coeff: float,
    auxk: AuxK | None = None,
    dead_S: Tensor | None = None,
) -> LossTerms:
    """One update: loss → backward → remove parallel grads → Adam(lr) → unit-norm decoder rows.

    Returns the loss terms of the forward pass the step used (tensors detached).
    """
    opt.zero_grad(set_to_none=True)
    terms = sae_loss(sae, x_ND, sparsity_coeff, auxk=auxk, dead_S=dead_S)
    terms.loss.backward()
    sae.remove_parallel_grads_()
    for group in opt.param_groups:
        group["lr"] = lr
    opt.step()
    sae.normalize_decoder_()
    return terms.detach()


class _Moments:
    """First and second moments of a token stream in float64: ``n``, ``Σ x [D]``, ``Σ x xᵀ [D, D]``."""

    def __init__(self, d_model: int, device: torch.device) -> None:
        self.n = 0
        self.sum_x_D = torch.zeros(d_model, dtype=torch.float64, device=device)
        self.sum_xx_DD = torch.zeros(d_model, d_model, dtype=torch.float64, device=device)

    @torch.no_grad()
    def add(self, x_ND: Tensor) -> None:
        x = x_ND.double()
        self.n += x.shape[0]
        self.sum_x_D += x.sum(0)
        self.sum_xx_DD += x.T @ x

    def scatter_about(self, mean_D: Tensor) -> Tensor:
        """``Σ (x − μ)(x − μ)ᵀ [D, D]`` over the stream's tokens, for any ``μ``."""
        outer = torch.outer(mean_D, self.sum_x_D)
        return self.sum_xx_DD - outer - outer.T + self.n * torch.outer(mean_D, mean_D)


@torch.no_grad()
def pca_nmse_curve(fit: _Moments, data: _Moments, var_total: float) -> np.ndarray:
    """Normalised MSE on ``data``'s tokens of PCA reconstructions with r = 0 … D components.

    The components are the eigenvectors (largest eigenvalue first) of the covariance of ``fit``'s
    tokens, the reconstruction ``x̂ = μ + V_r V_rᵀ (x − μ)`` with ``fit``'s mean μ, so the error
    of r components is ``tr C − Σ_{j<r} v_jᵀ C v_j`` with ``C = Σ (x − μ)(x − μ)ᵀ`` over ``data``,
    divided by ``var_total`` (the data's squared deviation from its own mean, as the members'
    normalised MSE). NaN when either stream is empty."""
    D = fit.sum_x_D.shape[0]
    if fit.n == 0 or data.n == 0 or not var_total > 0:
        return np.full(D + 1, np.nan)
    mean_D = fit.sum_x_D / fit.n
    _, V_DD = torch.linalg.eigh(fit.scatter_about(mean_D) / fit.n)
    V_DD = V_DD.flip(-1)  # eigh sorts ascending
    C_DD = data.scatter_about(mean_D)
    energy_D = ((C_DD @ V_DD) * V_DD).sum(0)
    err_R = torch.trace(C_DD) - torch.cat([energy_D.new_zeros(1), torch.cumsum(energy_D, 0)])
    return (err_R / var_total).cpu().numpy()


class _Meter:
    """Streaming reconstruction / sparsity statistics for M members on a shared stream (and the
    stream's moments, for the PCA baseline)."""

    def __init__(
        self, n_latents: Sequence[int], d_model: int, device: torch.device, n_prefixes: Sequence[int] | None = None
    ) -> None:
        self.n = 0
        self.sum_x_D = torch.zeros(d_model, dtype=torch.float64, device=device)
        self.sum_x2 = torch.zeros((), dtype=torch.float64, device=device)
        self.moments = _Moments(d_model, device)
        self.sum_err = [torch.zeros((), dtype=torch.float64, device=device) for _ in n_latents]
        self.sum_err_P = [
            torch.zeros(p, dtype=torch.float64, device=device) for p in (n_prefixes or [0] * len(n_latents))
        ]
        self.sum_l0 = [torch.zeros((), dtype=torch.float64, device=device) for _ in n_latents]
        self.fired_S = [torch.zeros(s, dtype=torch.int64, device=device) for s in n_latents]

    @torch.no_grad()
    def add_data(self, x_ND: Tensor) -> None:
        self.n += x_ND.shape[0]
        x = x_ND.double()
        self.sum_x_D += x.sum(0)
        self.sum_x2 += (x * x).sum()
        self.moments.add(x_ND)

    @torch.no_grad()
    def add_member(self, m: int, x_ND: Tensor, x_hat_ND: Tensor, f_NS: Tensor, x_hat_NPD: Tensor | None = None) -> None:
        active = f_NS > 0
        self.sum_err[m] += (x_hat_ND - x_ND).double().pow(2).sum()
        if x_hat_NPD is not None:
            self.sum_err_P[m] += (x_hat_NPD - x_ND.unsqueeze(-2)).double().pow(2).sum((0, 2))
        self.sum_l0[m] += active.sum()
        self.fired_S[m] += active.sum(0)

    def var_total(self) -> float:
        """Σ ‖x − x̄‖² over the measured tokens (the normalisation of every NMSE)."""
        return self.sum_x2.item() - float((self.sum_x_D**2).sum().item()) / self.n if self.n else float("nan")

    def results(self, m: int, d_model: int, dense_threshold: float) -> dict[str, Any]:
        n_prefixes = self.sum_err_P[m].shape[0]
        if self.n == 0:
            nan = float("nan")
            return dict(
                mse=nan,
                normalized_mse=nan,
                l0=nan,
                n_dead=-1,
                n_dense=-1,
                freq_S=np.full(self.fired_S[m].shape[0], np.nan),
                prefix_normalized_mse=(nan,) * n_prefixes,
            )
        sum_err = self.sum_err[m].item()
        var_total = self.var_total()
        freq_S = (self.fired_S[m].double() / self.n).cpu().numpy()
        norm = (lambda e: e / var_total) if var_total > 0 else (lambda e: float("nan"))
        return dict(
            mse=sum_err / (self.n * d_model),
            normalized_mse=norm(sum_err),
            l0=self.sum_l0[m].item() / self.n,
            n_dead=int((self.fired_S[m] == 0).sum().item()),
            n_dense=int((freq_S > dense_threshold).sum()),
            freq_S=freq_S,
            prefix_normalized_mse=tuple(norm(e) for e in self.sum_err_P[m].tolist()),
        )


HISTORY_TERMS = ("loss", "mse", "l1", "aux", "l0", "frac_dead")
"""Per-member values the history records on the device at each logged step."""


class _History:
    """Preallocated per-step history of M members (rows = logged steps); fixed size from the start.

    Device values go into one ``[R, M, len(HISTORY_TERMS)]`` tensor without a host sync; the
    schedule (lr, λ) and token counts into numpy arrays. Dead latents: per member the token
    count at which each latent last fired (``-1`` = never), updated every step.
    """

    def __init__(self, cfg: TrainConfig, n_latents: Sequence[int], device: torch.device) -> None:
        R, M = cfg.n_log_rows, len(n_latents)
        self.every, self.window, self.rows = cfg.log_every, cfg.dead_window_tokens, 0
        self.values_RMK = torch.full((R, M, len(HISTORY_TERMS)), float("nan"), device=device)
        self.lr_RM = np.full((R, M), np.nan)
        self.lam_RM = np.full((R, M), np.nan)
        self.step_R = np.zeros(R, dtype=np.int64)
        self.tokens_R = np.zeros(R, dtype=np.int64)
        self.last_fired_S = [torch.full((s,), -1, dtype=torch.int64, device=device) for s in n_latents]

    def logs(self, step: int, seen_after: int, n_tokens: int) -> bool:
        return step % self.every == 0 or seen_after >= n_tokens

    @torch.no_grad()
    def fired(self, m: int, f_NS: Tensor, seen_after: int) -> Tensor:
        """Record which latents fired in this batch; returns the ``[N, S]`` activity mask."""
        active_NS = f_NS > 0
        self.last_fired_S[m].masked_fill_(active_NS.any(0), seen_after)
        return active_NS

    @torch.no_grad()
    def record(self, m: int, terms: LossTerms, active_NS: Tensor, seen_after: int, lr: float, lam: float) -> None:
        r, last = self.rows, self.last_fired_S[m]
        dead = (last < 0) | (seen_after - last >= self.window)
        row = self.values_RMK[r, m]
        row[0], row[1], row[2], row[3] = terms.loss, terms.mse, terms.l1, terms.aux
        row[4] = active_NS.sum(1, dtype=torch.float32).mean()
        row[5] = dead.float().mean()
        self.lr_RM[r, m], self.lam_RM[r, m] = lr, lam

    @torch.no_grad()
    def dead_before(self, m: int, seen_after: int, dead_tokens: int) -> Tensor:
        """AuxK's dead mask ``[S]`` for the batch ending at ``seen_after`` tokens, from the batches
        before it: latents whose last firing (the start, if never) is ``dead_tokens`` or more tokens
        back; :func:`sae_loss` then takes out those firing in this batch. On the device, no sync."""
        return (seen_after - self.last_fired_S[m].clamp_min(0)) >= dead_tokens

    def end_row(self, step: int, seen_after: int) -> None:
        self.step_R[self.rows], self.tokens_R[self.rows] = step, seen_after
        self.rows += 1

    def last(self, m: int, term: str) -> float:
        return float(self.values_RMK[self.rows - 1, m, HISTORY_TERMS.index(term)]) if self.rows else float("nan")

    def member(self, m: int) -> dict[str, np.ndarray]:
        r = self.rows
        values = self.values_RMK[:r, m].cpu().numpy()
        out = {k: values[:, i] for i, k in enumerate(HISTORY_TERMS)}
        out.update(
            lr=self.lr_RM[:r, m].copy(),
            sparsity_coeff=self.lam_RM[:r, m].copy(),
            step=self.step_R[:r].copy(),
            n_tokens=self.tokens_R[:r].copy(),
        )
        return out


@dataclass
class TrainedSAE:
    """A trained member: model (eval mode), hyper-parameters, metrics and per-step history."""

    sae: SparseAutoencoder
    hparams: SAEHparams
    train_cfg: TrainConfig
    mse: float
    normalized_mse: float
    """MSE / mean squared deviation of x from its mean (1.0 = predicting the mean)."""
    l0: float
    """Mean number of active latents per token."""
    n_dead: int
    """Latents that never fired in the measurement window."""
    n_dense: int
    """Latents firing on more than ``dense_threshold`` of the window's tokens."""
    freq_S: np.ndarray
    n_tokens_seen: int
    n_metric_tokens: int
    metrics_source: str
    """"held-out" or "last <fraction> of training"."""
    scaling: InputScaling | None = None
    history: dict[str, np.ndarray] = field(default_factory=dict)
    """Per logged step (``TrainConfig.log_every``): ``step``, ``n_tokens`` (seen after the step),
    ``lr``, ``sparsity_coeff`` (λ_t), ``loss``, ``mse``, ``l1``, ``aux`` (the AuxK term; of the
    batch the step trained on, in training mode), ``l0`` (mean active latents per token of that
    batch) and ``frac_dead`` (fraction of latents that did not fire in the last
    ``dead_window_tokens`` tokens, or since the start)."""
    prefix_normalized_mse: tuple[float, ...] = ()
    """Matryoshka members: the normalised MSE of each prefix's reconstruction (``sae.prefixes``
    order; the last is ``normalized_mse``); empty otherwise."""
    pca_components: int = -1
    """r = L0 rounded half up, capped at D: the components of the PCA baseline."""
    pca_normalized_mse: float = float("nan")
    """Normalised MSE of the PCA reconstruction with ``pca_components`` components, on the tokens
    of the metrics (module docstring)."""
    pca_curve: np.ndarray = field(default_factory=lambda: np.empty(0))
    """The PCA baseline's normalised MSE for r = 0 … D components (shared by a sweep's members)."""

    @property
    def explained_variance(self) -> float:
        """1 − FVU: the fraction of the tokens' variance (about their mean) the SAE reconstructs."""
        return 1.0 - self.normalized_mse

    def checkpoint_cfg(self) -> dict[str, Any]:
        """JSON-ready cfg for :func:`save_checkpoint` (hyper-parameters, schedule, metrics). The
        activation and the Matryoshka prefix sizes are the SAE's own (the checkpoint header writes
        them); ``auxk`` (with the dead threshold used) and ``matryoshka`` (the configured prefixes)
        are how it was trained."""
        tc = asdict(self.train_cfg)
        tc["adam_betas"] = list(tc["adam_betas"])
        hp = self.hparams
        auxk = None
        if hp.auxk is not None:
            auxk = {**hp.auxk.to_dict(), "dead_tokens": hp.auxk.dead_tokens_for(self.train_cfg.n_tokens)}
        return {
            "lr": hp.lr,
            "sparsity_coeff": hp.sparsity_coeff,
            "exp_factor": hp.exp_factor,
            "auxk": auxk,
            "matryoshka": None if hp.prefixes is None else {"prefixes": list(hp.prefixes)},
            "train": tc,
            "n_tokens_seen": self.n_tokens_seen,
            "metrics": {
                "mse": self.mse,
                "normalized_mse": self.normalized_mse,
                "explained_variance": self.explained_variance,
                "l0": self.l0,
                "n_dead": self.n_dead,
                "n_dense": self.n_dense,
                "prefix_normalized_mse": list(self.prefix_normalized_mse),
                "pca_components": self.pca_components,
                "pca_normalized_mse": self.pca_normalized_mse,
                "n_metric_tokens": self.n_metric_tokens,
                "source": self.metrics_source,
            },
        }

    def save(self, path: Path, *, extra_cfg: dict | None = None) -> None:
        """Write the checkpoint (and its .safetensors twin) with scaling and metrics."""
        cfg = {**self.checkpoint_cfg(), **(extra_cfg or {})}
        save_checkpoint(Path(path), self.sae, cfg=_json_safe(cfg), scaling=self.scaling)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def train_sweep(
    batches: Iterable[Tensor],
    d_model: int,
    members: Sequence[SAEHparams],
    cfg: TrainConfig,
    *,
    data_mean_D: Tensor | None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    scaling: InputScaling | None = None,
    eval_batches: Iterable[Tensor] | None = None,
    on_step: Callable[[int, int, _History], None] | None = None,
) -> list[TrainedSAE]:
    """Train every member on the same ``[B, D]`` batches in one pass over ``batches``.

    Args:
        batches: iterated once; stops after ``cfg.n_tokens`` tokens (the last batch is cut).
        d_model: D.
        members: the sweep (M members; widths may differ).
        cfg: shared schedule and budget.
        data_mean_D: mean of the data in the SAE's input space (after ``scaling``), used to
            initialise ``b_dec``; None → the mean of the first batch.
        device: where the SAEs train; batches are moved there once per step.
        progress: show a tqdm bar (tokens/s).
        scaling: if given, applied to every batch on the device (batches are then raw model
            activations) and stored with the results, so checkpoints carry it.
        eval_batches: optional held-out ``[B, D]`` batches for the metrics (one pass).
        on_step: called as ``on_step(step, tokens_seen, history)`` after every logged step
            (progress reporting); ``history.last(m, "loss")`` reads a member's latest value.
    """
    if not members:
        raise ValueError("no sweep members")
    device = torch.device(device)
    if scaling is not None and scaling.d_model != d_model:
        raise ValueError(f"scaling is for D={scaling.d_model}, d_model={d_model}")
    saes, opts = init_members(members, d_model, cfg, device, data_mean_D)

    def prepare(batch: Tensor) -> Tensor:
        return prepare_batch(batch, d_model, device, scaling)

    meter = _Meter([s.n_latents for s in saes], d_model, device, [len(s.prefixes) if s.prefixes else 0 for s in saes])
    history = _History(cfg, [s.n_latents for s in saes], device)
    pca_fit = _Moments(d_model, device)
    seen = _train_pass(
        batches,
        members,
        saes,
        opts,
        cfg,
        prepare=prepare,
        meter=meter,
        history=history,
        pca_fit=pca_fit,
        init_b_dec_from_first_batch=data_mean_D is None,
        meter_window=eval_batches is None,
        progress=progress,
        on_step=on_step,
    )
    if seen < cfg.n_tokens:
        warnings.warn(f"data ran out after {seen} of {cfg.n_tokens} tokens", stacklevel=2)

    for sae in saes:
        sae.eval()
    if eval_batches is not None:
        _measure_held_out(eval_batches, saes, prepare, meter)
        source = "held-out"
    else:
        source = f"last {cfg.metrics_fraction:g} of training"
    pca_curve = pca_nmse_curve(pca_fit, meter.moments, meter.var_total())
    trained = []
    for m, (hp, sae) in enumerate(zip(members, saes)):
        results = meter.results(m, d_model, cfg.dense_threshold)
        r = min(math.floor(results["l0"] + 0.5), d_model) if math.isfinite(results["l0"]) else -1
        trained.append(
            TrainedSAE(
                sae=sae,
                hparams=hp,
                train_cfg=cfg,
                n_tokens_seen=seen,
                n_metric_tokens=meter.n,
                metrics_source=source,
                scaling=scaling,
                history=history.member(m),
                pca_components=r,
                pca_normalized_mse=float(pca_curve[r]) if r >= 0 else float("nan"),
                pca_curve=pca_curve,
                **results,
            )
        )
    return trained


def init_members(
    members: Sequence[SAEHparams], d_model: int, cfg: TrainConfig, device: torch.device, data_mean_D: Tensor | None
) -> tuple[list[SparseAutoencoder], list[torch.optim.Optimizer]]:
    """One SAE (:meth:`SAEHparams.make_sae`, seeded: the member's seed, else ``cfg.seed``) and its
    Adam per member, in training mode on ``device``; ``b_dec`` set to ``data_mean_D`` when given."""
    saes: list[SparseAutoencoder] = []
    opts: list[torch.optim.Optimizer] = []
    for hp in members:
        sae = hp.make_sae(d_model, cfg.seed if hp.seed is None else hp.seed).to(device)
        sae.train()
        saes.append(sae)
        opts.append(make_optimizer(sae, cfg.adam_betas))
    if data_mean_D is not None:
        for sae in saes:
            sae.init_b_dec_(torch.as_tensor(data_mean_D).to(device))
    return saes, opts


def prepare_batch(batch: Tensor, d_model: int, device: torch.device, scaling: InputScaling | None) -> Tensor:
    """A batch as training reads it: on ``device``, ``[N, D]`` float32, scaled when ``scaling`` is given.

    A float16 batch (the stored dtype, as ``sae-train`` streams it) becomes float32 inside the
    scaling's subtraction, with the same values as a cast first."""
    x = torch.as_tensor(batch).to(device, non_blocking=True)
    x = x.reshape(-1, x.shape[-1])
    if x.shape[-1] != d_model:
        raise ValueError(f"batch has width {x.shape[-1]}, expected d_model={d_model}")
    return scaling.apply(x, dtype=torch.float32) if scaling is not None else x.float()


def _train_pass(
    batches: Iterable[Tensor],
    members: Sequence[SAEHparams],
    saes: list[SparseAutoencoder],
    opts: list[torch.optim.Optimizer],
    cfg: TrainConfig,
    *,
    prepare: Callable[[Tensor], Tensor],
    meter: _Meter,
    history: _History,
    pca_fit: _Moments,
    init_b_dec_from_first_batch: bool,
    meter_window: bool,
    progress: bool,
    on_step: Callable[[int, int, _History], None] | None,
) -> int:
    """The one pass over ``batches`` (cut at ``cfg.n_tokens``): every member steps on every batch.
    With ``meter_window``, the last ``cfg.metrics_fraction`` of the tokens feed ``meter``; the
    first ``cfg.pca_tokens`` feed ``pca_fit``. Returns the number of tokens trained on."""
    M = len(members)
    window_start = cfg.n_tokens * (1.0 - cfg.metrics_fraction)
    seen, step = 0, 0
    bar = tqdm(
        total=cfg.n_tokens,
        unit="tok",
        unit_scale=True,
        disable=not progress,
        desc=f"SAE sweep ({M} member{'s' if M > 1 else ''})",
    )
    try:
        for batch in batches:
            x_ND = prepare(batch)
            remaining = cfg.n_tokens - seen
            if x_ND.shape[0] > remaining:
                x_ND = x_ND[:remaining]
            if x_ND.shape[0] == 0:
                continue
            if step == 0 and init_b_dec_from_first_batch:
                for sae in saes:
                    sae.init_b_dec_(x_ND.mean(0))
            if pca_fit.n < cfg.pca_tokens:
                pca_fit.add(x_ND[: cfg.pca_tokens - pca_fit.n])
            in_window = meter_window and seen + x_ND.shape[0] > window_start
            if in_window:
                meter.add_data(x_ND)
            seen_after = seen + x_ND.shape[0]
            logged = history.logs(step, seen_after, cfg.n_tokens)
            _step_members(
                step,
                x_ND,
                members,
                saes,
                opts,
                cfg,
                meter=meter if in_window else None,
                history=history,
                seen_after=seen_after,
                logged=logged,
            )
            if logged:
                history.end_row(step, seen_after)
                if on_step is not None:
                    on_step(step, seen_after, history)
            seen = seen_after
            step += 1
            bar.update(x_ND.shape[0])
            if progress and step % 50 == 0:
                bar.set_postfix(loss=f"{history.last(0, 'loss'):.4g}")
            if seen >= cfg.n_tokens:
                break
    finally:
        bar.close()
    return seen


def _step_members(
    step: int,
    x_ND: Tensor,
    members: Sequence[SAEHparams],
    saes: list[SparseAutoencoder],
    opts: list[torch.optim.Optimizer],
    cfg: TrainConfig,
    *,
    meter: _Meter | None,
    history: _History,
    seen_after: int,
    logged: bool,
) -> None:
    """One optimiser step of every member on ``x_ND`` (its own lr and λ schedule, its AuxK dead
    mask); dead-latent bookkeeping, the history row when ``logged``, the metrics window when
    ``meter`` is given (measured before the step; in eval mode, by a no-grad forward, for kinds
    whose forward depends on the mode)."""
    for m, (hp, sae, opt) in enumerate(zip(members, saes, opts)):
        lr = lr_at(step, hp.lr, cfg.lr_warmup_steps)
        lam = sparsity_coeff_at(step, hp.sparsity_coeff, cfg.sparsity_warmup_steps)
        measure_eval = sae.activation.mode_dependent
        if meter is not None and measure_eval:
            _measure(sae.eval(), m, x_ND, meter)
            sae.train()
        dead_S = None
        if hp.auxk is not None:
            dead_S = history.dead_before(m, seen_after, hp.auxk.dead_tokens_for(cfg.n_tokens))
        terms = train_step(sae, opt, x_ND, lr=lr, sparsity_coeff=lam, auxk=hp.auxk, dead_S=dead_S)
        if meter is not None and not measure_eval:
            meter.add_member(m, x_ND, terms.x_hat_ND, terms.f_NS, terms.x_hat_NPD)
        active_NS = history.fired(m, terms.f_NS, seen_after)
        if logged:
            history.record(m, terms, active_NS, seen_after, lr, lam)
        del terms, active_NS, dead_S


@torch.no_grad()
def _measure(sae: SparseAutoencoder, m: int, x_ND: Tensor, meter: _Meter) -> None:
    """Member ``m``'s reconstruction of ``x_ND`` (and its prefixes', Matryoshka) into ``meter``."""
    x_hat_ND, f_NS = sae(x_ND)
    x_hat_NPD = sae.decode_prefixes(f_NS) if sae.prefixes is not None else None
    meter.add_member(m, x_ND, x_hat_ND, f_NS, x_hat_NPD)


@torch.no_grad()
def _measure_held_out(
    eval_batches: Iterable[Tensor], saes: list[SparseAutoencoder], prepare: Callable[[Tensor], Tensor], meter: _Meter
) -> None:
    """Feed one pass over the held-out batches through every (eval-mode) member into ``meter``."""
    for batch in eval_batches:
        x_ND = prepare(batch)
        meter.add_data(x_ND)
        for m, sae in enumerate(saes):
            _measure(sae, m, x_ND, meter)


def kind_param_names() -> list[str]:
    """Every registered kind's parameter names, in registry order, once (the sweep table's columns)."""
    return list(dict.fromkeys(name for spec in KINDS.values() for name in spec.params))


SWEEP_AUXK_COLUMNS = ("k_aux", "aux_alpha", "dead_tokens")


def sweep_table(trained: Sequence[TrainedSAE]) -> pd.DataFrame:
    """One row per member: hyper-parameters and metrics.

    Columns: ``member``, ``label``, ``kind``, ``lr``, ``sparsity_coeff`` (λ; 0 for the k-sparse
    kinds), ``exp_factor``, ``n_latents``, one column per registered kind parameter (``k``,
    ``momentum``; empty where the member's kind has no such parameter), ``auxk`` with ``k_aux``,
    ``aux_alpha`` and ``dead_tokens`` (the threshold used; empty without AuxK), ``prefixes`` (the
    Matryoshka prefix sizes as ``"64 128 256"``, empty otherwise; each prefix's normalised MSE is
    in :func:`prefix_table`), then the metrics ``l0``, ``mse``, ``normalized_mse``,
    ``explained_variance_pct`` (100 · (1 − normalized_mse)), ``pca_components`` and ``pca_normalized_mse``
    (the PCA baseline with round(L0) components), dead / dense latents (also in percent of S,
    ``dead_pct`` / ``dense_pct``, as every table: :mod:`pipeline.units`), tokens and the metrics'
    source."""
    params = kind_param_names()
    rows = []
    for i, t in enumerate(trained):
        S, hp = t.sae.n_latents, t.hparams
        auxk = hp.auxk
        rows.append(
            {
                "member": i,
                "label": hp.label,
                "kind": hp.kind,
                "lr": hp.lr,
                "sparsity_coeff": hp.sparsity_coeff,
                "exp_factor": hp.exp_factor,
                "n_latents": S,
                **{name: hp.kind_params.get(name) for name in params},
                "auxk": auxk is not None,
                "k_aux": None if auxk is None else min(auxk.k_aux, S),
                "aux_alpha": None if auxk is None else auxk.alpha,
                "dead_tokens": None if auxk is None else auxk.dead_tokens_for(t.train_cfg.n_tokens),
                "prefixes": " ".join(map(str, t.sae.prefixes)) if t.sae.prefixes else "",
                "l0": t.l0,
                "mse": t.mse,
                "normalized_mse": t.normalized_mse,
                "explained_variance": t.explained_variance,
                "pca_components": t.pca_components,
                "pca_normalized_mse": t.pca_normalized_mse,
                "n_dead": t.n_dead,
                "n_dense": t.n_dense,
                "dead_pct": 100.0 * t.n_dead / S if t.n_dead >= 0 else float("nan"),
                "dense_pct": 100.0 * t.n_dense / S if t.n_dense >= 0 else float("nan"),
                "n_tokens_seen": t.n_tokens_seen,
                "metrics_source": t.metrics_source,
            }
        )
    table = pd.DataFrame(rows)
    for name in (*params, "k_aux", "dead_tokens"):  # integer columns with gaps stay integers
        if name in table and all(isinstance(v, int) for v in table[name].dropna()):
            table[name] = table[name].astype("Int64")
    return units.to_pct(table, ["explained_variance"]) if rows else table


PREFIX_COLUMNS = ("member", "prefix", "n_latents", "fraction_pct", "normalized_mse", "explained_variance_pct")


def prefix_table(trained: Sequence[TrainedSAE]) -> pd.DataFrame:
    """The Matryoshka members' reconstruction from each prefix, one row per (member, prefix):
    ``PREFIX_COLUMNS`` (``prefix`` counts from 1, ``n_latents`` is the prefix size s_p,
    ``fraction_pct`` = 100 · s_p / S; fractions in percent, as every table: :mod:`pipeline.units`). Long rather than one column per prefix: members may have different
    numbers and sizes of prefixes, and a row names its size. Empty (with those columns) when no
    member is Matryoshka."""
    rows = [
        {
            "member": i,
            "prefix": p + 1,
            "n_latents": size,
            "fraction_pct": 100.0 * size / t.sae.n_latents,
            "normalized_mse": nmse,
            "explained_variance_pct": 100.0 * (1.0 - nmse),
        }
        for i, t in enumerate(trained)
        for p, (size, nmse) in enumerate(zip(t.sae.prefixes or (), t.prefix_normalized_mse))
    ]
    return pd.DataFrame(rows, columns=list(PREFIX_COLUMNS))


def pca_table(trained: Sequence[TrainedSAE], *, max_components: int | None = None) -> pd.DataFrame:
    """The PCA baseline curve ``components`` (r = 0 …) → ``normalized_mse``, shared by the sweep
    (the first member's); up to ``max_components`` (default: the members' largest L0 rounded up,
    + 1, so the chart's line spans the points)."""
    if not trained or trained[0].pca_curve.size == 0:
        return pd.DataFrame(columns=["components", "normalized_mse"])
    curve = trained[0].pca_curve
    if max_components is None:
        l0s = [t.l0 for t in trained if math.isfinite(t.l0)]
        max_components = math.ceil(max(l0s, default=0.0)) + 1
    r = min(int(max_components), curve.size - 1)
    return pd.DataFrame({"components": np.arange(r + 1), "normalized_mse": curve[: r + 1]})


def sweep_chart(
    df: pd.DataFrame, stem: str | Path, *, random_weights: bool, pca: pd.DataFrame | None = None
) -> list[Path]:
    """Scatter L0 (x) vs normalised MSE (y), one panel per learning rate; colour the member's kind
    (``kind`` column; Matryoshka and AuxK variants named: ``topk+auxk``), shape the expansion
    factor, each point labelled with what sets its sparsity (``λ=…`` or ``k=…``); the PCA baseline
    (``pca``: :func:`pca_table`, normalised MSE against the number of components) as a dashed black
    line; the member used downstream (``chosen`` column, when present) ringed. Saved via save_chart."""
    import altair as alt  # charts only: pipeline.sae imports no altair

    from ..plots import category_colours, save_chart, title_with_note  # imports altair

    data = df.copy()
    data["exp_factor"] = data["exp_factor"].astype(str)
    data["learning rate"] = data["lr"].map(lambda v: f"lr = {v:g}")
    if "kind" not in data.columns:  # a table written before kinds existed
        data["kind"] = "relu"
    data["variant"] = [_variant(row) for row in data.to_dict("records")]
    data["sparsity"] = [_sparsity_text(row) for row in data.to_dict("records")]
    if "chosen" not in data.columns:
        data["chosen"] = False
    tooltip = [
        alt.Tooltip("label:N", title="member"),
        alt.Tooltip("variant:N", title="kind"),
        alt.Tooltip("sparsity:N", title="sparsity set by"),
        alt.Tooltip("lr:Q", title="lr", format=".3g"),
        alt.Tooltip("exp_factor:N", title="expansion"),
        alt.Tooltip("l0:Q", title="L0", format=".2f"),
        alt.Tooltip("normalized_mse:Q", title="normalised MSE", format=".4f"),
        alt.Tooltip("mse:Q", title="MSE", format=".4g"),
        alt.Tooltip("n_dead:Q", title="dead latents"),
        alt.Tooltip("n_dense:Q", title="dense latents"),
        alt.Tooltip("chosen:N", title="chosen"),
    ]
    if "pca_normalized_mse" in data.columns:
        tooltip.insert(7, alt.Tooltip("pca_normalized_mse:Q", title="PCA, round(L0) components", format=".4f"))
    x = alt.X("l0:Q", title="L0 (active latents per token; PCA: components)", scale=alt.Scale(zero=False))
    y = alt.Y("normalized_mse:Q", title="normalised MSE", scale=alt.Scale(zero=False))
    lrs = sorted(data["learning rate"].unique(), key=lambda t: float(t[5:]))
    with_pca = pca is not None and len(pca) > 0
    frames = [data.assign(layer="member")]
    if with_pca:  # the same curve in every panel: one copy per learning rate, so the facet splits it
        assert pca is not None
        frames += [
            pca.rename(columns={"components": "l0"}).assign(**{"learning rate": lr, "layer": "pca"}) for lr in lrs
        ]
    data_all = pd.concat(frames, ignore_index=True)
    members = alt.Chart().transform_filter(alt.datum.layer == "member")
    points = members.mark_point(filled=True, size=90, opacity=0.9).encode(
        x,
        y,
        color=alt.Color("variant:N", title="kind", scale=category_colours(sorted(data["variant"].unique()))),
        shape=alt.Shape("exp_factor:N", title="expansion"),
        tooltip=tooltip,
    )
    text = members.mark_text(align="left", dx=7, dy=7, fontSize=9, color="#555").encode(x, y, text="sparsity:N")
    chosen = members.transform_filter(alt.datum.chosen == True)  # noqa: E712 (a Vega expression)
    ring = chosen.mark_point(shape="circle", size=420, filled=False, color="black", strokeWidth=2).encode(x, y)
    label = chosen.mark_text(align="left", dx=14, dy=-10, fontWeight="bold").encode(x, y, text=alt.value("chosen"))
    layers = [points, text, ring, label]
    if with_pca:
        line = (
            alt.Chart()
            .transform_filter(alt.datum.layer == "pca")
            .mark_line(color="black", strokeDash=[5, 3], strokeWidth=1.5)
            .encode(
                x,
                y,
                tooltip=[
                    alt.Tooltip("l0:Q", title="PCA components"),
                    alt.Tooltip("normalized_mse:Q", title="normalised MSE", format=".4f"),
                ],
            )
        )
        layers.insert(0, line)
    note = "ringed: the member used downstream" + ("; dashed: PCA with as many components as L0" if with_pca else "")
    chart = (
        alt.layer(*layers, data=data_all)
        .properties(width=420 if len(lrs) == 1 else 300, height=300)
        .facet(column=alt.Column("learning rate:N", title="learning rate (Adam)", sort=lrs))
        .properties(title=title_with_note(f"SAE sweep: sparsity vs reconstruction ({note})", random_weights))
    )
    return save_chart(chart, stem)


def _variant(row: Mapping[str, Any]) -> str:
    """``relu``, ``topk+auxk``, ``batchtopk+matryoshka``, ...: the chart's colour."""
    name = str(row.get("kind") or "relu")
    if row.get("auxk") is True:
        name += "+auxk"
    if isinstance(row.get("prefixes"), str) and row["prefixes"]:
        name += "+matryoshka"
    return name


def _sparsity_text(row: Mapping[str, Any]) -> str:
    """What sets a member's sparsity: ``λ=0.01`` for L1 kinds, ``k=32`` for the k-sparse ones."""
    kind = str(row.get("kind") or "relu")
    if kind in KINDS and KINDS[kind].l1_penalty:
        return f"λ={row['sparsity_coeff']:g}"
    k = row.get("k")
    return f"k={int(k)}" if k is not None and not pd.isna(k) else kind


HISTORY_PCT = {"frac_dead": "dead_pct"}  # history terms written in percent (pipeline.units)
HISTORY_COLUMNS = (
    "member",
    "step",
    "n_tokens",
    "lr",
    "sparsity_coeff",
    *(HISTORY_PCT.get(k, k) for k in HISTORY_TERMS),
)


def history_table(trained: Sequence[TrainedSAE]) -> pd.DataFrame:
    """One row per logged step per member (long format): ``HISTORY_COLUMNS`` (``frac_dead`` as
    ``dead_pct``, percent of the latents)."""
    frames = []
    for i, t in enumerate(trained):
        frame = units.to_pct(
            pd.DataFrame({k: t.history[k] for k in ("step", "n_tokens", "lr", "sparsity_coeff", *HISTORY_TERMS)}),
            HISTORY_PCT,
        )
        frame.insert(0, "member", i)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(HISTORY_COLUMNS))


HISTORY_PANELS = {
    "loss": "loss",
    "mse": "MSE",
    "l1": "L1 (Σ f)",
    "aux": "AuxK loss",
    "l0": "L0",
    "dead_pct": "dead latents (%)",
}


def history_chart(history: pd.DataFrame, stem: str | Path, *, chosen: str | None, random_weights: bool) -> list[Path]:
    """Training curves over tokens seen: one small panel per ``HISTORY_PANELS`` term (AuxK only
    when some member has it), one line per
    member (``label`` column), the chosen member drawn thick and black; saved via save_chart."""
    import altair as alt  # charts only: pipeline.sae imports no altair

    from ..plots import category_colours, save_chart, title_with_note  # imports altair

    panels = {
        k: v for k, v in HISTORY_PANELS.items() if k in history and (k != "aux" or bool(history[k].to_numpy().any()))
    }
    data = history.melt(id_vars=["label", "n_tokens"], value_vars=list(panels), var_name="term")
    data["term"] = [panels[t] for t in data["term"]]
    data["chosen"] = data["label"] == chosen
    base = alt.Chart().encode(
        x=alt.X("n_tokens:Q", title="tokens seen"),
        y=alt.Y("value:Q", title="value (term in the panel's title)", scale=alt.Scale(zero=False)),
        detail="label:N",
        tooltip=[
            alt.Tooltip("label:N", title="member"),
            alt.Tooltip("n_tokens:Q", title="tokens"),
            alt.Tooltip("value:Q", format=".4g"),
        ],
    )
    others = (
        base.transform_filter(~alt.datum.chosen)
        .mark_line(opacity=0.7, strokeWidth=1.2)
        .encode(color=alt.Color("label:N", title="member", scale=category_colours(sorted(data["label"].unique()))))
    )
    best = base.transform_filter(alt.datum.chosen).mark_line(color="black", strokeWidth=3)
    title = "SAE sweep training curves" + (f" (black: chosen member {chosen})" if chosen else "")
    chart = (
        alt.layer(others, best, data=data)
        .properties(width=300, height=150)
        .facet(facet=alt.Facet("term:N", title=None, sort=list(panels.values())), columns=2)
        .resolve_scale(y="independent")
        .properties(title=title_with_note(title, random_weights))
    )
    return save_chart(chart, stem)


__all__ = [
    "AuxK",
    "HISTORY_COLUMNS",
    "HISTORY_TERMS",
    "PREFIX_COLUMNS",
    "kind_param_names",
    "pca_nmse_curve",
    "pca_table",
    "prefix_table",
    "history_chart",
    "history_table",
    "LossTerms",
    "SAEHparams",
    "TrainConfig",
    "TrainedSAE",
    "lr_at",
    "make_optimizer",
    "sae_loss",
    "sparsity_coeff_at",
    "sweep_chart",
    "sweep_table",
    "train_step",
    "train_sweep",
]
