"""Linear-probe sweeps: many ``Linear(D, C)`` probes trained in one pass over the data.

A sweep is a grid of (learning rate, weight decay) members, as in saev's contrib.semseg
(ADE20K patch probe) and contrib.classification (CLS probe). Every member starts from the same
seeded initialisation and sees the same batches; each data batch is read once per step for the
whole sweep and all members' logits come out of one matrix multiply. All members share one
stacked parameter and a vectorised AdamW applies each member's own lr and weight decay, so a
step costs nearly the same for 18 members as for one.

This module works on in-memory tensors and iterators; reading the activation cache, shuffling
and batching are the caller's job (see ``fit_sweep``).

Dimension key: N samples (patches or images) in a batch, D model width, C classes,
M sweep members.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline import atomic, metrics
from pipeline.progress import Progress

__all__ = [
    "IGNORE_LABEL",
    "ProbeMember",
    "ProbeSweep",
    "ProbeTrainConfig",
    "benchmark_sweep_step",
    "best_member",
    "epoch_table",
    "fit_sweep",
    "load_probe",
    "member_grid",
    "member_state",
    "predict_logits",
    "save_probe",
    "sweep_confusions",
    "sweep_table",
]

IGNORE_LABEL = -1
"""Label of samples that must not affect training (cross-entropy ``ignore_index``)."""

_FORMAT = "linear-probe/1"


@dataclass(frozen=True)
class ProbeMember:
    """One sweep member's optimiser hyper-parameters (AdamW)."""

    lr: float
    weight_decay: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive finite number; got {self.lr}.")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0; got {self.weight_decay}.")

    @property
    def slug(self) -> str:
        """A file-name-safe name without dots, e.g. ``lr3e-04_wd1e-01``."""
        return f"lr{self.lr:.3g}_wd{self.weight_decay:.3g}".replace(".", "p").replace("+", "")


def member_grid(lrs: Sequence[float], weight_decays: Sequence[float]) -> tuple[ProbeMember, ...]:
    """The full lr x weight-decay grid, lr varying fastest within each weight decay.

    saev's semseg sweep: ``member_grid([3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2], [1e-1, 1e-3, 1e-5])``.
    """
    if not lrs or not weight_decays:
        raise ValueError("member_grid needs at least one lr and one weight decay.")
    return tuple(ProbeMember(float(lr), float(wd)) for wd in weight_decays for lr in lrs)


@dataclass(frozen=True)
class ProbeTrainConfig:
    """Training settings shared by every member of a sweep.

    ``batch_size`` is for the caller that builds the batches (fit_sweep does not re-batch; it
    is recorded with the probe). ``lr_warmup_fraction`` of all steps ramp each member's lr
    linearly from ~0 to its value; after that the lr is constant (saev uses no schedule).
    """

    epochs: int
    batch_size: int
    seed: int = 0
    lr_warmup_fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1; got {self.epochs}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {self.batch_size}.")
        if not 0.0 <= self.lr_warmup_fraction < 1.0:
            raise ValueError(f"lr_warmup_fraction must be in [0, 1); got {self.lr_warmup_fraction}.")


