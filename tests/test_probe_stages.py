"""Linear-probe stages on the tiny project: everything from the cache, metrics that mean something, bad input."""

from __future__ import annotations

import collections
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import zarr

from helpers import REPO, run_cli, write_config
from pipeline import metrics
from pipeline.__main__ import main as cli_main
from pipeline.cache import CacheError, CacheReader, open_cache
from pipeline.config import CacheRef, ConfigError, load_config
from pipeline.data import make_classification_demo
from pipeline.extract import extract
from pipeline.models import load_backbone
from pipeline.probe_kinds import SegProbeConfig
from pipeline.probes import cls as cls_probe
from pipeline.probes import seg as seg_probe
from pipeline.probes.features import seg_train_labels
from pipeline.probes.linear import IGNORE_LABEL, load_probe

SEG = CacheRef("dino", "seg")
CLS = CacheRef("clip", "cls")
EPOCHS = 30
PROBES = {
    "seg": {
        "cache": {"model": "dino", "dataset": "seg"},
        "lrs": [1e-3, 1e-2, 3e-2],
        "weight_decays": [1e-1, 1e-3],  # 6 members
        "epochs": EPOCHS,
        "batch_size": 64,
        "shuffle_buffer": 256,
        "n_figure_images": 3,
    },
    "cls": {
        "cache": {"model": "clip", "dataset": "cls"},
        "lrs": [1e-3, 1e-2, 3e-2],
        "weight_decays": [1e-1, 1e-3],
        "epochs": 40,
        "batch_size": 16,
    },
}


def _setup(project, refs=(SEG,), splits=("train", "val"), probes=None):
    write_config(project, {"probes": probes or PROBES})
    cfg = load_config("config.yaml")
    for ref in refs:
        for split in splits:
            extract(cfg, ref, split, progress=False)
    return cfg


def _count_reads(monkeypatch) -> collections.Counter:
    """Count activation reads (``CacheReader.read``: one whole zarr chunk each) per store."""
    reads: collections.Counter = collections.Counter()
    original = CacheReader.read

    def counting(self, layer, start, stop, tokens=None):
        reads[self.path.name] += 1
        return original(self, layer, start, stop, tokens)

    monkeypatch.setattr(CacheReader, "read", counting)
    return reads


