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
    held out of training; the best member has the highest top-1 accuracy on them (ties: the
    first in the sweep) and is reported on val. ``sweep.csv`` holds both
    (``selection_top1_acc_pct`` and the val columns), ``best.json`` the held-out image ids.
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
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline import metrics, units
from pipeline.config import Config
from pipeline.probes import figures
from pipeline.models.family import READOUTS
from pipeline.probes.features import best_meta, probe_setup, cls_rows, FinalNorm, in_memory_epochs
from pipeline.probes.linear import (
    ProbeSweep,
    ProbeTrainConfig,
    best_member,
    epoch_table,
    fit_sweep,
    member_grid,
    member_state,
    save_probe,
    sweep_table,
)
from pipeline.provenance import record
from pipeline.layout import probe_files
from pipeline.runtime import describe_device

log = logging.getLogger(__name__)

__all__ = ["OUTPUT_FILES", "evaluate_cls", "run_cls_probe", "selection_rows"]

OUTPUT_FILES = probe_files("cls")  # what run_cls_probe writes (pipeline.layout owns the list)


def evaluate_cls(
    sweep: ProbeSweep, x_ND: torch.Tensor, y_N: np.ndarray, *, rows: int = 4096
) -> list[tuple[dict[str, float], np.ndarray]]:
    """Every member's val metrics and confusion matrix, from logits computed ``rows`` images at a time.

    Top-k accuracies are accumulated as counts over the row blocks (``metrics.topk_accuracy``
    times the block size), so no ``[M, N, C]`` array is ever held whole.
    """
    m, c, n = sweep.n_members, sweep.n_classes, len(y_N)
    k5 = min(5, c)
    hits = np.zeros((m, 2))
    confs = np.zeros((m, c, c), dtype=np.int64)
    with torch.no_grad():
        for s in range(0, n, rows):
            logits_MNC = sweep(x_ND[s : s + rows]).float().cpu().numpy()
            y = y_N[s : s + rows]
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
        }
        out.append((row, confs[k]))
    return out


def selection_rows(n: int, fraction: float, seed: int) -> np.ndarray:
    """bool [n]: the held-out selection rows of train (a seeded choice; none when fraction is 0).

    At least one row is held out and at least one left to train on.
    """
    out = np.zeros(n, dtype=bool)
    if fraction <= 0:
        return out
    if n < 2:
        raise ValueError(f"{n} train image(s): cannot hold out a selection part (set probes.cls.selection_fraction: 0)")
    k = min(n - 1, max(1, round(fraction * n)))
    out[np.random.default_rng(seed).choice(n, size=k, replace=False)] = True
    return out