class ProbeSweep(nn.Module):
    """M linear probes ``Linear(D, C)`` with one shared seeded initialisation.

    All members live in one parameter ``weight_MCD`` ([M, C, D]) and ``bias_MC`` ([M, C]), so
    a training step is the same handful of tensor ops whatever M is; ``weights[m]`` ([C, D])
    and ``biases[m]`` ([C]) are views of member ``m``. Each member's own lr and weight decay
    are applied by :class:`SweepAdamW`. ``train_loss_M`` holds each member's mean training
    loss over the last epoch (NaN before training).
    """

    train_loss_M: Tensor  # a buffer (register_buffer), declared for the type checker

    def __init__(self, d_model: int, n_classes: int, members: Sequence[ProbeMember], *, seed: int = 0):
        super().__init__()
        if d_model < 1 or n_classes < 2:
            raise ValueError(f"need d_model >= 1 and n_classes >= 2; got {d_model}, {n_classes}.")
        members = tuple(members)
        if not members:
            raise ValueError("a sweep needs at least one member.")
        for m in members:
            if not isinstance(m, ProbeMember):
                raise TypeError(f"members must be ProbeMember; got {type(m).__name__}.")
        self.d_model, self.n_classes, self.members, self.seed = d_model, n_classes, members, seed
        # nn.Linear's default init (uniform in +-1/sqrt(D)), drawn once from a seeded generator.
        gen = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(d_model)
        w_CD = (torch.rand(n_classes, d_model, generator=gen) * 2 - 1) * bound
        b_C = (torch.rand(n_classes, generator=gen) * 2 - 1) * bound
        self.weight_MCD = nn.Parameter(w_CD.expand(len(members), -1, -1).clone())
        self.bias_MC = nn.Parameter(b_C.expand(len(members), -1).clone())
        self.register_buffer("train_loss_M", torch.full((len(members),), float("nan")), persistent=False)
        self.epoch_history: list[dict[str, Any]] = []

    @property
    def n_members(self) -> int:
        return len(self.members)

    @property
    def weights(self) -> tuple[Tensor, ...]:
        """Per-member weight views ``[C, D]``."""
        return tuple(self.weight_MCD.unbind(0))

    @property
    def biases(self) -> tuple[Tensor, ...]:
        """Per-member bias views ``[C]``."""
        return tuple(self.bias_MC.unbind(0))

    def _check(self, x_ND: Tensor) -> None:
        if x_ND.ndim != 2 or x_ND.shape[1] != self.d_model:
            raise ValueError(f"x_ND must be [N, {self.d_model}]; got {tuple(x_ND.shape)}.")

    def forward_NMC(self, x_ND: Tensor) -> Tensor:
        """Logits in ``[N, M, C]`` layout, one matrix multiply for all members."""
        self._check(x_ND)
        m, c = self.n_members, self.n_classes
        logits_N_MC = torch.addmm(self.bias_MC.reshape(1, m * c), x_ND, self.weight_MCD.reshape(m * c, self.d_model).T)
        return logits_N_MC.view(-1, m, c)

    def forward_MCN(self, x_ND: Tensor) -> Tensor:
        """Logits as an ``[M, C, N]`` view (classes on dim 1): what training's cross-entropy takes,
        far faster on CPU than ``[N·M, C]`` rows of a few classes. One matrix multiply."""
        return self.forward_NMC(x_ND).permute(1, 2, 0)

    def forward(self, x_ND: Tensor) -> Tensor:
        """All members' logits, ``[M, N, C]`` (a transposed view of :meth:`forward_NMC`)."""
        return self.forward_NMC(x_ND).transpose(0, 1)


class SweepAdamW:
    """AdamW (decoupled weight decay, as ``torch.optim.AdamW``) with a per-member lr and weight
    decay along dim 0 of every parameter, in a fixed number of tensor ops per step.

    ``torch.optim.AdamW`` takes one lr per param group, which would force one parameter (and one
    set of small ops) per member; this keeps the sweep's step cost flat in M.
    """

    def __init__(
        self, params: Sequence[Tensor], lr_M: Tensor, weight_decay_M: Tensor, *, betas=(0.9, 0.999), eps: float = 1e-8
    ):
        self.params = list(params)
        self.lr_M, self.wd_M = lr_M, weight_decay_M
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.t = 0
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, lr_scale: float = 1.0) -> None:
        self.t += 1
        bc1 = 1 - self.beta1**self.t
        bc2_sqrt = math.sqrt(1 - self.beta2**self.t)
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            shape = (-1,) + (1,) * (p.ndim - 1)
            lr = (self.lr_M * lr_scale).view(shape)
            p.mul_(1 - lr * self.wd_M.view(shape))
            m.lerp_(p.grad, 1 - self.beta1)
            v.mul_(self.beta2).addcmul_(p.grad, p.grad, value=1 - self.beta2)
            p.sub_(lr / bc1 * m / (v.sqrt() / bc2_sqrt + self.eps))


def _as_batch(x_ND: Any, y_N: Any | None, *, d_model: int, n_classes: int) -> tuple[Tensor, Tensor | None]:
    x_ND = torch.as_tensor(x_ND)
    if x_ND.ndim != 2 or x_ND.shape[1] != d_model:
        raise ValueError(f"batch x must be [N, {d_model}]; got {tuple(x_ND.shape)}.")
    if y_N is None:
        return x_ND, None
    y_N = torch.as_tensor(y_N)
    if y_N.shape != (x_ND.shape[0],):
        raise ValueError(f"batch y must be [{x_ND.shape[0]}] to match x; got {tuple(y_N.shape)}.")
    if y_N.dtype.is_floating_point or y_N.dtype == torch.bool:
        raise ValueError(f"batch y must hold integer labels; got {y_N.dtype}.")
    if y_N.device.type == "cpu" and y_N.numel():
        lo, hi = int(y_N.min()), int(y_N.max())
        if lo < IGNORE_LABEL or hi >= n_classes:
            bad = lo if lo < IGNORE_LABEL else hi
            raise ValueError(f"label {bad} outside [0, {n_classes}) (and not the ignore label {IGNORE_LABEL}).")
    return x_ND, y_N


