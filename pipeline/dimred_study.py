"""The STEGO study (stego-studies, Koenig et al., CVPR-W 2023): segmentation left after projection.

For one cache (``dimred.cache``: a segmentation dataset), reads only the activation store
(train and val splits; the backbone is loaded for its final norm only) and asks, for each
reduction method x dim and for the full features, how well (a) a linear probe and (b) an
unsupervised cluster probe segment the val split. Their Figures 3 and 4.

Steps (see :mod:`pipeline.dimred` for the sampling, standardisation and projections)
    1. One seeded, chunk-wise sample of ``n_fit_tokens`` TRAIN patch tokens,
       ``final_norm(output of block layer)``, float32.
    2. Standardise with the sample's per-dim mean/std (the SAME statistics for train and val;
       stego-studies re-standardised every batch with its own statistics, we do not).
    3. Fit each reduction once at the largest dim; the dim-d features are the first d
       components of that one fit (PCA: top d; random projection: first d rows x sqrt(K/d)).
    4. Per variant (method, dim) and for ``full`` (the standardised D-dim features):
       - linear probe: one ``Linear(d, C)`` (:func:`pipeline.probes.linear.fit_sweep`, one
         member, AdamW lr ``probe_lr``, weight decay 0, ``probe_epochs`` epochs, batches of
         ``PROBE_BATCH_SIZE`` from the sample held in memory) on the sample's tokens with a
         usable label (the seg probe's rule: label 0 and purity < 0.5 excluded);
       - cluster probe: spherical k-means (:mod:`pipeline.cluster_probe`) with k = C - 1 (the
         real classes) on ALL the sample's tokens (no labels).
       On the CPU, training steps smaller than ``SMALL_STEP_FLOPS`` (the demo's) run on one
       thread: for such tiny matmuls thread synchronisation dominates.
    5. One pass over the val store evaluates every variant and both probes, at patch level
       (vs ``patch_label``) and pixel level (patch logits / cosine similarities upsampled
       bilinearly to the cropped mask, then argmax, as the seg probe does, vs
       ``pixel_label``). The linear probe predicts the real classes 1 … C-1. Clusters are
       matched to classes 1 … C-1 by the Hungarian algorithm on the VALIDATION pixel-level
       confusion (STEGO's "unsupervised" metrics); the same mapping scores the patch level.
    6. Dense CRF (``dimred.crf``, on by default): for the ``full`` features, the pixel-level
       probabilities of both probes (linear: softmax of the upsampled logits over the real
       classes; cluster: softmax(2 · upsampled cosine similarity), STEGO's eval-time
       ``alpha``) are refined with STEGO's CRF settings by the ``dimred.crf_backend`` of
       :data:`pipeline.crf.CRF_BACKENDS` (``auto``: pydensecrf, STEGO's own CRF, when it can be
       imported; else the windowed torch approximation, with a warning) on the val image as
       the model saw it (read from the dataset with the store's resize / crop), then scored
       like the rest; the cluster probe's CRF output gets its own Hungarian match. The
       ``crf`` column names the backend that ran.
    Metrics: protocol ``ade20k`` (true label 0, "unlabelled", ignored; classes 1 … C-1
    scored) and STEGO's mIoU (:data:`pipeline.metrics.MIOU_DEFINITIONS` ``stego``: every
    scored class with a defined IoU, a class only predicted counts 0); accuracy over the
    non-ignored pixels. All from :mod:`pipeline.metrics`; every row names both.

Outputs (``<results>`` = ``paths.results``)
    ``<results>/dimred.csv``: one row per (method, dim, probe), plus ``method = full`` rows:
    ``method, dim, probe, miou_pct, accuracy_pct`` (pixel level, percent as every table:
    :mod:`pipeline.units`), ``miou_crf_pct, accuracy_crf_pct`` (the same after the dense CRF;
    ``full`` rows only, NaN elsewhere), ``crf`` (the CRF backend that made them: ``pydensecrf``
    or ``torch_window``; empty elsewhere), ``protocol, miou_definition``, ``patch_miou_pct,
    patch_accuracy_pct, mean_class_accuracy_pct``, ``n_fit_tokens`` (tokens the reductions were
    fitted on), ``n_train_tokens`` (tokens the probe trained on), ``k``, ``train_loss`` /
    ``kmeans_objective``, ``explained_variance_pct`` (PCA, cumulative at d), ``layer, block,
    random_weights``.
    ``<results>/dimred/linear.{html,png,svg}``, ``cluster.{html,png,svg}``: val mIoU vs dim
    (log x), one line per method, the full-feature baseline as a dashed rule (Figure 4).
    ``<results>/dimred/pca_variance.{html,png,svg}`` (+ ``pca_variance.csv``: ``components``,
    ``explained_variance_ratio_pct``, ``cumulative_pct``): cumulative explained variance vs
    number of components (Figure 3), when ``pca`` is a method.
    ``<results>/dimred/projections.{safetensors,json}``: the standardisation and the fitted
    projections (:func:`pipeline.dimred.save_projections`).

Dimension key: N rows, B images in a chunk, P patches, D width, d reduced dim, C classes,
K clusters, M variants.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import altair as alt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

import pipeline
from pipeline import atomic, cluster_probe, crf, dimred, layout, metrics, units
from pipeline.config import Config, ConfigError, DimredConfig, schema_default, to_jsonable
from pipeline.context import RunContext
from pipeline.data import store_image_loader
from pipeline.plots import OKABE_ITO, save_chart, title_with_note
from pipeline.probes.features import (
    FinalNorm,
    ProbeStores,
    check_label_range,
    in_memory_epochs,
    open_probe_stores,
    patch_chunks,
    seg_train_labels,
    store_record,
)
from pipeline.probes.linear import IGNORE_LABEL, ProbeMember, ProbeSweep, ProbeTrainConfig, fit_sweep, predict_classes
from pipeline.probes.seg import protocol_text, seg_metrics, upsampled_predictions
from pipeline.progress import Progress
from pipeline.provenance import record
from pipeline.runtime import describe_device

log = logging.getLogger(__name__)

__all__ = [
    "CHART_STEMS",
    "PROBE_BATCH_SIZE",
    "Variant",
    "dimred_csv",
    "dimred_dir",
    "output_files",
    "run_dimred_study",
]

MIN_PURITY = schema_default("probes/seg/min_purity")  # probes.seg's default: patches below it are not trained on
PROBE_BATCH_SIZE = 1024
PROBE_WEIGHT_DECAY = 0.0
KMEANS_N_INIT = 3
KMEANS_MAX_ITER = 100
SMALL_STEP_FLOPS = 1e8  # CPU steps below this run on one thread (see _cpu_threads_for)
CHART_STEMS = ("linear", "cluster", "pca_variance")
PROBES = ("linear", "cluster")
PROTOCOL_NAME = "ade20k"
MIOU_DEFINITION = "stego"  # the STEGO study scores with STEGO's mIoU
PROTOCOL = protocol_text(PROTOCOL_NAME, MIOU_DEFINITION)
CLUSTER_ALPHA = 2.0  # STEGO's cluster probe at evaluation: softmax(2 * cosine similarity)
PCT_COLUMNS = (
    "miou",
    "accuracy",
    "miou_crf",
    "accuracy_crf",
    "patch_miou",
    "patch_accuracy",
    "mean_class_accuracy",
    "explained_variance",
)  # fractions written in percent (pipeline.units)


# ---- where ---------------------------------------------------------------------------------


# pipeline.layout owns the study's paths and file list (what the Snakemake rule declares)
dimred_csv, dimred_dir, output_files = layout.dimred_csv, layout.dimred_dir, layout.dimred_files


# ---- variants ------------------------------------------------------------------------------


@dataclass
class Variant:
    """One feature set: ``full`` (standardised, D dims) or a reduction at dim d."""

    method: str
    dim: int
    reduction: Any = None  # None for full

    @property
    def name(self) -> str:
        return f"{self.method}@{self.dim}"

    def features(self, x_std_ND: Tensor) -> Tensor:
        return x_std_ND if self.reduction is None else self.reduction.transform(x_std_ND, self.dim)


def _variants(reductions: dict[str, Any], dims: tuple[int, ...], d_model: int) -> list[Variant]:
    out = [Variant("full", d_model)]
    for method, red in reductions.items():
        out += [Variant(method, d, red) for d in dimred.reduction_dims(red, dims)]
    return out


def _all_features(variants: list[Variant], x_std_ND: Tensor) -> list[Tensor]:
    """Every variant's features of the same rows; each linear reduction is applied once, then sliced."""
    full: dict[str, Tensor] = {}
    out = []
    for v in variants:
        if v.reduction is None:
            out.append(x_std_ND)
        elif isinstance(v.reduction, dimred.LinearReduction):
            if v.method not in full:
                full[v.method] = v.reduction.transform_full(x_std_ND)
            out.append(v.reduction.from_full(full[v.method], v.dim))
        else:
            out.append(v.features(x_std_ND))
    return out