def run_cls_probe(cfg: Config, *, out_dir: Path | None = None, progress: bool = True, ctx=None) -> dict:
    """Train the sweep on the train CLS rows, evaluate on val, write the outputs; return a summary.
    ``ctx``: the step's RunContext (default: one started here)."""
    pc, threads, device, stores, out_dir = probe_setup(cfg, "cls", out_dir, ctx)
    norm = FinalNorm(cfg, stores, device)
    c = stores.n_classes
    x_all, y_all, image_all = cls_rows(stores.train, pc.layer, norm)
    x_val, y_val, _ = cls_rows(stores.val, pc.layer, norm)
    held_out = selection_rows(len(y_all), pc.selection_fraction, pc.selection_seed)
    fit_idx, sel_idx = np.flatnonzero(~held_out), np.flatnonzero(held_out)
    x_train, y_train = x_all[torch.from_numpy(fit_idx).to(x_all.device)], y_all[fit_idx]
    members = member_grid(pc.lrs, pc.weight_decays)
    train_cfg = ProbeTrainConfig(epochs=pc.epochs, batch_size=pc.batch_size, seed=pc.seed)
    log.info(
        "cls probe: %d members, %d train (+%d held out for selection) / %d val images, %d epochs, device %s",
        len(members),
        len(y_train),
        len(sel_idx),
        len(y_val),
        pc.epochs,
        device,
    )

    t0 = time.perf_counter()
    epochs = in_memory_epochs(x_train, y_train, batch_size=pc.batch_size, seed=pc.seed)
    sweep = fit_sweep(
        epochs,
        d_model=stores.d_model,
        n_classes=c,
        members=members,
        cfg=train_cfg,
        device=device,
        progress=progress,
        on_epoch=lambda epoch, sw: {"val_top1_acc": [row["top1_acc"] for row, _ in evaluate_cls(sw, x_val, y_val)]},
    )
    t1 = time.perf_counter()
    selection = (
        evaluate_cls(sweep, x_all[torch.from_numpy(sel_idx).to(x_all.device)], y_all[sel_idx]) if len(sel_idx) else None
    )
    rows, confs = [], []
    for k, (row, conf) in enumerate(evaluate_cls(sweep, x_val, y_val)):
        sel_top1 = selection[k][0]["top1_acc"] if selection is not None else row["top1_acc"]
        rows.append({"train_loss": float(sweep.train_loss_M[k]), **row, "selection_top1_acc": sel_top1})
        confs.append(conf)
    t2 = time.perf_counter()

    device_name = describe_device(device)
    table = sweep_table(members, rows)
    table["random_weights"] = stores.random_weights
    table["device"] = device_name
    best = best_member(table, "selection_top1_acc")
    table["best"] = table["member"] == best
    best_metrics = {k: float(v) for k, v in rows[best].items()}
    where = (
        "val (selection_fraction 0: saev's choice, optimistic)"
        if not len(sel_idx)
        else (
            f"{len(sel_idx)} held-out train images (selection_fraction {pc.selection_fraction:g}, seed {pc.selection_seed})"
        )
    )
    selection_record = {
        "metric": "top1_acc",
        "on": where,
        "fraction": pc.selection_fraction,
        "seed": pc.selection_seed,
        "n_images": int(len(sel_idx)),
        "best_selection_top1_acc": best_metrics["selection_top1_acc"],
        "best_val_top1_acc": best_metrics["top1_acc"],
        "image_ids": [str(stores.train.image_ids[i]) for i in image_all[sel_idx]],
    }
    names = stores.class_names
    conf = confs[best]

    table = units.to_pct(table, [k for k in rows[0] if k != "train_loss"])  # metrics in percent (pipeline.units)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "sweep.csv", index=False)
    units.to_pct(
        pd.DataFrame(
            {
                "class_id": np.arange(c),
                "class_name": list(names),
                "accuracy": metrics.per_class_accuracy(conf),
                "n_images": conf.sum(axis=1),
                "random_weights": stores.random_weights,
            }
        ),
        ["accuracy"],
    ).to_csv(out_dir / "per_class_accuracy.csv", index=False)

    member = members[best]
    meta = best_meta(
        "cls",
        pc,
        stores,
        norm,
        members,
        best,
        best_metrics,
        selected_by=f"top1_acc on {where}",
        selection=selection_record,
        provenance=record(cfg, "probe-cls"),
        device_name=device_name,
        threads=threads,
        seconds={"train": round(t1 - t0, 2), "evaluate": round(t2 - t1, 2)},
        top_k=min(5, c),
        input=f"{READOUTS[stores.train.image_readout]} of block {stores.block}'s output, float32",
        confusion=conf,
        n_train_images=len(y_train),
        n_val_images=len(y_val),
        n_selection_images=int(len(sel_idx)),
    )
    save_probe(out_dir / "best", member_state(sweep, best), meta)
    epoch_rows = units.to_pct(epoch_table(sweep), ["val_top1_acc"])
    epoch_rows.to_csv(out_dir / "epochs.csv", index=False)
    figures.epoch_chart(
        epoch_rows,
        out_dir / "epochs",
        metric="val_top1_acc_pct",
        metric_title="val top-1 accuracy",
        best_slug=member.slug,
        random_weights=stores.random_weights,
    )
    figures.sweep_chart(
        table,
        out_dir / "sweep",
        metric="top1_acc_pct",
        metric_title=f"val top-1 accuracy (block {stores.block})",
        random_weights=stores.random_weights,
    )
    figures.confusion_chart(
        conf,
        names,
        out_dir / "confusion",
        random_weights=stores.random_weights,
        title=f"Val confusion, best probe (lr {member.lr:g}, wd {member.weight_decay:g}); top-1 {best_metrics['top1_acc']:.1%}",
    )
    t3 = time.perf_counter()
    return {
        "probe": "cls",
        "out": str(out_dir),
        "best": meta["member"],
        "metrics": best_metrics,
        "selected_on": where,
        "selection_top1_acc": selection_record["best_selection_top1_acc"],
        "val_top1_acc": selection_record["best_val_top1_acc"],
        "chance": 1.0 / c,
        "n_members": len(members),
        "random_weights": stores.random_weights,
        "device": device_name,
        "threads": threads,
        "seconds": {**meta["seconds"], "outputs": round(t3 - t2, 2)},
    }