def fit_sweep(
    epoch_batches: Callable[[int], Iterable[tuple[Tensor, Tensor]]],
    *,
    d_model: int,
    n_classes: int,
    members: Sequence[ProbeMember],
    cfg: ProbeTrainConfig,
    device: str | torch.device = "cpu",
    progress: bool = True,
    steps_per_epoch: int | None = None,
    on_epoch: Callable[[int, ProbeSweep], dict[str, Any]] | None = None,
) -> ProbeSweep:
    """Train every member of a sweep with AdamW and cross-entropy, one data pass per epoch.

    ``epoch_batches(epoch)`` returns that epoch's batches ``(x_ND, y_N)`` (the caller shuffles);
    it is called exactly ``cfg.epochs`` times and each batch serves the whole sweep. ``x`` is
    cast to float32 on ``device``; ``y`` holds labels in ``[0, C)`` or ``-1`` (``IGNORE_LABEL``)
    for samples to leave out (unusable patches). Each member's loss is the mean over the
    batch's non-ignored samples; a batch with none (checked when ``y`` is on the CPU) is skipped.
    Weight decay applies to weights and biases alike (as in saev); the lr is constant after
    any warm-up.

    Warm-up (``cfg.lr_warmup_fraction > 0``) needs the steps per epoch: ``steps_per_epoch``,
    else ``len()`` of the first epoch's iterable.

    ``sweep.epoch_history`` gets one row per epoch and member (``epoch``, ``member``,
    ``train_loss``: that epoch's mean training loss) plus the per-member values (sequences of
    length M) that ``on_epoch(epoch, sweep)`` returns, if given (e.g. a validation metric; the
    sweep is in eval mode during the call). :func:`epoch_table` makes it a DataFrame.
    """
    device = torch.device(device)
    sweep = ProbeSweep(d_model, n_classes, members, seed=cfg.seed).to(device)
    optim = SweepAdamW(
        [sweep.weight_MCD, sweep.bias_MC],
        torch.tensor([m.lr for m in sweep.members], device=device),
        torch.tensor([m.weight_decay for m in sweep.members], device=device),
    )
    warmup_steps: int | None = None
    step = 0
    bar: Progress | None = None
    for epoch in range(cfg.epochs):
        batches = epoch_batches(epoch)
        if bar is None:  # batches per epoch: known once the first epoch's iterable exists
            bar = _sweep_bar(sweep.n_members, cfg, batches, steps_per_epoch, progress)
        if cfg.lr_warmup_fraction > 0 and warmup_steps is None:
            warmup_steps = _warmup_steps(cfg, batches, steps_per_epoch)
        step = _train_epoch(
            sweep,
            optim,
            batches,
            epoch=epoch,
            step=step,
            warmup_steps=warmup_steps,
            cfg=cfg,
            device=device,
            bar=bar,
        )
        _record_epoch(sweep, epoch, on_epoch)
    if bar is not None:
        bar.close({"best_loss": float(sweep.train_loss_M.min())})
    sweep.eval()
    return sweep


def _sweep_bar(
    m_count: int, cfg: ProbeTrainConfig, batches: Iterable, steps_per_epoch: int | None, progress: bool
) -> Progress:
    """The sweep's progress over ``cfg.epochs`` × the batches per epoch (``steps_per_epoch``, else
    ``len(batches)``; no total when neither is known)."""
    n = steps_per_epoch if steps_per_epoch is not None else (len(batches) if hasattr(batches, "__len__") else None)
    return Progress(f"probe sweep ({m_count} members)", cfg.epochs * n if n else None, "batch", enabled=progress)


def _warmup_steps(cfg: ProbeTrainConfig, batches: Iterable, steps_per_epoch: int | None) -> int:
    """Warm-up length in steps: ``lr_warmup_fraction`` of all steps (at least one); the steps per
    epoch are ``steps_per_epoch``, else ``len()`` of the first epoch's ``batches``."""
    per_epoch = steps_per_epoch if steps_per_epoch is not None else getattr(batches, "__len__", None)
    if per_epoch is None:
        raise ValueError(
            "lr warm-up needs the number of steps per epoch: pass steps_per_epoch or "
            "return a sized iterable (list, DataLoader) from epoch_batches."
        )
    per_epoch = per_epoch if isinstance(per_epoch, int) else int(per_epoch())
    return max(1, round(cfg.lr_warmup_fraction * cfg.epochs * per_epoch))