# ---- training ------------------------------------------------------------------------------


@dataclass
class Fitted:
    variant: Variant
    probe: ProbeSweep
    centroids_KD: Tensor
    kmeans: cluster_probe.KMeansResult


@contextlib.contextmanager
def _cpu_threads_for(flops_per_step: float, device: torch.device):
    """Run small CPU steps single-threaded: below SMALL_STEP_FLOPS per step, thread start-up and
    synchronisation cost more than they save (many times more when the cores are shared)."""
    if device.type != "cpu" or flops_per_step >= SMALL_STEP_FLOPS:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit_variant(
    v: Variant,
    x_std_ND: Tensor,
    y_N: np.ndarray,
    *,
    n_classes: int,
    epochs: int,
    lr: float,
    seed: int,
    device: torch.device,
) -> Fitted:
    z_ND = v.features(x_std_ND)
    n, d = z_ND.shape
    rows = torch.from_numpy(np.flatnonzero(y_N != IGNORE_LABEL)).to(z_ND.device)
    z_train = z_ND.index_select(0, rows)
    y_train = torch.from_numpy(y_N[y_N != IGNORE_LABEL].astype(np.int64))
    with _cpu_threads_for(6.0 * PROBE_BATCH_SIZE * d * n_classes, device):
        probe = fit_sweep(
            in_memory_epochs(z_train, y_train, batch_size=PROBE_BATCH_SIZE, seed=seed),
            d_model=d,
            n_classes=n_classes,
            members=(ProbeMember(lr, PROBE_WEIGHT_DECAY),),
            cfg=ProbeTrainConfig(epochs=epochs, batch_size=PROBE_BATCH_SIZE, seed=seed),
            device=device,
            progress=False,
        )
    with _cpu_threads_for(2.0 * n * d * (n_classes - 1), device):
        km = cluster_probe.spherical_kmeans(
            z_ND, n_classes - 1, seed=seed, n_init=KMEANS_N_INIT, max_iter=KMEANS_MAX_ITER
        )
    return Fitted(v, probe, km.centroids_KD, km)


