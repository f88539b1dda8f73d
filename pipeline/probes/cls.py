"""Image-classification linear probe on cached image vectors (saev contrib.classification, from the cache).

Reads only the activation store (train and val splits of ``probes.cls.cache``); no image is
decoded and no ViT block runs (the backbone is loaded for its final norm only). Outputs go
to ``<results>/probes/cls/<model>/<dataset>/``.

Input
    ``final_norm(CLS token of block layer's output)``, float32 [D] per image. For CLIP the
    final norm is ``post_layernorm``, so at the last block this is HF's ``pooler_output``.
    A model family without a CLS token (SigLIP) gives the mean of the final-normed patch
    tokens instead (the store's ``image_readout``; see ``features.cls_rows``).
    All image vectors fit in memory: each split is read once; every epoch is a fresh permutation
    (seeded ``seed + epoch``) of the train rows, shared by every sweep member (``fit_sweep``).

Evaluation (val split, every member at once)
    Top-1 and top-5 accuracy (``metrics.topk_accuracy``; with fewer than 5 classes "top-5"
    is top-C, i.e. 1.0 — ``top_k`` in best.json says which k was used), mean per-class
    accuracy and the confusion matrix (``metrics.confusion_matrix``; rows: truth).

Model selection (held out, no peeking at val)
    ``selection_fraction`` of the train images (a seeded permutation, ``selection_seed``) are
    held out of training (at least ``selection_min_images``, at most half:
    ``template.n_held_out``); the best member has the highest top-1 accuracy on them, members
    that tie go to the lowest cross-entropy on them (accuracy on a few dozen images ties often),
    then the first in the sweep; it is reported on val. ``sweep.csv`` holds both
    (``selection_top1_acc_pct``, ``selection_loss`` and the val columns, ``loss`` the val
    cross-entropy), ``best.json`` the held-out image ids.
    ``selection_fraction: 0`` selects on val, as saev did (optimistic).

Outputs: ``sweep.csv`` (one row per member; metrics in percent, ``_pct`` columns, as every
table: :mod:`pipeline.units`), ``best.safetensors`` + ``best.json`` (fractions),
``per_class_accuracy.csv`` (``accuracy_pct``), ``epochs.csv`` (``val_top1_acc_pct`` per epoch and member), ``sweep.{html,png,svg}`` (top-1 vs lr, one line per weight
decay) and ``confusion.{html,png,svg}`` (best member). Every table and figure says when the
model weights are random.

Dimension key: M members, N images, D width, C classes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from pipeline import atomic, metrics, units
from pipeline.config import Config
from pipeline.layout import ProbeFiles, probe_files
from pipeline.models.family import READOUTS
from pipeline.probes import figures
from pipeline.probes.features import FinalNorm, ProbeStores, cls_rows, in_memory_epochs
from pipeline.probes.linear import ProbeMember, ProbeSweep, ProbeTrainConfig, fit_sweep
from pipeline.probes.template import ProbeResults, ProbeRun, ProbeTemplate, n_held_out, run_probe

log = logging.getLogger(__name__)

__all__ = [
    "CLS",
    "OUTPUT_FILES",
    "ClsData",
    "ClsProbe",
    "cls_data",
    "cls_sweep_rows",
    "evaluate_cls",
    "fit_cls_sweep",
    "run_cls_probe",
    "selection_rows",
    "write_per_class_accuracy",
]

OUTPUT_FILES = probe_files("cls")  # what run_cls_probe writes (pipeline.layout owns the list)


def evaluate_cls(
    sweep: ProbeSweep, x_ND: torch.Tensor, y_N: np.ndarray, *, rows: int = 4096
) -> list[tuple[dict[str, float], np.ndarray]]:
    """Every member's metrics on ``x_ND`` / ``y_N`` (top-1, top-5, mean class accuracy, ``loss``: the
    mean cross-entropy) and confusion matrix, from logits computed ``rows`` images at a time.

    Top-k accuracies are accumulated as counts over the row blocks (``metrics.topk_accuracy``
    times the block size), so no ``[M, N, C]`` array is ever held whole.
    """
    m, c, n = sweep.n_members, sweep.n_classes, len(y_N)
    k5 = min(5, c)
    hits = np.zeros((m, 2))
    loss_sum_M = np.zeros(m)
    confs = np.zeros((m, c, c), dtype=np.int64)
    with torch.no_grad():
        for s in range(0, n, rows):
            logits = sweep(x_ND[s : s + rows]).float()
            y = y_N[s : s + rows]
            y_t = torch.from_numpy(y).to(logits.device).expand(m, -1)
            loss_sum_M += F.cross_entropy(logits.transpose(1, 2), y_t, reduction="none").sum(1).cpu().numpy()
            logits_MNC = logits.cpu().numpy()
            for k in range(m):
                hits[k, 0] += metrics.topk_accuracy(logits_MNC[k], y, 1) * len(y)
                hits[k, 1] += metrics.topk_accuracy(logits_MNC[k], y, k5) * len(y)
                confs[k] += metrics.confusion_matrix(y, logits_MNC[k].argmax(axis=1), c)
    out = []
    for k in range(m):
        acc_C = metrics.per_class_accuracy(confs[k])
        row = {
            "top1_acc": float(np.round(hits[k, 0]) / n),
            "top5_acc": float(np.round(hits[k, 1]) / n),
            "mean_class_acc": float(np.nanmean(acc_C)) if np.isfinite(acc_C).any() else float("nan"),
            "loss": float(loss_sum_M[k] / n),
        }
        out.append((row, confs[k]))
    return out


def selection_rows(n: int, fraction: float, seed: int, min_images: int = 1) -> np.ndarray:
    """bool [n]: the held-out selection rows of train (a seeded choice of
    :func:`~pipeline.probes.template.n_held_out` rows; none when fraction is 0)."""
    out = np.zeros(n, dtype=bool)
    if fraction <= 0:
        return out
    if n < 2:
        raise ValueError(f"{n} train image(s): cannot hold out a selection part (set probes.cls.selection_fraction: 0)")
    k = n_held_out(n, fraction, min_images)
    out[np.random.default_rng(seed).choice(n, size=k, replace=False)] = True
    return out


@dataclass
class ClsData:
    """Both splits' image vectors (float32 on the device) and labels, and the train rows split
    into fitting and held-out selection rows (:func:`cls_data`)."""

    norm: FinalNorm
    x_all_ND: torch.Tensor  # every valid train image
    y_all_N: np.ndarray  # int64
    image_all_N: np.ndarray  # their store indices
    x_val_ND: torch.Tensor
    y_val_N: np.ndarray
    sel_idx: np.ndarray  # rows of x_all held out for selection
    x_train_ND: torch.Tensor  # the other rows: what the sweep is fitted on
    y_train_N: np.ndarray

    @property
    def held_out_images(self) -> np.ndarray:
        """Store indices of the held-out selection images."""
        return self.image_all_N[self.sel_idx]


def cls_data(cfg: Config, pc, stores: ProbeStores, device: torch.device) -> ClsData:
    """Loads the final norm (the backbone, checked against the store), reads every valid
    image's vector of both splits once and draws the held-out selection rows."""
    norm = FinalNorm(cfg, stores, device)
    x_all, y_all, image_all = cls_rows(stores.train, pc.layer, norm)
    x_val, y_val, _ = cls_rows(stores.val, pc.layer, norm)
    held_out = selection_rows(len(y_all), pc.selection_fraction, pc.selection_seed, pc.selection_min_images)
    fit_idx, sel_idx = np.flatnonzero(~held_out), np.flatnonzero(held_out)
    x_train, y_train = x_all[torch.from_numpy(fit_idx).to(x_all.device)], y_all[fit_idx]
    return ClsData(norm, x_all, y_all, image_all, x_val, y_val, sel_idx, x_train, y_train)


