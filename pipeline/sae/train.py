"""Train a sweep of SAEs on one pass over the data (saev's parallel sweep, bugs fixed).

Every member sees the same batch at the same step, so a sweep over λ, lr and expansion factor
reads the activation cache once. Per step and member::

    loss = MSE + λ_t · mean_N Σ_S f          MSE = mean over N and D of (x̂ − x)²
    λ_t  = sparsity_coeff · min(1, t / sparsity_warmup_steps)      (λ_0 = 0)
    lr_t = lr · min(1, (t + 1) / lr_warmup_steps)
    backward → remove_parallel_grads_ → Adam step (lr_t) → normalize_decoder_

Fixes relative to saev: its sparsity warm-up wrote ``objective.sparsity_coeff`` while the loss
read the frozen ``cfg.sparsity_coeff``, so λ never warmed up (the full λ applied from step 0);
here the scheduled λ_t is what enters the loss (and is recorded per step in ``history``).
``b_dec`` starts at the data mean (saev's ``init_b_dec`` was never called). The token budget
counts real batch sizes (saev's ``BatchLimiter`` assumed full batches). The first step has a
non-zero lr (saev's warm-up spent step 0 at lr = 0).

Metrics (``mse``, ``normalized_mse``, ``l0``, ``n_dead``, ``n_dense``) come from a held-out
pass when ``eval_batches`` is given, else from the last ``metrics_fraction`` of training
(measured on each batch just before the step that uses it).

History (per logged step and member: tokens seen, lr, λ_t, loss, MSE, L1, L0 and the fraction
of latents dead over the last ``dead_window_tokens``) is written into a buffer preallocated
for ``ceil(n_steps / log_every) + 1`` rows on the training device: no per-step allocation
lives past its step, so peak memory does not grow with the token budget (small long-lived
per-step tensors used to pin the allocator's heap between the batch buffers), and the loop
never waits for the device to log. ``on_step`` (optional) is called after every logged step.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import units
from .checkpoint import save_checkpoint
from .model import SparseAutoencoder
from .scaling import InputScaling


@dataclass(frozen=True)
class SAEHparams:
    """One sweep member. ``seed`` None → ``TrainConfig.seed`` (same init for equal widths)."""

    lr: float
    sparsity_coeff: float
    exp_factor: int
    seed: int | None = None
    encoder_subtracts_b_dec: bool = True

    @property
    def label(self) -> str:
        return f"x{self.exp_factor} lr={self.lr:g} λ={self.sparsity_coeff:g}"


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

    def __post_init__(self) -> None:
        if self.n_tokens <= 0 or self.batch_size <= 0:
            raise ValueError("n_tokens and batch_size must be positive")
        if self.lr_warmup_steps < 0 or self.sparsity_warmup_steps < 0:
            raise ValueError("warm-up steps must be >= 0")
        if not 0 < self.metrics_fraction <= 1:
            raise ValueError("metrics_fraction must be in (0, 1]")
        if self.log_every < 1 or self.dead_window_tokens < 1:
            raise ValueError("log_every and dead_window_tokens must be >= 1")

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
    l1: Tensor
    x_hat_ND: Tensor
    f_NS: Tensor


def sae_loss(sae: SparseAutoencoder, x_ND: Tensor, sparsity_coeff: float) -> LossTerms:
    """MSE (mean over N and D) + λ · mean over the batch of Σ_S f (f ≥ 0, so this is L1).

    With unit-norm decoder rows this equals the decoder-norm-weighted L1 of Anthropic/saev.
    """
    x_hat_ND, f_NS = sae(x_ND)
    mse = (x_hat_ND - x_ND).pow(2).mean()
    l1 = f_NS.sum(dim=-1).mean()
    return LossTerms(mse + sparsity_coeff * l1, mse, l1, x_hat_ND, f_NS)


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
) -> LossTerms:
    """One update: loss → backward → remove parallel grads → Adam(lr) → unit-norm decoder rows.

    Returns the loss terms of the forward pass the step used (tensors detached).
    """
    opt.zero_grad(set_to_none=True)
    terms = sae_loss(sae, x_ND, sparsity_coeff)
    terms.loss.backward()
    sae.remove_parallel_grads_()
    for group in opt.param_groups:
        group["lr"] = lr
    opt.step()
    sae.normalize_decoder_()
    return LossTerms(
        terms.loss.detach(), terms.mse.detach(), terms.l1.detach(), terms.x_hat_ND.detach(), terms.f_NS.detach()
    )


class _Meter:
    """Streaming reconstruction / sparsity statistics for M members on a shared stream."""

    def __init__(self, n_latents: Sequence[int], d_model: int, device: torch.device) -> None:
        self.n = 0
        self.sum_x_D = torch.zeros(d_model, dtype=torch.float64, device=device)
        self.sum_x2 = torch.zeros((), dtype=torch.float64, device=device)
        self.sum_err = [torch.zeros((), dtype=torch.float64, device=device) for _ in n_latents]
        self.sum_l0 = [torch.zeros((), dtype=torch.float64, device=device) for _ in n_latents]
        self.fired_S = [torch.zeros(s, dtype=torch.int64, device=device) for s in n_latents]

    @torch.no_grad()
    def add_data(self, x_ND: Tensor) -> None:
        self.n += x_ND.shape[0]
        x = x_ND.double()
        self.sum_x_D += x.sum(0)
        self.sum_x2 += (x * x).sum()

    @torch.no_grad()
    def add_member(self, m: int, x_ND: Tensor, x_hat_ND: Tensor, f_NS: Tensor) -> None:
        active = f_NS > 0
        self.sum_err[m] += (x_hat_ND - x_ND).double().pow(2).sum()
        self.sum_l0[m] += active.sum()
        self.fired_S[m] += active.sum(0)

    def results(self, m: int, d_model: int, dense_threshold: float) -> dict[str, Any]:
        if self.n == 0:
            nan = float("nan")
            return dict(
                mse=nan,
                normalized_mse=nan,
                l0=nan,
                n_dead=-1,
                n_dense=-1,
                freq_S=np.full(self.fired_S[m].shape[0], np.nan),
            )
        sum_err = self.sum_err[m].item()
        var_total = self.sum_x2.item() - float((self.sum_x_D**2).sum().item()) / self.n
        freq_S = (self.fired_S[m].double() / self.n).cpu().numpy()
        return dict(
            mse=sum_err / (self.n * d_model),
            normalized_mse=sum_err / var_total if var_total > 0 else float("nan"),
            l0=self.sum_l0[m].item() / self.n,
            n_dead=int((self.fired_S[m] == 0).sum().item()),
            n_dense=int((freq_S > dense_threshold).sum()),
            freq_S=freq_S,
        )


HISTORY_TERMS = ("loss", "mse", "l1", "l0", "frac_dead")
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
        row[0], row[1], row[2] = terms.loss, terms.mse, terms.l1
        row[3] = active_NS.sum(1, dtype=torch.float32).mean()
        row[4] = dead.float().mean()
        self.lr_RM[r, m], self.lam_RM[r, m] = lr, lam

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
    ``lr``, ``sparsity_coeff`` (λ_t), ``loss``, ``mse``, ``l1`` (of the batch the step trained on),
    ``l0`` (mean active latents per token of that batch) and ``frac_dead`` (fraction of latents
    that did not fire in the last ``dead_window_tokens`` tokens, or since the start)."""

    def checkpoint_cfg(self) -> dict[str, Any]:
        """JSON-ready cfg for :func:`save_checkpoint` (hyper-parameters, schedule, metrics)."""
        tc = asdict(self.train_cfg)
        tc["adam_betas"] = list(tc["adam_betas"])
        return {
            "lr": self.hparams.lr,
            "sparsity_coeff": self.hparams.sparsity_coeff,
            "exp_factor": self.hparams.exp_factor,
            "train": tc,
            "n_tokens_seen": self.n_tokens_seen,
            "metrics": {
                "mse": self.mse,
                "normalized_mse": self.normalized_mse,
                "l0": self.l0,
                "n_dead": self.n_dead,
                "n_dense": self.n_dense,
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

    meter = _Meter([s.n_latents for s in saes], d_model, device)
    history = _History(cfg, [s.n_latents for s in saes], device)
    seen = _train_pass(
        batches,
        members,
        saes,
        opts,
        cfg,
        prepare=prepare,
        meter=meter,
        history=history,
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
    return [
        TrainedSAE(
            sae=sae,
            hparams=hp,
            train_cfg=cfg,
            n_tokens_seen=seen,
            n_metric_tokens=meter.n,
            metrics_source=source,
            scaling=scaling,
            history=history.member(m),
            **meter.results(m, d_model, cfg.dense_threshold),
        )
        for m, (hp, sae) in enumerate(zip(members, saes))
    ]


def init_members(
    members: Sequence[SAEHparams], d_model: int, cfg: TrainConfig, device: torch.device, data_mean_D: Tensor | None
) -> tuple[list[SparseAutoencoder], list[torch.optim.Optimizer]]:
    """One SAE (seeded: the member's seed, else ``cfg.seed``) and its Adam per member, in training
    mode on ``device``; ``b_dec`` set to ``data_mean_D`` when given."""
    saes: list[SparseAutoencoder] = []
    opts: list[torch.optim.Optimizer] = []
    for hp in members:
        sae = SparseAutoencoder(
            d_model,
            hp.exp_factor * d_model,
            seed=cfg.seed if hp.seed is None else hp.seed,
            encoder_subtracts_b_dec=hp.encoder_subtracts_b_dec,
        ).to(device)
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
    init_b_dec_from_first_batch: bool,
    meter_window: bool,
    progress: bool,
    on_step: Callable[[int, int, _History], None] | None,
) -> int:
    """The one pass over ``batches`` (cut at ``cfg.n_tokens``): every member steps on every batch.
    With ``meter_window``, the last ``cfg.metrics_fraction`` of the tokens feed ``meter``.
    Returns the number of tokens trained on."""
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
    """One optimiser step of every member on ``x_ND`` (its own lr and λ schedule); dead-latent
    bookkeeping, the history row when ``logged``, the metrics window when ``meter`` is given."""
    for m, (hp, sae, opt) in enumerate(zip(members, saes, opts)):
        lr = lr_at(step, hp.lr, cfg.lr_warmup_steps)
        lam = sparsity_coeff_at(step, hp.sparsity_coeff, cfg.sparsity_warmup_steps)
        terms = train_step(sae, opt, x_ND, lr=lr, sparsity_coeff=lam)
        if meter is not None:
            meter.add_member(m, x_ND, terms.x_hat_ND, terms.f_NS)
        active_NS = history.fired(m, terms.f_NS, seen_after)
        if logged:
            history.record(m, terms, active_NS, seen_after, lr, lam)
        del terms, active_NS


@torch.no_grad()
def _measure_held_out(
    eval_batches: Iterable[Tensor], saes: list[SparseAutoencoder], prepare: Callable[[Tensor], Tensor], meter: _Meter
) -> None:
    """Feed one pass over the held-out batches through every (eval-mode) member into ``meter``."""
    for batch in eval_batches:
        x_ND = prepare(batch)
        meter.add_data(x_ND)
        for m, sae in enumerate(saes):
            x_hat_ND, f_NS = sae(x_ND)
            meter.add_member(m, x_ND, x_hat_ND, f_NS)


def sweep_table(trained: Sequence[TrainedSAE]) -> pd.DataFrame:
    """One row per member: hyper-parameters and metrics (dead / dense latents also in percent of
    S, ``dead_pct`` / ``dense_pct``, as every table: :mod:`pipeline.units`)."""
    rows = []
    for i, t in enumerate(trained):
        S = t.sae.n_latents
        rows.append(
            {
                "member": i,
                "label": t.hparams.label,
                "lr": t.hparams.lr,
                "sparsity_coeff": t.hparams.sparsity_coeff,
                "exp_factor": t.hparams.exp_factor,
                "n_latents": S,
                "l0": t.l0,
                "mse": t.mse,
                "normalized_mse": t.normalized_mse,
                "n_dead": t.n_dead,
                "n_dense": t.n_dense,
                "dead_pct": 100.0 * t.n_dead / S if t.n_dead >= 0 else float("nan"),
                "dense_pct": 100.0 * t.n_dense / S if t.n_dense >= 0 else float("nan"),
                "n_tokens_seen": t.n_tokens_seen,
                "metrics_source": t.metrics_source,
            }
        )
    return pd.DataFrame(rows)


def sweep_chart(df: pd.DataFrame, stem: str | Path, *, random_weights: bool) -> list[Path]:
    """Scatter L0 (x) vs normalised MSE (y), one panel per learning rate; colour λ, shape
    expansion factor; the member used downstream (``chosen`` column, when present) ringed and
    labelled. Saved via save_chart."""
    import altair as alt  # charts only: pipeline.sae imports no altair

    from ..plots import SEQUENTIAL_SCHEME, save_chart, title_with_note  # imports altair

    data = df.copy()
    data["exp_factor"] = data["exp_factor"].astype(str)
    data["learning rate"] = data["lr"].map(lambda v: f"lr = {v:g}")
    if "chosen" not in data.columns:
        data["chosen"] = False
    tooltip = [
        alt.Tooltip("label:N", title="member"),
        alt.Tooltip("sparsity_coeff:Q", title="λ", format=".3g"),
        alt.Tooltip("lr:Q", title="lr", format=".3g"),
        alt.Tooltip("exp_factor:N", title="expansion"),
        alt.Tooltip("l0:Q", title="L0", format=".2f"),
        alt.Tooltip("normalized_mse:Q", title="normalised MSE", format=".4f"),
        alt.Tooltip("mse:Q", title="MSE", format=".4g"),
        alt.Tooltip("n_dead:Q", title="dead latents"),
        alt.Tooltip("n_dense:Q", title="dense latents"),
        alt.Tooltip("chosen:N", title="chosen"),
    ]
    x = alt.X("l0:Q", title="L0 (active latents per token)", scale=alt.Scale(zero=False))
    y = alt.Y("normalized_mse:Q", title="normalised MSE", scale=alt.Scale(zero=False))
    base = alt.Chart(data)
    points = base.mark_point(filled=True, size=90, opacity=0.9).encode(
        x,
        y,
        color=alt.Color("sparsity_coeff:O", title="λ (sparsity)", scale=alt.Scale(scheme=SEQUENTIAL_SCHEME)),
        shape=alt.Shape("exp_factor:N", title="expansion"),
        tooltip=tooltip,
    )
    chosen = base.transform_filter(alt.datum.chosen == True)  # noqa: E712 (a Vega expression)
    ring = chosen.mark_point(shape="circle", size=420, filled=False, color="black", strokeWidth=2).encode(x, y)
    label = chosen.mark_text(align="left", dx=14, dy=-10, fontWeight="bold").encode(x, y, text=alt.value("chosen"))
    n_lr = data["lr"].nunique()
    chart = (
        alt.layer(points, ring, label)
        .properties(width=420 if n_lr == 1 else 300, height=300)
        .facet(
            column=alt.Column(
                "learning rate:N",
                title="learning rate (Adam)",
                sort=sorted(data["learning rate"].unique(), key=lambda t: float(t[5:])),
            )
        )
        .properties(
            title=title_with_note(
                "SAE sweep: sparsity vs reconstruction (ringed: the member used downstream)", random_weights
            )
        )
    )
    return save_chart(chart, stem)


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


HISTORY_PANELS = {"loss": "loss", "mse": "MSE", "l1": "L1 (Σ f)", "l0": "L0", "dead_pct": "dead latents (%)"}


def history_chart(history: pd.DataFrame, stem: str | Path, *, chosen: str | None, random_weights: bool) -> list[Path]:
    """Training curves over tokens seen: one small panel per ``HISTORY_PANELS`` term, one line per
    member (``label`` column), the chosen member drawn thick and black; saved via save_chart."""
    import altair as alt  # charts only: pipeline.sae imports no altair

    from ..plots import category_colours, save_chart, title_with_note  # imports altair

    data = history.melt(id_vars=["label", "n_tokens"], value_vars=list(HISTORY_PANELS), var_name="term")
    data["term"] = data["term"].map(HISTORY_PANELS)
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
        .facet(facet=alt.Facet("term:N", title=None, sort=list(HISTORY_PANELS.values())), columns=2)
        .resolve_scale(y="independent")
        .properties(title=title_with_note(title, random_weights))
    )
    return save_chart(chart, stem)


__all__ = [
    "HISTORY_COLUMNS",
    "HISTORY_TERMS",
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