# ---- evaluation ----------------------------------------------------------------------------


@dataclass
class Confusions:
    linear_patch: np.ndarray  # [C, C]
    linear_pixel: np.ndarray
    cluster_patch: np.ndarray  # [C, C], cluster ids in the first K columns
    cluster_pixel: np.ndarray
    linear_crf: np.ndarray | None = None  # pixel level after the dense CRF (full features only)
    cluster_crf: np.ndarray | None = None


def _upsampled_probs(
    maps_BPC: Tensor, grid: tuple[int, int], size: tuple[int, int], *, offset: int, alpha: float = 1.0
) -> Tensor:
    """softmax(alpha · bilinear upsampling of patch maps) over channels offset…: ``[B, C', H, W]``."""
    b, p, c = maps_BPC.shape
    maps = maps_BPC[..., offset:].permute(0, 2, 1).reshape(b, c - offset, *grid).float()
    up = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    return torch.softmax(alpha * up, dim=1)


def _crf_images(val, load, image_B: np.ndarray, size: tuple[int, int]) -> list[Tensor]:
    """The val images as the model saw them (``load``: the store's geometry), float RGB 0 … 255, ``[3, H, W]`` each."""
    out = []
    for i in image_B:
        img = torch.from_numpy(np.asarray(load(int(i)), dtype=np.float32)).permute(2, 0, 1)
        if tuple(img.shape[1:]) != tuple(size):
            raise ConfigError(
                f"{val.path}: image {i} is {tuple(img.shape[1:])} px after the store's crop, its mask {tuple(size)}: cannot run the CRF"
            )
        out.append(img)
    return out