def test_seg_probe_beats_majority_baseline_and_reads_cache_once_per_epoch(project, monkeypatch):
    cfg = _setup(project)
    reads = _count_reads(monkeypatch)
    summary = seg_probe.run_seg_probe(cfg, progress=False)
    out = project / "results" / "probes" / "seg" / "dino" / "seg"
    assert summary["out"] == str(out.relative_to(project)) and summary["device"].startswith("cpu")

    # ---- one pass over the train store per epoch for the whole 6-member sweep
    train = CacheReader(cfg.store(SEG, "train"))
    val = CacheReader(cfg.store(SEG, "val"))
    y_NP = seg_train_labels(train, min_purity=0.5, train_on_other=False)
    held_out = seg_probe.selection_images(train, y_NP, 0.1, 0, 100)  # the defaults: 10 % of train, at least 100, seed 0
    y_fit = np.where(held_out[:, None], IGNORE_LABEL, y_NP)
    used_chunks = sum((y_fit[s:e] != IGNORE_LABEL).any() for s, e in train.chunks())
    selection_chunks = sum(held_out[s:e].any() for s, e in train.chunks())
    assert summary["n_members"] == 6 and used_chunks == 6 and selection_chunks >= 1
    # one pass per epoch (not x 6 members), plus one pass over the chunks holding held-out images
    assert reads["train.zarr"] == EPOCHS * used_chunks + selection_chunks
    # every member evaluated in one pass: after each epoch (patch-level curve) and at the end
    assert reads["val.zarr"] == (EPOCHS + 1) * len(val.chunks())

    # ---- outputs, columns, names
    for name in seg_probe.OUTPUT_FILES:
        assert (out / name).stat().st_size > 0, name
    sweep = pd.read_csv(out / "sweep.csv")
    assert len(sweep) == 6 and sweep["best"].sum() == 1 and sweep["random_weights"].all()
    for col in (
        "member",
        "lr",
        "weight_decay",
        "train_loss",
        "patch_miou_pct",
        "patch_acc_pct",
        "pixel_miou_pct",
        "pixel_acc_pct",
    ):
        assert col in sweep.columns and sweep[col].notna().all(), col
    best = sweep.loc[sweep["best"]].iloc[0]
    # chosen on the held-out part of train, not on val (issue 15: no peeking)
    assert best["selection_pixel_miou_pct"] == sweep["selection_pixel_miou_pct"].max()
    tied = sweep[sweep["selection_pixel_miou_pct"] == sweep["selection_pixel_miou_pct"].max()]
    assert best["selection_loss"] == tied["selection_loss"].min() and sweep["selection_loss"].notna().all()
    assert (sweep["protocol"] == "ade20k").all() and (sweep["miou_definition"] == "present_in_truth").all()
    assert 100 * summary["val_pixel_miou"] == pytest.approx(
        best["pixel_miou_pct"]
    )  # tables in percent, JSON in fractions
    epochs = pd.read_csv(out / "epochs.csv")  # one row per epoch and member
    assert len(epochs) == EPOCHS * 6 and sorted(set(epochs["epoch"])) == list(range(EPOCHS))
    assert epochs["train_loss"].notna().all() and epochs["val_patch_miou_pct"].between(0, 100).all()
    last = epochs[epochs["epoch"] == EPOCHS - 1].set_index("member")
    np.testing.assert_allclose(last.loc[sweep["member"], "train_loss"], sweep["train_loss"], rtol=1e-6)
    np.testing.assert_allclose(last.loc[sweep["member"], "val_patch_miou_pct"], sweep["patch_miou_pct"], rtol=1e-9)
    per_class = pd.read_csv(out / "per_class_iou.csv")
    assert list(per_class.columns[:4]) == ["class_id", "class_name", "iou_pct", "n_pixels"]
    assert per_class["class_name"].tolist() == list(val.class_names)
    assert np.isnan(per_class["iou_pct"][0])  # class 0 is ignored (ADE20K protocol)
    assert np.nanmean(per_class["iou_pct"][per_class["in_miou"]]) == pytest.approx(best["pixel_miou_pct"])
    _, meta = load_probe(out / "best")
    assert meta["random_weights"] is True and meta["class_names"] == list(val.class_names)
    assert meta["stores"]["train"]["config_hash"] == train.attrs["config_hash"]
    assert meta["stores"]["val"]["config_hash"] == val.attrs["config_hash"]
    assert meta["layer"] == -1 and meta["block"] == 2 and meta["member"]["index"] == int(best["member"])
    # the held-out selection images are train images, recorded, and disjoint from val
    ids = meta["selection"]["image_ids"]
    assert len(ids) == int(held_out.sum()) >= 1 and meta["selection"]["seed"] == 0
    assert set(ids) <= {str(i) for i in train.image_ids} and not set(ids) & {str(i) for i in val.image_ids}
    assert set(ids) == {str(train.image_ids[i]) for i in np.flatnonzero(held_out)}

    # ---- majority-class baseline, same metric code
    labels, counts = np.unique(y_NP[y_NP != IGNORE_LABEL], return_counts=True)
    majority = int(labels[counts.argmax()])
    truth = val.pixel_labels(0, val.n_images)[val.valid].astype(np.int64)
    baseline = metrics.mean_iou(metrics.confusion_matrix(truth, np.full_like(truth, majority), val.n_classes, ignore=0))
    probe = float(best["pixel_miou_pct"]) / 100  # a fraction, as the baseline
    n_present = int(per_class["in_miou"].sum())
    print(
        f"\nseg probe val pixel mIoU {probe:.3f} vs majority-class baseline {baseline:.3f} ({n_present} classes present)"
    )
    # Margin 0.3: a constant predictor scores at most 1/n_present (one class's IoU <= 1, the others 0),
    # and so does a probe that segments one class perfectly and nothing else. With n_present = 4,
    # baseline + 0.3 >= 0.3 > 1/4, so passing needs at least two classes segmented well.
    assert n_present == 4 and 1.0 / n_present < 0.3
    assert probe >= baseline + 0.3

    # ---- patch-level metrics recomputed independently: best.safetensors + the store via xarray
    linear, _ = load_probe(out / "best")
    backbone, _ = load_backbone(cfg.model("dino").spec)
    ds = open_cache(cfg.store(SEG, "val"))
    keep = ds.done.values & ~ds.bad.values
    patches = ds.acts.sel(layer=2).values[keep][:, ds.patch_token.values]  # [N, P, D]
    with torch.no_grad():
        logits = linear(backbone.final_norm(torch.from_numpy(patches).float()))
    pred = logits[..., 1:].argmax(-1).numpy() + 1  # class 0 is never predicted
    conf = metrics.confusion_matrix(ds.patch_label.values[keep], pred, len(ds.attrs["class_names"]), ignore=0)
    assert 100 * metrics.mean_iou(conf) == pytest.approx(best["patch_miou_pct"], abs=1e-10)
    assert 100 * metrics.pixel_accuracy(conf) == pytest.approx(best["patch_acc_pct"], abs=1e-10)