def _train_epoch(
    sweep: ProbeSweep,
    optim: SweepAdamW,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    epoch: int,
    step: int,
    warmup_steps: int | None,
    cfg: ProbeTrainConfig,
    device: torch.device,
    bar: Progress,
) -> int:
    """One pass over ``batches``: an AdamW step per batch for every member; sets
    ``sweep.train_loss_M`` to the epoch's mean loss per member and returns the step count."""
    m_count = sweep.n_members
    loss_sum_M = torch.zeros(m_count, device=device)
    n_seen = torch.zeros((), device=device)
    n_batches = 0
    for x_ND, y_N in batches:
        x_ND, y_N = _as_batch(x_ND, y_N, d_model=sweep.d_model, n_classes=sweep.n_classes)
        n_batches += 1
        if y_N.device.type == "cpu" and not bool((y_N != IGNORE_LABEL).any()):
            continue
        x_ND = x_ND.to(device, dtype=torch.float32, non_blocking=True)
        y_N = y_N.to(device, dtype=torch.long, non_blocking=True)
        scale = min(1.0, (step + 1) / warmup_steps) if warmup_steps is not None else 1.0
        logits_MCN = sweep.forward_MCN(x_ND)
        y_MN = y_N.unsqueeze(0).expand(m_count, -1)
        loss_MN = F.cross_entropy(logits_MCN, y_MN, ignore_index=IGNORE_LABEL, reduction="none")
        n_valid = (y_N != IGNORE_LABEL).sum()
        loss_M = loss_MN.sum(dim=1) / n_valid.clamp(min=1)
        optim.zero_grad()
        # Members share no parameters, so the sum gives each member its own mean-loss gradient.
        loss_M.sum().backward()
        optim.step(scale)
        step += 1
        loss_sum_M += loss_MN.detach().sum(dim=1)
        n_seen += n_valid
        bar.update(
            1,
            lambda: {
                "epoch": f"{epoch + 1}/{cfg.epochs}",
                "best_loss": float((loss_sum_M / n_seen.clamp(min=1)).min()),
            },
        )
    if n_batches == 0:
        raise ValueError(f"epoch_batches({epoch}) yielded no batches.")
    sweep.train_loss_M.copy_(loss_sum_M / n_seen.clamp(min=1))
    return step


def _record_epoch(sweep: ProbeSweep, epoch: int, on_epoch: Callable[[int, ProbeSweep], dict[str, Any]] | None) -> None:
    """Appends the epoch's rows (one per member: train loss and ``on_epoch``'s values, the sweep in
    eval mode during that call) to ``sweep.epoch_history``."""
    extra: dict[str, Any] = {}
    if on_epoch is not None:
        sweep.eval()
        extra = on_epoch(epoch, sweep) or {}
        sweep.train()
    loss_M = sweep.train_loss_M.cpu().numpy()
    sweep.epoch_history.extend(
        {
            "epoch": epoch,
            "member": k,
            "train_loss": float(loss_M[k]),
            **{name: float(values[k]) for name, values in extra.items()},
        }
        for k in range(sweep.n_members)
    )


def predict_classes(logits_C: Tensor, *, real_classes_only: bool = True) -> Tensor:
    """Class ids from probe logits ``[..., C]``: the argmax over the real classes 1 … C-1 (class 0,
    "other", never predicted), or over all C classes when ``real_classes_only`` is False (a probe
    trained with ``train_on_other``). Every probe prediction in the package goes through here."""
    if real_classes_only:
        return logits_C[..., 1:].argmax(dim=-1) + 1
    return logits_C.argmax(dim=-1)


def predict_logits(sweep: ProbeSweep, batches: Iterable[Tensor]) -> Iterator[Tensor]:
    """Yield ``logits_MNC`` for each batch ``x_ND`` (no grad; on the sweep's device).

    Take the argmax on the device before moving results off it: M x N x C floats are large.
    """
    device = next(sweep.parameters()).device
    for x_ND in batches:
        x_ND, _ = _as_batch(x_ND, None, d_model=sweep.d_model, n_classes=sweep.n_classes)
        with torch.no_grad():
            logits_MNC = sweep(x_ND.to(device, dtype=torch.float32, non_blocking=True))
        yield logits_MNC