def _evaluate(
    fitted: list[Fitted],
    stores: ProbeStores,
    norm: FinalNorm,
    scaler: dimred.Standardizer,
    *,
    crf_window: int | None = None,
    crf_backend: str = "torch_window",
    progress: bool = False,
) -> list[Confusions]:
    """One pass over the val store: every variant, both probes, patch and pixel level (truth 0 ignored);
    with ``crf_window`` (not None), also the dense-CRF pixel level of the ``full`` variant, with
    the :data:`pipeline.crf.CRF_BACKENDS` entry ``crf_backend``."""
    val, c = stores.val, stores.n_classes
    confs = [Confusions(*(np.zeros((c, c), np.int64) for _ in range(4))) for _ in fitted]
    load = None
    if crf_window is not None:
        load = store_image_loader(val)  # images read only for the CRF's appearance kernel
    for f, conf in zip(fitted, confs):
        if crf_window is not None and f.variant.method == "full":
            conf.linear_crf, conf.cluster_crf = np.zeros((c, c), np.int64), np.zeros((c, c), np.int64)
    patch_label_NP = val.labels("patch_label").astype(np.int64)
    check_label_range(val, "patch_label", patch_label_NP[val.valid], np.flatnonzero(val.valid))
    variants = [f.variant for f in fitted]
    bar = Progress(f"dimred: evaluate {len(fitted)} variants on val", int(val.valid.sum()), "img", enabled=progress)
    for image_B, x_BPD in patch_chunks(val, stores.layer, norm):
        bar.update(len(image_B))
        b, p, d = x_BPD.shape
        pixel_BHW = val.pixel_labels(int(image_B[0]), int(image_B[-1]) + 1)[image_B - image_B[0]].astype(np.int64)
        check_label_range(val, "pixel_label", pixel_BHW, image_B)
        truth_BP = patch_label_NP[image_B]
        with torch.no_grad():
            x_std = scaler.transform(x_BPD.reshape(b * p, d))
            feats = _all_features(variants, x_std)
            for f, z_ND, conf in zip(fitted, feats, confs):
                logits_1BPC = f.probe(z_ND).reshape(1, b, p, c)
                patch_pred = predict_classes(logits_1BPC[0]).cpu().numpy()
                pixel_pred = upsampled_predictions(logits_1BPC, val.grid, pixel_BHW.shape[1:], train_on_other=False)[0]
                conf.linear_patch += metrics.confusion_matrix(truth_BP, patch_pred, c, ignore=0)
                conf.linear_pixel += metrics.confusion_matrix(pixel_BHW, pixel_pred, c, ignore=0)
                sims_1BPK = cluster_probe.similarities(z_ND, f.centroids_KD).reshape(1, b, p, -1)
                patch_cl = sims_1BPK[0].argmax(dim=-1).cpu().numpy()
                pixel_cl = upsampled_predictions(sims_1BPK, val.grid, pixel_BHW.shape[1:], train_on_other=True)[0]
                conf.cluster_patch += metrics.confusion_matrix(truth_BP, patch_cl, c, ignore=0)
                conf.cluster_pixel += metrics.confusion_matrix(pixel_BHW, pixel_cl, c, ignore=0)
                if conf.linear_crf is not None:
                    size = pixel_BHW.shape[1:]
                    lin_p = _upsampled_probs(logits_1BPC[0], val.grid, size, offset=1)
                    clu_p = _upsampled_probs(sims_1BPK[0], val.grid, size, offset=0, alpha=CLUSTER_ALPHA)
                    # per-image ops of ~1e5 elements: one CPU thread is faster than several on shared cores
                    with _cpu_threads_for(0.0, lin_p.device):
                        for j, img in enumerate(_crf_images(val, load, image_B, size)):
                            field = crf.make_crf(crf_backend, img.to(lin_p.device), crf.STEGO, window=crf_window)
                            lin = (field.refine(lin_p[j]).argmax(0) + 1).cpu().numpy()
                            clu = field.refine(clu_p[j]).argmax(0).cpu().numpy()
                            conf.linear_crf += metrics.confusion_matrix(pixel_BHW[j], lin, c, ignore=0)
                            conf.cluster_crf += metrics.confusion_matrix(pixel_BHW[j], clu, c, ignore=0)
    bar.close()
    return confs


# ---- charts --------------------------------------------------------------------------------