def fit_cls_sweep(
    pc, stores: ProbeStores, data: ClsData, members, *, device: torch.device, progress: bool
) -> ProbeSweep:
    """Fits every member on the train rows (a fresh permutation per epoch); after each epoch
    every member's val top-1 accuracy goes into the epoch history (``val_top1_acc``)."""
    train_cfg = ProbeTrainConfig(epochs=pc.epochs, batch_size=pc.batch_size, seed=pc.seed)
    log.info(
        "cls probe: %d members, %d train (+%d held out for selection) / %d val images, %d epochs, device %s",
        len(members),
        len(data.y_train_N),
        len(data.sel_idx),
        len(data.y_val_N),
        pc.epochs,
        device,
    )
    epochs = in_memory_epochs(data.x_train_ND, data.y_train_N, batch_size=pc.batch_size, seed=pc.seed)
    return fit_sweep(
        epochs,
        d_model=stores.d_model,
        n_classes=stores.n_classes,
        members=members,
        cfg=train_cfg,
        device=device,
        progress=progress,
        on_epoch=lambda epoch, sw: {
            "val_top1_acc": [row["top1_acc"] for row, _ in evaluate_cls(sw, data.x_val_ND, data.y_val_N)]
        },
    )


def cls_sweep_rows(sweep: ProbeSweep, data: ClsData) -> tuple[list[dict[str, float]], list[np.ndarray]]:
    """Per member: its row (fractions: ``train_loss``, the val metrics of :func:`evaluate_cls`,
    ``selection_top1_acc`` and ``selection_loss`` on the held-out rows, or on val when none are
    held out) and its val confusion matrix (int64 [C, C])."""
    sel_idx = data.sel_idx
    selection = (
        evaluate_cls(sweep, data.x_all_ND[torch.from_numpy(sel_idx).to(data.x_all_ND.device)], data.y_all_N[sel_idx])
        if len(sel_idx)
        else None
    )
    rows, confs = [], []
    for k, (row, conf) in enumerate(evaluate_cls(sweep, data.x_val_ND, data.y_val_N)):
        sel = selection[k][0] if selection is not None else row
        rows.append(
            {
                "train_loss": float(sweep.train_loss_M[k]),
                **row,
                "selection_top1_acc": sel["top1_acc"],
                "selection_loss": sel["loss"],
            }
        )
        confs.append(conf)
    return rows, confs