def sweep_confusions(
    sweep: ProbeSweep, batches: Iterable[tuple[Tensor, Tensor]], *, ignore: int | None = IGNORE_LABEL
) -> np.ndarray:
    """Confusion matrices of every member on labelled batches: ``int64 [M, C, C]`` (rows: truth).

    Samples labelled ``ignore`` are left out. Feed the result to :mod:`pipeline.metrics`.
    """
    m_count, c = sweep.n_members, sweep.n_classes
    conf_MCC = np.zeros((m_count, c, c), dtype=np.int64)
    device = next(sweep.parameters()).device
    for x_ND, y_N in batches:
        x_ND, y_N = _as_batch(x_ND, y_N, d_model=sweep.d_model, n_classes=c)
        with torch.no_grad():
            pred_MN = sweep(x_ND.to(device, dtype=torch.float32)).argmax(dim=-1).cpu().numpy()
        y = y_N.cpu().numpy()
        for m in range(m_count):
            conf_MCC[m] += metrics.confusion_matrix(y, pred_MN[m], c, ignore=ignore)
    return conf_MCC


def epoch_table(sweep: ProbeSweep) -> pd.DataFrame:
    """``sweep.epoch_history`` with each member's ``lr``, ``weight_decay`` and ``slug``: one row per
    epoch and member."""
    table = pd.DataFrame(sweep.epoch_history)
    if table.empty:
        return table
    for name in ("lr", "weight_decay", "slug"):
        table[name] = [getattr(sweep.members[k], name) for k in table["member"]]
    return table


def member_state(sweep: ProbeSweep, m: int) -> dict[str, Tensor]:
    """Member ``m``'s probe as CPU tensors: ``{"weight": [C, D], "bias": [C]}``."""
    if not 0 <= m < sweep.n_members:
        raise IndexError(f"member {m} out of range for a sweep of {sweep.n_members}.")
    return {
        "weight": sweep.weights[m].detach().to("cpu", torch.float32).contiguous().clone(),
        "bias": sweep.biases[m].detach().to("cpu", torch.float32).contiguous().clone(),
    }


def _jsonable(obj: Any) -> Any:
    """Dataclasses, numpy and torch scalars/arrays to JSON types; NaN/inf to null."""
    if hasattr(obj, "__dataclass_fields__") and not isinstance(obj, type):
        return _jsonable(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.ndarray, Tensor)):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot write {type(obj).__name__} to probe JSON metadata.")


def _paths(path_stem: str | Path) -> tuple[Path, Path]:
    # Append, not with_suffix: stems such as "lr0.001" would lose their tail.
    stem = str(path_stem)
    return Path(stem + ".safetensors"), Path(stem + ".json")