def dims_chart(
    df: pd.DataFrame, stem: Path, *, probe: str, d_model: int, random_weights: bool, notes: list[str]
) -> list[Path]:
    """Val mIoU (``miou_pct``, percent) vs dim (log x), one line per method, the full-feature
    baseline as a dashed rule."""
    rows = df[(df["probe"] == probe) & (df["method"] != "full")].copy()
    full = df[(df["probe"] == probe) & (df["method"] == "full")]
    baseline = float(full["miou_pct"].iloc[0]) if len(full) else float("nan")
    methods = list(dict.fromkeys(rows["method"]))
    dims = sorted(set(rows["dim"].tolist()) | {d_model})
    x = alt.X(
        "dim:Q",
        scale=alt.Scale(type="log", domain=[min(dims), max(dims)], nice=False),
        axis=alt.Axis(values=dims, format="d"),
        title="dims kept (log scale)",
    )
    lines = (
        alt.Chart(rows)
        .mark_line(point=True)
        .encode(
            x=x,
            y=alt.Y(
                "miou_pct:Q",
                title="val mIoU, pixel level (%)",
                scale=alt.Scale(
                    domain=[0, max(1e-4, float(np.nanmax([baseline, *rows["miou_pct"].tolist(), 1.0])) * 1.1)]
                ),
            ),
            color=alt.Color(
                "method:N",
                sort=methods,
                scale=alt.Scale(domain=methods, range=OKABE_ITO[: max(1, len(methods))]),
                title="reduction",
            ),
            tooltip=[
                alt.Tooltip("method:N"),
                alt.Tooltip("dim:Q"),
                alt.Tooltip("miou_pct:Q", format=".1f", title="mIoU (%)"),
                alt.Tooltip("accuracy_pct:Q", format=".1f", title="pixel accuracy (%)"),
            ],
        )
    )
    base_df = pd.DataFrame(
        {"miou_pct": [baseline], "dim": [min(dims)], "label": [f"full features (D={d_model}): {baseline:.1f} %"]}
    )
    rule = alt.Chart(base_df).mark_rule(strokeDash=[6, 4], color="black").encode(y="miou_pct:Q")
    text = (
        alt.Chart(base_df).mark_text(align="left", dx=4, dy=-7, fontSize=11).encode(x=x, y="miou_pct:Q", text="label:N")
    )
    what = "linear probe" if probe == "linear" else "cluster probe (spherical k-means + Hungarian on val)"
    title = title_with_note(f"Segmentation left after projection: {what}", random_weights)
    if notes:
        title = alt.TitleParams(title.text, subtitle=list(title.subtitle or []) + notes)
    chart = alt.layer(lines, rule, text).properties(width=420, height=280, title=title)
    return save_chart(chart, stem)


def pca_variance_chart(
    evr_K: np.ndarray, stem: Path, *, dims: tuple[int, ...], random_weights: bool
) -> tuple[list[Path], pd.DataFrame]:
    """Cumulative explained variance vs number of PCA components (log x), the study's dims marked;
    returns the paths and the table (``components``, ``explained_variance_ratio_pct``, ``cumulative_pct``)."""
    k = len(evr_K)
    data = units.to_pct(
        pd.DataFrame(
            {
                "components": np.arange(1, k + 1),
                "explained_variance_ratio": evr_K.astype(float),
                "cumulative": np.cumsum(evr_K.astype(np.float64)),
            }
        ),
        ["explained_variance_ratio", "cumulative"],
    )
    marks = data[data["components"].isin(dims)].assign(label=lambda d: [f"{v:.0f}%" for v in d["cumulative_pct"]])
    ticks = sorted({1, k} | {d for d in dims if d <= k})
    x = alt.X(
        "components:Q",
        scale=alt.Scale(type="log", domain=[1, max(k, 2)], nice=False),
        axis=alt.Axis(format="d", values=ticks),
        title="number of principal components (log scale)",
    )
    y = alt.Y(
        "cumulative_pct:Q", scale=alt.Scale(domain=[0, 100]), title="cumulative explained variance, train sample (%)"
    )
    line = alt.Chart(data).mark_line(color=OKABE_ITO[4]).encode(x=x, y=y)
    points = (
        alt.Chart(marks)
        .mark_point(filled=True, size=50, color=OKABE_ITO[5])
        .encode(
            x=x,
            y=y,
            tooltip=[
                alt.Tooltip("components:Q"),
                alt.Tooltip("cumulative_pct:Q", format=".1f", title="cumulative (%)"),
            ],
        )
    )
    labels = alt.Chart(marks).mark_text(dy=-9, fontSize=10).encode(x=x, y=y, text="label:N")
    chart = alt.layer(line, points, labels).properties(
        width=420,
        height=280,
        title=title_with_note("PCA of standardised patch features: cumulative explained variance", random_weights),
    )
    return save_chart(chart, stem), data


# ---- the study -----------------------------------------------------------------------------