def test_cls_probe_above_chance(project, capsys):
    # A bigger tiny dataset than the fixture's (8 per class) so "above chance" means something.
    make_classification_demo(project / "resources" / "data" / "cls", n_per_class=20, n_classes=3, image_size=64, seed=0)
    cfg = _setup(project, refs=(CLS,))
    capsys.readouterr()
    # The CLI entry point in-process (a subprocess would add ~10 s of imports; the error test runs one).
    assert cli_main(["probe-cls", "--config", "config.yaml", "--out", "custom_out", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    out = project / "custom_out"
    for name in cls_probe.OUTPUT_FILES:
        assert (out / name).stat().st_size > 0, name
    epochs = pd.read_csv(out / "epochs.csv")
    assert len(epochs) == 40 * 6 and epochs["val_top1_acc_pct"].between(0, 100).all()
    assert epochs.loc[epochs["epoch"] == 39, "val_top1_acc_pct"].max() == pytest.approx(
        100 * summary["metrics"]["top1_acc"]
    )
    val = CacheReader(cfg.store(CLS, "val"))
    n_val, chance = int(val.valid.sum()), 1.0 / val.n_classes
    top1, top5 = summary["metrics"]["top1_acc"], summary["metrics"]["top5_acc"]
    print(f"\ncls probe val top-1 {top1:.3f} (top-5 {top5:.3f}) vs chance {chance:.3f} on {n_val} images")
    # Margin 0.4 on 15 val images: >= 11/15 right. Guessing (p = 1/3) gets there with
    # probability ~4e-4 (binomial tail), so passing is not luck.
    assert n_val == 15
    assert top1 >= chance + 0.4
    assert top5 >= top1
    sweep = pd.read_csv(out / "sweep.csv")
    assert {"top1_acc_pct", "top5_acc_pct", "mean_class_acc_pct", "train_loss", "random_weights"} <= set(sweep.columns)
    assert (sweep["top5_acc_pct"] >= sweep["top1_acc_pct"]).all() and len(sweep) == 6
    _, meta = load_probe(out / "best")
    conf = np.array(meta["confusion"])
    assert conf.shape == (3, 3) and conf.sum() == n_val
    assert np.trace(conf) / n_val == pytest.approx(top1)
    per_class = pd.read_csv(out / "per_class_accuracy.csv")
    assert per_class["class_name"].tolist() == list(val.class_names) and per_class["n_images"].sum() == n_val
    assert "cpu" in summary["device"] and meta["device"] == summary["device"]
    # selection on held-out train rows: recorded, disjoint from val, best by selection accuracy
    train = CacheReader(cfg.store(CLS, "train"))
    ids = meta["selection"]["image_ids"]
    # 10 % of 45 is 4; the floor (selection_min_images, 100) is capped at half: 22
    assert len(ids) == int(train.valid.sum()) // 2 == 22 and summary["n_members"] == 6
    assert set(ids) <= {str(i) for i in train.image_ids} and not set(ids) & {str(i) for i in val.image_ids}
    assert sweep.loc[sweep["best"], "selection_top1_acc_pct"].iloc[0] == sweep["selection_top1_acc_pct"].max()
    tied = sweep[sweep["selection_top1_acc_pct"] == sweep["selection_top1_acc_pct"].max()]
    assert sweep.loc[sweep["best"], "selection_loss"].iloc[0] == tied["selection_loss"].min()  # ties: lowest loss
    assert sweep["loss"].notna().all() and sweep["selection_loss"].notna().all()
    assert summary["val_top1_acc"] == pytest.approx(top1)


# ---- bad input: one clear error naming the store and the culprit -----------------------------


def test_n_classes_mismatch_is_one_cli_error_line(project):
    _setup(project, probes={"seg": {**PROBES["seg"], "n_classes": 3}})
    proc = run_cli(["probe-seg", "--config", "config.yaml"], project, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "probes/seg/n_classes" in lines[0] and "cache/dino/seg/train.zarr has 5 classes" in lines[0]


def test_store_without_patch_labels(project):
    cfg = _setup(project, refs=(CLS,))
    # The config schema refuses a classification dataset for probes/seg, so bypass it.
    cfg = dataclasses.replace(cfg, probes={**cfg.probes, "seg": SegProbeConfig(cache=CLS, epochs=1)})
    with pytest.raises(CacheError, match=r"cache/clip/cls/train\.zarr.*(patch_label|segmentation)"):
        seg_probe.run_seg_probe(cfg, progress=False)


@pytest.mark.parametrize("kind", ["seg", "cls"])
def test_labels_outside_range(project, kind):
    ref, name, value = (SEG, "patch_label", 99) if kind == "seg" else (CLS, "label", 17)
    cfg = _setup(project, refs=(ref,))
    group = zarr.open_group(cfg.store(ref, "train"), mode="r+", zarr_format=3)
    group[name][(2, 3) if kind == "seg" else 2] = value
    run = seg_probe.run_seg_probe if kind == "seg" else cls_probe.run_cls_probe
    store = f"cache/{ref.model}/{ref.dataset}/train.zarr"
    with pytest.raises(CacheError, match=rf"{store}: {name} holds label {value} \(image 2.*outside \[0, "):
        run(cfg, progress=False)


def test_pixel_label_outside_range(project):
    cfg = _setup(project)
    group = zarr.open_group(cfg.store(SEG, "val"), mode="r+", zarr_format=3)
    group["pixel_label"][5, 0, 0] = 40
    cfg = dataclasses.replace(cfg, probes={**cfg.probes, "seg": dataclasses.replace(cfg.probes["seg"], epochs=1)})
    with pytest.raises(CacheError, match=r"cache/dino/seg/val\.zarr: pixel_label holds label 40 \(image 5"):
        seg_probe.run_seg_probe(cfg, progress=False)


def test_unfinished_or_missing_store(project):
    cfg = _setup(project, splits=("train",))
    with pytest.raises(CacheError, match=r"cache/dino/seg/val\.zarr: no activation store here"):
        seg_probe.run_seg_probe(cfg, progress=False)
    extract(cfg, SEG, "val", part=0, of=2, progress=False)  # 2 of 3 chunks, not finalized
    with pytest.raises(CacheError, match=r"cache/dino/seg/val\.zarr: store is not finalized"):
        seg_probe.run_seg_probe(cfg, progress=False)


def test_config_without_probe_section(project):
    write_config(project)
    with pytest.raises(ConfigError, match="probes/seg"):
        seg_probe.run_seg_probe(load_config("config.yaml"), progress=False)


# ---- workflow --------------------------------------------------------------------------------


def test_snakemake_dry_run_lists_probe_rules():
    # -F: list every job even where outputs already exist in the repo.
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-F", "probes"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "rule probe_seg:" in out and "rule probe_cls:" in out
    seg_block = out.split("rule probe_seg:")[1].split("rule ")[0]
    for needed in (
        "cache/dinov2_demo/demo_seg/train.complete.json",
        "cache/dinov2_demo/demo_seg/val.complete.json",
        "resources/models/dinov2_demo/.complete",
        "results/probes/seg/dinov2_demo/demo_seg/examples.png",
    ):
        assert needed in seg_block, needed
