"""Semantic-segmentation linear probe on cached patch tokens (saev contrib.semseg, from the cache).

Reads only the activation store (train and val splits of ``probes.seg.cache``); no image is
decoded for training or evaluation and no ViT block runs (the backbone is loaded for its
final norm only). Outputs go to ``<results>/probes/seg/<model>/<dataset>/``.

Input
    ``final_norm(output of block layer)`` at the patch tokens, float32 ([P, D] per image).
    One ``Linear(D, C)`` per sweep member, C = the store's class count incl. 0 = "other".

Training data (train split)
    Every patch token with its ``patch_label`` (majority pixel label of the patch), except:
    patches labelled 0 ("other"/unlabelled) unless ``train_on_other``, and patches whose
    ``patch_purity`` (fraction of the patch's pixels carrying its majority label) is below
    ``min_purity`` (default 0.5), and bad images. Excluded patches get IGNORE_LABEL and are
    dropped from the stream. Each epoch reads the store once for the whole sweep (all
    members train on the same batches, :func:`pipeline.probes.linear.fit_sweep`): chunks in a
    random order seeded ``seed + epoch``, rows mixed in a ``shuffle_buffer``-row buffer.

Evaluation (val split, every member, one read of the store)
    - patch level: argmax of the patch logits vs ``patch_label``;
    - pixel level: logits ``[B, P, C]`` → ``[B, C, rows, cols]`` → bilinear upsampling
      (``F.interpolate``, ``align_corners=False``) to the cropped mask size → argmax vs
      ``pixel_label`` (the centre-cropped mask the image was cut to).
    Predictions are the argmax over the real classes 1 … C-1 (class 0 is never predicted)
    unless ``train_on_other``, when all C classes compete.

Metrics, by ``protocol`` (:data:`pipeline.metrics.SEG_PROTOCOLS`): ``ade20k`` (the default,
as mmseg with ``reduce_zero_label``) ignores pixels/patches whose TRUE label is 0 and scores
classes 1 … C-1; ``zero_is_class`` (needs ``train_on_other``) scores all C classes with
nothing ignored. mIoU averages IoU over the scored classes present in the ground truth
(``metrics.mean_iou``, definition ``present_in_truth``); accuracy is the fraction of scored
pixels predicted right (``metrics.pixel_accuracy``). The protocol and mIoU definition are
recorded in ``sweep.csv``, ``best.json`` and ``per_class_iou.csv``.

Model selection (held out, no peeking at val): ``selection_fraction`` of the valid train
images (seeded ``selection_seed``; at least ``selection_min_images``, at most half:
``template.n_held_out``) are held out of training; every member is scored on them and the best
is the one with the highest pixel-level mIoU there (members that tie: the lowest cross-entropy
on their training patches, ``selection_loss``; then the first in the sweep). Val metrics are then reported for every member and for the chosen one; both figures
are printed and stored (``selection_*`` and val columns). ``selection_fraction: 0`` selects
on val, as saev did (the reported figure is then optimistic).

Per-epoch curve: after every epoch, every member's val mIoU at patch level (one more read of
the val store per epoch, no upsampling) goes into ``epochs.csv`` (``val_patch_miou_pct``) with the epoch's mean
training loss (one row per epoch and member) and ``epochs.{html,png,svg}``.

Outputs (tables in percent, ``_pct`` columns: :mod:`pipeline.units`; ``best.json`` in fractions):
``sweep.csv`` (one row per member: lr, weight decay, train loss, patch- and
pixel-level mIoU / accuracy / mean class accuracy on val, ``selection_pixel_miou_pct``, ``selection_loss``,
``protocol``, ``miou_definition``, ``random_weights``), ``best.safetensors``
+ ``best.json`` (hyper-parameters, val metrics, selection metrics and the held-out image ids, the stores and their config hashes, layer,
class names, random_weights, device), ``per_class_iou.csv`` (best member, pixel level),
``sweep.{html,png,svg}``, ``per_class_iou.{html,png,svg}`` and ``examples.png`` (val
images | truth | prediction; the images themselves are read from the dataset only for the
picture, with the store's preprocessing geometry).

Dimension key: M members, N rows, B images in a chunk, P patches, D width, C classes,
H/W mask pixels.
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
from pipeline.data import load_rgb, resize_crop, store_image_paths, store_preprocess
from pipeline.layout import ProbeFiles, probe_files
from pipeline.probes import figures
from pipeline.probes.features import (
    FinalNorm,
    ProbeDataError,
    ProbeStores,
    check_label_range,
    patch_chunks,
    patch_train_epochs,
    seg_train_labels,
)
from pipeline.probes.linear import IGNORE_LABEL, ProbeMember, ProbeSweep, ProbeTrainConfig, fit_sweep, predict_classes
from pipeline.probes.template import ProbeResults, ProbeRun, ProbeTemplate, n_held_out, run_probe

log = logging.getLogger(__name__)

__all__ = [
    "OUTPUT_FILES",
    "PROTOCOL",
    "SEG",
    "SegEvaluation",
    "SegProbe",
    "SegResults",
    "SegTrainingData",
    "evaluate_members",
    "evaluate_seg",
    "fit_seg_sweep",
    "protocol_text",
    "run_seg_probe",
    "seg_metrics",
    "seg_sweep_rows",
    "seg_training_data",
    "selection_images",
    "upsampled_predictions",
    "write_per_class_iou",
]

MIOU_DEFINITION = "present_in_truth"


def protocol_text(protocol: str, miou_definition: str = MIOU_DEFINITION) -> str:
    """One line naming the protocol, the mIoU definition and the pixel-level rule (stored in outputs)."""
    return (
        f"{protocol}: {metrics.SEG_PROTOCOLS[protocol]}; mIoU {miou_definition}: {metrics.MIOU_DEFINITIONS[miou_definition]}; "
        "pixel level = bilinear upsampling (align_corners=False) of patch logits to the cropped mask"
    )


PROTOCOL = protocol_text("ade20k")
OUTPUT_FILES = probe_files("seg")  # what run_seg_probe writes (pipeline.layout owns the list)
# Bytes of upsampled float logits held at once during pixel-level evaluation.
UPSAMPLE_BUDGET = 256 * 2**20


@dataclass
class SegEvaluation:
    """Every member's confusion matrices (int64 [M, C, C], under the protocol) and figure material."""

    patch_conf_MCC: np.ndarray
    pixel_conf_MCC: np.ndarray
    pixel_count_C: np.ndarray  # true val pixels per class (class 0 included, although ignored)
    figure_images: np.ndarray  # store indices of the first valid val images
    figure_true_KHW: np.ndarray
    figure_pred_MKHW: np.ndarray
    loss_M: np.ndarray | None = None  # mean cross-entropy over the `loss_labels_NP` patches, when given