def run_dimred_study(cfg: Config, *, progress: bool = True, ctx=None) -> dict:
    """Fit, evaluate and write every output; return a JSON-able summary. ``ctx``: the step's
    RunContext (default: one started here).

    Steps: sample and standardise train tokens (:func:`_fit_sample`), fit the reductions, fit a
    linear probe and k-means per variant (:func:`_fit_variants`), evaluate on val
    (:func:`_evaluate`), tabulate (:func:`_result_rows`), write (:func:`_write_outputs`).
    """
    dc = cfg.dimred
    if dc is None:
        raise ConfigError(f"{cfg.source}: key dimred: missing; the study needs it (cache, layer, methods, dims)")
    ctx = ctx or RunContext.start(cfg)
    threads, device = ctx.threads, ctx.device
    stores = open_probe_stores(cfg, dc.cache, layer=dc.layer, task="segmentation", n_classes=None, key="dimred")
    if stores.n_classes < 3:
        raise ConfigError(
            f"{cfg.source}: key dimred/cache: {stores.train.path} has {stores.n_classes} classes incl. 0; the cluster probe needs at least 2 real classes"
        )
    crf_backend = None
    if dc.crf:
        try:
            crf_backend = crf.resolve_backend(dc.crf_backend)
        except ValueError as err:
            raise ConfigError(f"{cfg.source}: key dimred/crf_backend: {err}") from None
        if crf_backend == "torch_window":
            log.warning("dimred: dense CRF %s", crf.CRF_BACKENDS[crf_backend].describe())
    norm = FinalNorm(cfg, stores, device)
    d_model = stores.d_model
    t0 = time.perf_counter()

    y_NP = seg_train_labels(stores.train, min_purity=MIN_PURITY, train_on_other=False)
    sample, dims, notes, scaler, x_std = _fit_sample(dc, stores, norm)
    t1 = time.perf_counter()
    reductions, method_notes = dimred.fit_reductions(x_std, dc.methods, dims, seed=dc.seed)
    notes += method_notes
    t2 = time.perf_counter()
    log.info(
        "dimred: sample of %d tokens (from %d chunks, %d available), D=%d, dims %s, methods %s, device %s",
        len(sample),
        sample.n_chunks_read,
        sample.n_available,
        d_model,
        list(dims),
        list(reductions),
        device,
    )
    fitted, n_train = _fit_variants(
        cfg, dc, stores, sample, x_std, y_NP, reductions, dims, device=device, progress=progress
    )
    t3 = time.perf_counter()
    confs = _evaluate(
        fitted,
        stores,
        norm,
        scaler,
        crf_window=dc.crf_window if crf_backend else None,
        crf_backend=crf_backend or "torch_window",
        progress=progress,
    )
    t4 = time.perf_counter()

    evr = reductions["pca"].extras["explained_variance_ratio"] if "pca" in reductions else None
    rows, table = _result_rows(
        fitted,
        confs,
        dc=dc,
        block=stores.block,
        n_fit_tokens=len(sample),
        n_train=n_train,
        evr=evr,
        random_weights=stores.random_weights,
        crf_backend=crf_backend,
    )
    out = _write_outputs(
        cfg,
        dc,
        table,
        crf_backend=crf_backend,
        stores=stores,
        sample=sample,
        dims=dims,
        notes=notes,
        scaler=scaler,
        reductions=reductions,
        evr=evr,
    )
    t5 = time.perf_counter()

    summary_rows = {
        f"{r['probe']}/{r['method']}@{r['dim']}": round(float(r["miou"]), 4) for r in rows
    }  # fractions, as JSON
    return {
        "study": "dimred",
        "csv": str(dimred_csv(cfg)),
        "out": str(out),
        "protocol": PROTOCOL,
        "n_fit_tokens": len(sample),
        "n_train_tokens": n_train,
        "d_model": d_model,
        "dims": list(dims),
        "methods": list(reductions),
        "notes": notes,
        "miou": summary_rows,
        "random_weights": stores.random_weights,
        "device": describe_device(device),
        "threads": threads,
        "seconds": {
            "sample": round(t1 - t0, 2),
            "fit_reductions": round(t2 - t1, 2),
            "fit_probes": round(t3 - t2, 2),
            "evaluate": round(t4 - t3, 2),
            "outputs": round(t5 - t4, 2),
        },
    }