def write_per_class_accuracy(conf_CC: np.ndarray, stores: ProbeStores, files: ProbeFiles) -> None:
    """Writes ``per_class_accuracy.csv``: the best member's val accuracy per class (percent) and image count."""
    table = units.to_pct(
        pd.DataFrame(
            {
                "class_id": np.arange(stores.n_classes),
                "class_name": list(stores.class_names),
                "accuracy": metrics.per_class_accuracy(conf_CC),
                "n_images": conf_CC.sum(axis=1),
                "random_weights": stores.random_weights,
            }
        ),
        ["accuracy"],
    )
    atomic.write_csv(table, files.own("per_class_accuracy.csv"), index=False)


class ClsProbe(ProbeTemplate[ClsData, list[np.ndarray]]):
    """The classification probe's steps (see the module docstring) in the probe template; its
    results' detail is every member's val confusion matrix."""

    kind = "cls"
    metric = "top1_acc"
    metric_title = "val top-1 accuracy"
    epoch_metric = "val_top1_acc"
    epoch_metric_title = "val top-1 accuracy"

    def data(self, run: ProbeRun) -> ClsData:
        return cls_data(run.cfg, run.pc, run.stores, run.device)

    def fit(self, run: ProbeRun, data: ClsData, members) -> ProbeSweep:
        return fit_cls_sweep(run.pc, run.stores, data, members, device=run.device, progress=run.progress)

    def evaluate(self, run: ProbeRun, data: ClsData, sweep: ProbeSweep) -> ProbeResults[list[np.ndarray]]:
        return ProbeResults(*cls_sweep_rows(sweep, data))

    def tables(self, run: ProbeRun, data: ClsData, results: ProbeResults[list[np.ndarray]], best: int) -> None:
        write_per_class_accuracy(results.detail[best], run.stores, run.files)

    def meta(self, run: ProbeRun, data: ClsData, results: ProbeResults[list[np.ndarray]], best: int) -> dict:
        stores = run.stores
        return {
            "top_k": min(5, stores.n_classes),
            "input": f"{READOUTS[stores.train.image_readout]} of block {stores.block}'s output, float32",
            "confusion": results.detail[best],
            "n_train_images": len(data.y_train_N),
            "n_val_images": len(data.y_val_N),
        }

    def figures(
        self,
        run: ProbeRun,
        results: ProbeResults[list[np.ndarray]],
        best: int,
        *,
        member: ProbeMember,
        tables: Any,
        best_metrics: dict[str, float],
    ) -> None:
        """``confusion.*`` (the best member's val confusion matrix)."""
        figures.confusion_chart(
            results.detail[best],
            run.stores.class_names,
            run.files.own("confusion"),
            random_weights=run.stores.random_weights,
            title=f"Val confusion, best probe (lr {member.lr:g}, wd {member.weight_decay:g}); top-1 {best_metrics['top1_acc']:.1%}",
        )

    def summary(self, run: ProbeRun) -> dict[str, Any]:
        return {"chance": 1.0 / run.stores.n_classes}


CLS = ClsProbe()


def run_cls_probe(cfg: Config, *, out_dir: Path | None = None, progress: bool = True, ctx=None) -> dict:
    """Train the sweep on the train CLS rows, evaluate on val, write the outputs; return a
    summary (:func:`pipeline.probes.template.run_probe` of :class:`ClsProbe`). ``ctx``: the
    step's RunContext (default: one started here)."""
    return run_probe(CLS, cfg, out_dir=out_dir, progress=progress, ctx=ctx)