def upsampled_predictions(
    logits_MBPC: torch.Tensor, grid: tuple[int, int], size: tuple[int, int], train_on_other: bool
) -> np.ndarray:
    """Pixel predictions ``[M, B, H, W]`` (uint8, or int32 beyond 256 classes): bilinear upsampling of each patch-logit map, then argmax.

    Works in slices so at most ``UPSAMPLE_BUDGET`` bytes of upsampled logits exist at once.
    """
    m, b, p, c = logits_MBPC.shape
    offset = 0 if train_on_other else 1
    maps = logits_MBPC[..., offset:]  # interpolation is per channel, so dropping class 0 first is exact
    c_used = c - offset
    maps = maps.permute(0, 1, 3, 2).reshape(m * b, c_used, *grid)
    step = max(1, UPSAMPLE_BUDGET // (c_used * size[0] * size[1] * 4))
    out = torch.empty((m * b, *size), dtype=torch.uint8 if c <= 256 else torch.int32)
    for s in range(0, m * b, step):
        up = F.interpolate(maps[s : s + step], size=size, mode="bilinear", align_corners=False)
        out[s : s + step] = (up.argmax(dim=1) + offset).to(out.dtype).cpu()
    return out.view(m, b, *size).numpy()


def evaluate_seg(
    sweep: ProbeSweep,
    stores: ProbeStores,
    norm: FinalNorm,
    *,
    train_on_other: bool,
    n_figure: int = 0,
    protocol: str = "ade20k",
    reader=None,
    images_N: np.ndarray | None = None,
    loss_labels_NP: np.ndarray | None = None,
) -> SegEvaluation:
    """Patch- and pixel-level confusion matrices of every member (one pass over the store).

    ``reader`` defaults to the val store; ``images_N`` (bool [N]) restricts the evaluation to
    those images (the held-out selection part of train). ``loss_labels_NP`` (int64 [N, P],
    IGNORE_LABEL for patches left out): every member's mean cross-entropy on those patches too
    (``loss_M``), the loss the probe was trained on.
    """
    val = stores.val if reader is None else reader
    c, m = stores.n_classes, sweep.n_members
    patch_conf = np.zeros((m, c, c), dtype=np.int64)
    pixel_conf = np.zeros((m, c, c), dtype=np.int64)
    pixel_count = np.zeros(c, dtype=np.int64)
    patch_label_NP = val.labels("patch_label").astype(np.int64)
    check_label_range(val, "patch_label", patch_label_NP[val.valid], np.flatnonzero(val.valid))
    loss_sum_M, n_loss = np.zeros(m), 0
    fig_images, fig_true, fig_pred = [], [], []
    chunks = (
        patch_chunks(val, stores.layer, norm)
        if images_N is None
        # only the chunks holding those images
        else (
            (image_B, norm(acts_BPD))
            for image_B, acts_BPD in val.iter_chunks(stores.layer, tokens="patches", images=images_N)
        )
    )
    for image_B, x_BPD in chunks:
        if images_N is not None:
            keep_B = images_N[image_B]
            image_B, x_BPD = image_B[keep_B], x_BPD[torch.from_numpy(keep_B).to(x_BPD.device)]
        b, p, d = x_BPD.shape
        pixel_BHW = val.pixel_labels(int(image_B[0]), int(image_B[-1]) + 1)[image_B - image_B[0]].astype(np.int64)
        check_label_range(val, "pixel_label", pixel_BHW, image_B)
        with torch.no_grad():
            logits_MBPC = sweep(x_BPD.reshape(b * p, d)).reshape(m, b, p, c)
            patch_pred_MBP = predict_classes(logits_MBPC, real_classes_only=not train_on_other).cpu().numpy()
            pixel_pred_MBHW = upsampled_predictions(logits_MBPC, val.grid, pixel_BHW.shape[1:], train_on_other)
            if loss_labels_NP is not None:
                y_N = torch.from_numpy(loss_labels_NP[image_B].reshape(-1)).to(logits_MBPC.device)
                keep = y_N != IGNORE_LABEL
                logits_MNC = logits_MBPC.reshape(m, b * p, c)[:, keep].float()
                y_MN = y_N[keep].expand(m, -1)
                loss_sum_M += F.cross_entropy(logits_MNC.transpose(1, 2), y_MN, reduction="none").sum(1).cpu().numpy()
                n_loss += int(keep.sum())
        truth_BP = patch_label_NP[image_B]
        ignore = 0 if protocol == "ade20k" else None  # metrics.SEG_PROTOCOLS
        patch_conf += metrics.confusion_matrices(truth_BP, patch_pred_MBP, c, ignore=ignore)
        pixel_conf += metrics.confusion_matrices(pixel_BHW, pixel_pred_MBHW, c, ignore=ignore)
        pixel_count += np.bincount(pixel_BHW.reshape(-1), minlength=c)
        take = max(0, n_figure - sum(len(i) for i in fig_images))
        if take:
            fig_images.append(image_B[:take])
            fig_true.append(pixel_BHW[:take])
            fig_pred.append(pixel_pred_MBHW[:, :take].astype(np.int64))
    h, w = val.group["pixel_label"].shape[1:]
    return SegEvaluation(
        patch_conf_MCC=patch_conf,
        pixel_conf_MCC=pixel_conf,
        pixel_count_C=pixel_count,
        figure_images=np.concatenate(fig_images) if fig_images else np.zeros(0, dtype=np.int64),
        figure_true_KHW=np.concatenate(fig_true) if fig_true else np.zeros((0, h, w), dtype=np.int64),
        figure_pred_MKHW=np.concatenate(fig_pred, axis=1) if fig_pred else np.zeros((m, 0, h, w), dtype=np.int64),
        loss_M=None if loss_labels_NP is None else loss_sum_M / max(n_loss, 1),
    )


def val_patch_miou(stores: ProbeStores, norm: FinalNorm, *, train_on_other: bool, protocol: str = "ade20k"):
    """``sweep → [M]`` val mIoU at patch level (the per-epoch curve; one read of the val store,
    no upsampling), with the protocol of :func:`evaluate_seg`."""
    val, c = stores.val, stores.n_classes
    patch_label_NP = val.labels("patch_label").astype(np.int64)
    ignore, exclude = (0 if protocol == "ade20k" else None), metrics.HEADLINE_MIOU_EXCLUDE

    def score(sweep: ProbeSweep) -> np.ndarray:
        conf = np.zeros((sweep.n_members, c, c), dtype=np.int64)
        for image_B, x_BPD in patch_chunks(val, stores.layer, norm):
            b, p, d = x_BPD.shape
            with torch.no_grad():
                pred_MBP = predict_classes(
                    sweep(x_BPD.reshape(b * p, d)).reshape(sweep.n_members, b, p, c),
                    real_classes_only=not train_on_other,
                )
            conf += metrics.confusion_matrices(patch_label_NP[image_B], pred_MBP.cpu().numpy(), c, ignore=ignore)
        return np.array([metrics.mean_iou_as(conf_k, MIOU_DEFINITION, exclude=exclude) for conf_k in conf])

    return score


def seg_metrics(
    patch_conf: np.ndarray, pixel_conf: np.ndarray, protocol: str = "ade20k", miou_definition: str = MIOU_DEFINITION
) -> dict[str, float]:
    """One member's metrics from its confusion matrices (built under ``protocol``).

    ``*_miou`` (the headline) averages classes 1 … C-1 under both protocols
    (:data:`pipeline.metrics.HEADLINE_MIOU_EXCLUDE`), so a ``zero_is_class`` figure compares with
    an ADE20K one; ``*_miou_with_0`` is ``zero_is_class``'s mean over all C classes, background
    included (NaN under ``ade20k``, which never scores class 0). Accuracies follow the protocol
    (``ade20k`` leaves truth 0 out, ``zero_is_class`` counts it)."""
    exclude = metrics.protocol_exclude(protocol)
    out = {}
    for level, conf in (("patch", patch_conf), ("pixel", pixel_conf)):
        acc_C = np.delete(metrics.per_class_accuracy(conf), list(exclude))
        out[f"{level}_miou"] = metrics.mean_iou_as(conf, miou_definition, exclude=metrics.HEADLINE_MIOU_EXCLUDE)
        out[f"{level}_acc"] = metrics.pixel_accuracy(conf, exclude=exclude)
        out[f"{level}_mean_class_acc"] = float(np.nanmean(acc_C)) if np.isfinite(acc_C).any() else float("nan")
        out[f"{level}_miou_with_0"] = (
            float("nan") if exclude else metrics.mean_iou_as(conf, miou_definition, exclude=())
        )
    return out


def selection_images(reader, y_NP: np.ndarray, fraction: float, seed: int, min_images: int = 1) -> np.ndarray:
    """bool [N]: the held-out selection images of the train store (seeded; empty when fraction is 0).

    Drawn from the valid images that have a usable training patch:
    :func:`~pipeline.probes.template.n_held_out` of them.
    """
    usable = np.flatnonzero(reader.valid & (y_NP != IGNORE_LABEL).any(axis=1))
    out = np.zeros(reader.n_images, dtype=bool)
    if fraction <= 0:
        return out
    if usable.size < 2:
        raise ProbeDataError(
            f"{reader.path}: {usable.size} usable train image(s): cannot hold out a selection part "
            "(set probes.seg.selection_fraction: 0 to select on val)"
        )
    n = n_held_out(usable.size, fraction, min_images)
    out[np.random.default_rng(seed).choice(usable, size=n, replace=False)] = True
    return out


def _example_images(stores: ProbeStores, image_idx: np.ndarray) -> list[np.ndarray]:
    """The val images as uint8 [crop, crop, 3], read from the dataset with the store's geometry.

    Only for the figure. If the dataset cannot be read, a grey placeholder stands in.
    """
    attrs = stores.val.attrs
    crop = int(attrs["image_size"])
    try:
        pre = store_preprocess(attrs)
        by_id = store_image_paths(attrs)
    except Exception as err:  # noqa: BLE001 - only a picture: say so and go on
        log.warning("examples.png: cannot list the dataset (%s); drawing placeholders", err)
        by_id, pre = {}, None
    ids = stores.val.image_ids
    out = []
    for i in image_idx:
        path = by_id.get(str(ids[i]))
        try:
            out.append(np.asarray(resize_crop(load_rgb(path), pre), dtype=np.uint8))
        except Exception as err:  # noqa: BLE001
            if path is not None:
                log.warning("examples.png: cannot read %s (%s); drawing a placeholder", path, err)
            out.append(np.full((crop, crop, 3), 160, dtype=np.uint8))
    return out


@dataclass
class SegTrainingData:
    """The train split as the sweep sees it (:func:`seg_training_data`)."""

    norm: FinalNorm
    y_fit_NP: np.ndarray  # int64 [N, P]: training labels, IGNORE_LABEL for excluded patches and held-out images
    held_out_N: np.ndarray  # bool [N]: the held-out selection images
    y_held_out_NP: np.ndarray  # int64 [N, P]: the training labels of the held-out images only (their loss)
    n_train: int  # training patches (labels not IGNORE_LABEL)

    @property
    def held_out_images(self) -> np.ndarray:
        """Store indices of the held-out selection images."""
        return np.flatnonzero(self.held_out_N)


def seg_training_data(cfg: Config, pc, stores: ProbeStores, device: torch.device) -> SegTrainingData:
    """Reads train's ``patch_label`` / ``patch_purity``, draws the held-out selection images and
    loads the final norm (the backbone, checked against the store)."""
    y_NP = seg_train_labels(stores.train, min_purity=pc.min_purity, train_on_other=pc.train_on_other)
    held_out_N = selection_images(stores.train, y_NP, pc.selection_fraction, pc.selection_seed, pc.selection_min_images)
    y_fit_NP, y_held_out_NP = y_NP.copy(), y_NP.copy()
    y_fit_NP[held_out_N] = IGNORE_LABEL
    y_held_out_NP[~held_out_N] = IGNORE_LABEL
    norm = FinalNorm(cfg, stores, device)
    return SegTrainingData(norm, y_fit_NP, held_out_N, y_held_out_NP, int((y_fit_NP != IGNORE_LABEL).sum()))


def fit_seg_sweep(
    pc, stores: ProbeStores, data: SegTrainingData, members, *, device: torch.device, progress: bool
) -> ProbeSweep:
    """Fits every member on train's patches (one read of the train store per epoch); after each
    epoch every member's val mIoU at patch level goes into the epoch history (``val_patch_miou``)."""
    train_cfg = ProbeTrainConfig(epochs=pc.epochs, batch_size=pc.batch_size, seed=pc.seed)
    epochs = patch_train_epochs(
        stores.train,
        pc.layer,
        data.y_fit_NP,
        data.norm,
        batch_size=pc.batch_size,
        buffer_size=pc.shuffle_buffer,
        seed=pc.seed,
    )
    log.info(
        "seg probe: %d members, %d training patches (%d images held out for selection), %d epochs, device %s",
        len(members),
        data.n_train,
        int(data.held_out_N.sum()),
        pc.epochs,
        device,
    )
    val_patch = val_patch_miou(stores, data.norm, train_on_other=pc.train_on_other, protocol=pc.protocol)
    return fit_sweep(
        epochs,
        d_model=stores.d_model,
        n_classes=stores.n_classes,
        members=members,
        cfg=train_cfg,
        device=device,
        progress=progress,
        steps_per_epoch=-(-data.n_train // pc.batch_size),
        on_epoch=lambda epoch, sw: {"val_patch_miou": val_patch(sw)},
    )


def evaluate_members(
    pc, stores: ProbeStores, data: SegTrainingData, sweep: ProbeSweep
) -> tuple[SegEvaluation, SegEvaluation]:
    """Every member on val (with the figure's images) and on the held-out train images (the
    val evaluation again when none are held out): ``(val, selection)``."""
    ev = evaluate_seg(
        sweep, stores, data.norm, train_on_other=pc.train_on_other, n_figure=pc.n_figure_images, protocol=pc.protocol
    )
    if not data.held_out_N.any():
        return ev, ev
    sel = evaluate_seg(
        sweep,
        stores,
        data.norm,
        train_on_other=pc.train_on_other,
        protocol=pc.protocol,
        reader=stores.train,
        images_N=data.held_out_N,
        loss_labels_NP=data.y_held_out_NP,
    )
    return ev, sel


def seg_sweep_rows(sweep: ProbeSweep, ev: SegEvaluation, sel: SegEvaluation, protocol: str) -> list[dict[str, float]]:
    """One row per member (fractions): ``train_loss``, the val metrics (:func:`seg_metrics`),
    ``selection_pixel_miou`` (pixel-level mIoU on the selection images) and ``selection_loss``
    (their training patches' mean cross-entropy; NaN when selecting on val)."""
    rows = []
    for k in range(sweep.n_members):
        row = {"train_loss": float(sweep.train_loss_M[k])}
        row.update(seg_metrics(ev.patch_conf_MCC[k], ev.pixel_conf_MCC[k], protocol))
        row["selection_pixel_miou"] = seg_metrics(sel.patch_conf_MCC[k], sel.pixel_conf_MCC[k], protocol)["pixel_miou"]
        row["selection_loss"] = float(sel.loss_M[k]) if sel.loss_M is not None else float("nan")
        rows.append(row)
    return rows


def write_per_class_iou(
    conf_CC: np.ndarray, pixel_count_C: np.ndarray, stores: ProbeStores, protocol: str, files: ProbeFiles
) -> tuple[pd.DataFrame, np.ndarray]:
    """Writes ``per_class_iou.csv`` (the best member's pixel-level IoU per class, in percent;
    NaN for classes the protocol ignores; ``in_miou``: in the headline mIoU, classes 1 … C-1
    present in the truth); returns that table and ``scored_C`` (bool [C]: the classes the
    protocol scores)."""
    iou_C = metrics.iou_per_class(conf_CC)
    class_C = np.arange(stores.n_classes)
    scored_C = ~np.isin(class_C, metrics.protocol_exclude(protocol))
    headline_C = ~np.isin(class_C, metrics.HEADLINE_MIOU_EXCLUDE)
    per_class = pd.DataFrame(
        {
            "class_id": np.arange(stores.n_classes),
            "class_name": list(stores.class_names),
            "iou": iou_C,
            "n_pixels": pixel_count_C,
            "in_miou": scored_C & headline_C & (conf_CC.sum(axis=1) > 0),
            "protocol": protocol,
            "random_weights": stores.random_weights,
        }
    )
    per_class.loc[~scored_C, "iou"] = np.nan  # ignored under the protocol (ade20k: class 0), never scored
    per_class = units.to_pct(per_class, ["iou"])
    atomic.write_csv(per_class, files.own("per_class_iou.csv"), index=False)
    return per_class, scored_C


@dataclass(frozen=True)
class SegResults:
    """What the seg tables and figures need of the evaluation: every member on val (with the
    figure's images) and on the selection images."""

    val: SegEvaluation
    selection: SegEvaluation


class SegProbe(ProbeTemplate[SegTrainingData, SegResults]):
    """The segmentation probe's steps (see the module docstring) in the probe template."""

    kind = "seg"
    metric = "pixel_miou"
    metric_title = "val mIoU, pixel level"
    epoch_metric = "val_patch_miou"
    epoch_metric_title = "val mIoU, patch level"

    def data(self, run: ProbeRun) -> SegTrainingData:
        return seg_training_data(run.cfg, run.pc, run.stores, run.device)

    def fit(self, run: ProbeRun, data: SegTrainingData, members) -> ProbeSweep:
        return fit_seg_sweep(run.pc, run.stores, data, members, device=run.device, progress=run.progress)

    def evaluate(self, run: ProbeRun, data: SegTrainingData, sweep: ProbeSweep) -> ProbeResults[SegResults]:
        ev, sel = evaluate_members(run.pc, run.stores, data, sweep)
        return ProbeResults(seg_sweep_rows(sweep, ev, sel, run.pc.protocol), SegResults(ev, sel))

    def columns(self, run: ProbeRun) -> dict[str, Any]:
        return {"protocol": run.pc.protocol, "miou_definition": MIOU_DEFINITION}

    def tables(
        self, run: ProbeRun, data: SegTrainingData, results: ProbeResults[SegResults], best: int
    ) -> tuple[pd.DataFrame, np.ndarray]:
        ev = results.detail.val
        return write_per_class_iou(ev.pixel_conf_MCC[best], ev.pixel_count_C, run.stores, run.pc.protocol, run.files)

    def meta(self, run: ProbeRun, data: SegTrainingData, results: ProbeResults[SegResults], best: int) -> dict:
        return {
            "miou_definition": MIOU_DEFINITION,
            "protocol": protocol_text(run.pc.protocol),
            "input": f"final_norm(output of block {run.stores.block}) at the patch tokens, float32",
            "n_train_patches": data.n_train,
            "n_val_images": int(run.stores.val.valid.sum()),
        }

    def figures(
        self,
        run: ProbeRun,
        results: ProbeResults[SegResults],
        best: int,
        *,
        member: ProbeMember,
        tables: tuple[pd.DataFrame, np.ndarray],
        best_metrics: dict[str, float],
    ) -> None:
        """``per_class_iou.*`` (scored classes, best member) and ``examples.png``."""
        per_class, scored_C = tables
        stores, pc = run.stores, run.pc
        figures.per_class_chart(
            per_class.loc[scored_C],
            run.files.own("per_class_iou"),
            value="iou_pct",  # classes the protocol scores
            title=f"Val IoU per class ({pc.protocol}), best probe (lr {member.lr:g}, wd {member.weight_decay:g}); mIoU {best_metrics['pixel_miou']:.1%}",
            random_weights=stores.random_weights,
            value_title="IoU, pixel level (%)",
        )
        _examples(
            stores,
            results.detail.val,
            best,
            run.files.own("examples.png"),
            title=f"Linear probe, {pc.cache.model} block {stores.block} on {pc.cache.dataset} val",
        )

    def summary(self, run: ProbeRun) -> dict[str, Any]:
        return {"protocol": run.pc.protocol}


SEG = SegProbe()


def run_seg_probe(cfg: Config, *, out_dir: Path | None = None, progress: bool = True, ctx=None) -> dict:
    """Train the sweep on the train split, evaluate on val, write the outputs; return a summary
    (:func:`pipeline.probes.template.run_probe` of :class:`SegProbe`). ``ctx``: the step's
    RunContext (default: one started here)."""
    return run_probe(SEG, cfg, out_dir=out_dir, progress=progress, ctx=ctx)


def _examples(stores: ProbeStores, ev: SegEvaluation, best: int, path: Path, *, title: str) -> None:
    if len(ev.figure_images) == 0:
        # n_figure_images: 0 still writes the declared file: a note instead of images.
        img = np.full((32, 32, 3), 255, dtype=np.uint8)
        figures.segmentation_figure(
            [img],
            [np.zeros((32, 32), np.int64)],
            [np.zeros((32, 32), np.int64)],
            stores.class_names,
            path,
            random_weights=stores.random_weights,
            title=title + " (n_figure_images: 0)",
        )
        return
    images = _example_images(stores, ev.figure_images)
    figures.segmentation_figure(
        images,
        list(ev.figure_true_KHW),
        list(ev.figure_pred_MKHW[best]),
        stores.class_names,
        path,
        random_weights=stores.random_weights,
        title=title,
    )