def _fit_sample(dc: DimredConfig, stores: ProbeStores, norm: FinalNorm):
    """The train token sample (``dimred.n_fit_tokens``, seeded), the dims that fit it (with notes
    on those dropped), and the standardiser fitted on it with the standardised sample."""
    sample = dimred.sample_tokens(stores.train, dc.layer, norm, n=dc.n_fit_tokens, seed=dc.seed)
    dims, notes = dimred.plan_dims(dc.dims, stores.d_model, len(sample))
    for note in notes:
        log.warning("dimred: %s", note)
    scaler = dimred.Standardizer.fit(sample.x_ND)
    return sample, dims, notes, scaler, scaler.transform(sample.x_ND)


def _fit_variants(
    cfg: Config,
    dc: DimredConfig,
    stores: ProbeStores,
    sample,
    x_std: np.ndarray,
    y_NP: np.ndarray,
    reductions: dict[str, Any],
    dims: tuple[int, ...],
    *,
    device: torch.device,
    progress: bool,
) -> tuple[list[Fitted], int]:
    """A linear probe and k-means per (reduction, dim) variant and the full features, on the
    sample's labelled tokens (labels ``y_NP[image, patch]`` of the train store); returns them and
    the number of labelled tokens."""
    x_std_t = torch.from_numpy(x_std).to(device)
    y_N = y_NP[sample.image_N, sample.token_N]
    n_train = int((y_N != IGNORE_LABEL).sum())
    if n_train == 0:
        raise ConfigError(
            f"{cfg.source}: key dimred/n_fit_tokens: the sample of {len(sample)} tokens holds no patch with a usable label; raise it"
        )
    variants = _variants(reductions, dims, stores.d_model)
    fitted = []
    bar = Progress("dimred: fit linear probe + k-means per variant", len(variants), "variant", enabled=progress)
    for i, v in enumerate(variants):
        fitted.append(
            _fit_variant(
                v,
                x_std_t,
                y_N,
                n_classes=stores.n_classes,
                epochs=dc.probe_epochs,
                lr=dc.probe_lr,
                seed=dc.seed,
                device=device,
            )
        )
        log.info(
            "dimred: fitted %s (%d/%d): probe train loss %.4f, k-means objective %.4f after %d steps",
            v.name,
            i + 1,
            len(variants),
            float(fitted[-1].probe.train_loss_M[0]),
            fitted[-1].kmeans.objective,
            fitted[-1].kmeans.n_iter,
        )
        bar.update(1, {"last": v.name})
    bar.close()
    return fitted, n_train


def _result_rows(
    fitted: list[Fitted],
    confs: list[Confusions],
    *,
    dc: DimredConfig,
    block: int,
    n_fit_tokens: int,
    n_train: int,
    evr: np.ndarray | None,
    random_weights: bool,
    crf_backend: str | None = None,
) -> tuple[list[dict], pd.DataFrame]:
    """One row per (variant, probe): pixel / patch metrics, CRF metrics (``crf``: the backend that
    made them, empty where none ran), fit facts; and the table of them."""
    rows = []
    for f, conf in zip(fitted, confs):
        v = f.variant
        common = {
            "method": v.method,
            "dim": v.dim,
            "n_fit_tokens": n_fit_tokens,
            "explained_variance": float(np.sum(evr[: v.dim], dtype=np.float64)) if v.method == "pca" else np.nan,
            "layer": dc.layer,
            "block": block,
            "random_weights": random_weights,
        }
        lin = seg_metrics(conf.linear_patch, conf.linear_pixel, PROTOCOL_NAME, MIOU_DEFINITION)
        rows.append(
            {
                **common,
                "probe": "linear",
                **_metric_columns(lin),
                **_crf_columns(conf.linear_crf),
                "crf": crf_backend if conf.linear_crf is not None else "",
                "n_train_tokens": n_train,
                "k": np.nan,
                "train_loss": float(f.probe.train_loss_M[0]),
                "kmeans_objective": np.nan,
            }
        )
        k = f.centroids_KD.shape[0]
        mapping, pixel_matched = cluster_probe.cluster_scores(conf.cluster_pixel[:, :k])
        patch_matched = metrics.matched_confusion(conf.cluster_patch[:, :k], mapping)
        clu = seg_metrics(patch_matched, pixel_matched, PROTOCOL_NAME, MIOU_DEFINITION)
        crf_matched = cluster_probe.cluster_scores(conf.cluster_crf[:, :k])[1] if conf.cluster_crf is not None else None
        rows.append(
            {
                **common,
                "probe": "cluster",
                **_metric_columns(clu),
                **_crf_columns(crf_matched),
                "crf": crf_backend if crf_matched is not None else "",
                "n_train_tokens": n_fit_tokens,
                "k": k,
                "train_loss": np.nan,
                "kmeans_objective": f.kmeans.objective,
            }
        )
    for r in rows:
        r.update(protocol=PROTOCOL_NAME, miou_definition=MIOU_DEFINITION)
    cols = [
        "method",
        "dim",
        "probe",
        "miou",
        "accuracy",
        "miou_crf",
        "accuracy_crf",
        "crf",
        "protocol",
        "miou_definition",
        "patch_miou",
        "patch_accuracy",
        "mean_class_accuracy",
        "n_fit_tokens",
        "n_train_tokens",
        "k",
        "train_loss",
        "kmeans_objective",
        "explained_variance",
        "layer",
        "block",
        "random_weights",
    ]
    return rows, units.to_pct(pd.DataFrame(rows)[cols], PCT_COLUMNS)