def save_probe(path_stem: str | Path, state: dict[str, Tensor], meta: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``stem.safetensors`` (weight [C, D], bias [C]) and ``stem.json`` (shape + ``meta``).

    ``meta`` (config, metrics, ...) may hold dataclasses and numpy values; NaN becomes null.
    Returns the two paths.
    """
    weight, bias = state.get("weight"), state.get("bias")
    if weight is None or bias is None or weight.ndim != 2 or bias.shape != (weight.shape[0],):
        raise ValueError("state must be {'weight': [C, D], 'bias': [C]}.")
    tensors_path, json_path = _paths(path_stem)
    tensors_path.parent.mkdir(parents=True, exist_ok=True)
    c, d = weight.shape
    doc = {"format": _FORMAT, "d_model": int(d), "n_classes": int(c), "meta": _jsonable(meta)}
    with atomic.replacing(tensors_path) as tmp:
        safetensors.torch.save_file(
            {"weight": weight.detach().cpu().contiguous(), "bias": bias.detach().cpu().contiguous()},
            str(tmp),
            metadata={"format": _FORMAT},
        )
    atomic.write_json(json_path, doc, indent=2, allow_nan=False)
    return tensors_path, json_path


def load_probe(path_stem: str | Path) -> tuple[nn.Linear, dict[str, Any]]:
    """Read a probe written by :func:`save_probe`: ``(nn.Linear(D, C), meta)`` on the CPU."""
    tensors_path, json_path = _paths(path_stem)
    for p in (tensors_path, json_path):
        if not p.exists():
            raise FileNotFoundError(f"probe file missing: {p}")
    doc = json.loads(json_path.read_text())
    if doc.get("format") != _FORMAT:
        raise ValueError(f"{json_path} is not a {_FORMAT} file (format={doc.get('format')!r}).")
    tensors = safetensors.torch.load_file(str(tensors_path))
    d, c = doc["d_model"], doc["n_classes"]
    if tuple(tensors["weight"].shape) != (c, d) or tuple(tensors["bias"].shape) != (c,):
        raise ValueError(
            f"{tensors_path} holds weight {tuple(tensors['weight'].shape)}, bias {tuple(tensors['bias'].shape)}; "
            f"{json_path} says D={d}, C={c}."
        )
    probe = nn.Linear(d, c)
    probe.load_state_dict({"weight": tensors["weight"], "bias": tensors["bias"]})
    return probe, doc["meta"]


def sweep_table(members: Sequence[ProbeMember], metrics_per_member: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per member: ``member`` (index in the sweep), ``lr``, ``weight_decay``, then metrics.

    Metric values must be scalars (put per-class arrays in their own table).
    """
    members = tuple(members)
    if len(members) != len(metrics_per_member):
        raise ValueError(f"{len(members)} members but {len(metrics_per_member)} metric dicts.")
    reserved = {"member", "lr", "weight_decay"}
    rows = []
    for i, (m, row_metrics) in enumerate(zip(members, metrics_per_member)):
        row: dict[str, Any] = {"member": i, "lr": m.lr, "weight_decay": m.weight_decay}
        for key, value in row_metrics.items():
            if key in reserved:
                raise ValueError(f"metric name {key!r} clashes with a sweep column.")
            if isinstance(value, Tensor):
                value = value.item() if value.numel() == 1 else value
            if np.ndim(value) != 0:
                raise ValueError(f"metric {key!r} of member {i} is not a scalar (shape {np.shape(value)}).")
            row[key] = value.item() if isinstance(value, np.generic) else value
        rows.append(row)
    return pd.DataFrame(rows)


def best_member(df: pd.DataFrame, metric: str, *, higher_is_better: bool = True, tie_break: str | None = None) -> int:
    """The ``member`` index of the row with the best ``metric`` (NaN rows skipped). Rows that tie
    on it (equal values) are ordered by the lowest ``tie_break`` (a loss column; NaN last), and a
    tie that remains goes to the first row."""
    for col in (metric, tie_break):
        if col is not None and col not in df.columns:
            raise KeyError(f"no column {col!r}; have {list(df.columns)}.")
    values = np.asarray(pd.to_numeric(df[metric], errors="coerce"), dtype=np.float64)
    if np.isnan(values).all():
        raise ValueError(f"metric {metric!r} is NaN for every member.")
    score = values if higher_is_better else -values
    tied = np.flatnonzero(score == np.nanmax(score))
    pos = int(tied[0])
    if tie_break is not None:
        loss = np.asarray(pd.to_numeric(df[tie_break], errors="coerce"), dtype=np.float64)[tied]
        if not np.isnan(loss).all():
            pos = int(tied[np.nanargmin(loss)])
    return int(df["member"].iloc[pos]) if "member" in df.columns else int(df.index[pos])


def benchmark_sweep_step(
    *,
    n: int = 4096,
    d_model: int = 768,
    n_classes: int = 151,
    n_members: int = 18,
    steps: int = 20,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Time forward + backward + AdamW step of a sweep on random data (after 3 warm-up steps).

    Returns ``{"s_per_step", "samples_per_s", "member_samples_per_s"}``.
    """
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    x_ND = torch.randn(n, d_model, generator=gen).to(device)
    y_N = torch.randint(0, n_classes, (n,), generator=gen).to(device)
    members = tuple(ProbeMember(float(lr), 1e-3) for lr in np.geomspace(3e-5, 1e-2, n_members))
    warm = 3

    def batches(_: int) -> Iterator[tuple[Tensor, Tensor]]:
        for _ in range(warm + steps):
            yield x_ND, y_N

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # Time all steps with a hook on the iterator: start the clock once the warm-up steps ran.
    marks: list[float] = []

    def timed(epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        for i, batch in enumerate(batches(epoch)):
            if i == warm:
                sync()
                marks.append(time.perf_counter())
            yield batch
        sync()
        marks.append(time.perf_counter())

    cfg = ProbeTrainConfig(epochs=1, batch_size=n)
    fit_sweep(timed, d_model=d_model, n_classes=n_classes, members=members, cfg=cfg, device=device, progress=False)
    s_per_step = (marks[1] - marks[0]) / steps
    return {
        "s_per_step": s_per_step,
        "samples_per_s": n / s_per_step,
        "member_samples_per_s": n * len(members) / s_per_step,
    }