def _write_outputs(
    cfg: Config,
    dc: DimredConfig,
    table: pd.DataFrame,
    *,
    stores: ProbeStores,
    sample,
    dims: tuple[int, ...],
    notes: list[str],
    scaler: dimred.Standardizer,
    reductions: dict[str, Any],
    evr: np.ndarray | None,
    crf_backend: str | None = None,
) -> Path:
    """``dimred.csv``, the fitted projections with their metadata, and the charts; returns the output folder."""
    block, d_model = stores.block, stores.d_model
    files = layout.dimred_files_of(cfg)
    files.dir.mkdir(parents=True, exist_ok=True)
    files.table.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_csv(table, files.table, index=False)
    meta = {
        "study": "stego-studies dimensionality reduction (Koenig et al., CVPR-W 2023)",
        "protocol": PROTOCOL,
        "crf": (
            {
                "backend": crf_backend,
                "implementation": crf.CRF_BACKENDS[crf_backend].describe(),
                "params": to_jsonable(crf.STEGO),
                "window": dc.crf_window if crf_backend == "torch_window" else None,
                "on": "full features, both probes, pixel level",
                "cluster_alpha": CLUSTER_ALPHA,
            }
            if crf_backend
            else None
        ),
        "input": f"final_norm(output of block {block}) at the patch tokens, float32, standardised with the train sample's statistics",
        "cache": to_jsonable(dc.cache),
        "layer": dc.layer,
        "block": block,
        "d_model": d_model,
        "dims_used": list(dims),
        "notes": notes,
        "sample": {
            "n_fit_tokens_requested": dc.n_fit_tokens,
            "n_fit_tokens": len(sample),
            "n_pool": sample.n_pool,
            "n_available": sample.n_available,
            "n_chunks_read": sample.n_chunks_read,
            "seed": dc.seed,
            "oversample": dimred.SAMPLE_OVERSAMPLE,
        },
        "stores": {"train": store_record(stores.train), "val": store_record(stores.val)},
        "random_weights": stores.random_weights,
        "config": to_jsonable(dc),
        "provenance": record(cfg, "dimred"),
        "package_version": pipeline.__version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    dimred.save_projections(files.projections, scaler, reductions, meta)
    for probe in PROBES:
        dims_chart(
            table, files.chart(probe), probe=probe, d_model=d_model, random_weights=stores.random_weights, notes=notes
        )
    if "pca" in dc.methods:
        if evr is None:  # pca asked for but nothing could be fitted (no dim left)
            evr = np.zeros(0, np.float32)
        _, data = pca_variance_chart(evr, files.chart("pca_variance"), dims=dims, random_weights=stores.random_weights)
        atomic.write_csv(data, files.pca_variance_csv, index=False)
    return files.dir


def _crf_columns(conf: np.ndarray | None) -> dict[str, float]:
    """mIoU (STEGO's) and accuracy after the CRF; NaN where no CRF ran."""
    if conf is None:
        return {"miou_crf": np.nan, "accuracy_crf": np.nan}
    exclude = metrics.protocol_exclude(PROTOCOL_NAME)
    return {
        "miou_crf": metrics.mean_iou_as(conf, MIOU_DEFINITION, exclude=exclude),
        "accuracy_crf": metrics.pixel_accuracy(conf, exclude=exclude),
    }


def _metric_columns(m: dict[str, float]) -> dict[str, float]:
    return {
        "miou": m["pixel_miou"],
        "accuracy": m["pixel_acc"],
        "patch_miou": m["patch_miou"],
        "patch_accuracy": m["patch_acc"],
        "mean_class_accuracy": m["pixel_mean_class_acc"],
    }
