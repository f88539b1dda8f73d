"""A new probe kind built on the probe template (``pipeline.probes.template``) is its four steps.

``majority`` (registered at test time, nothing else edited): an image's mean final-normed patch
token → the most frequent real class among its patches, on the segmentation cache. Its module
is the ``ProbeTemplate`` subclass below (data, fit, evaluate, one table); the template does the
rest. Run through the CLI on the tiny project, it writes every file the layout declares for it,
its ``best.*`` is the member it reports, and its val accuracy is what that member scores on
the val vectors recomputed here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from helpers import write_config
from pipeline import atomic, layout, provenance
from pipeline.__main__ import main as cli_main
from pipeline.config import CacheRef, load_config
from pipeline.config_schema import default
from pipeline.extract import extract
from pipeline.probe_kinds import PROBE_KINDS, ProbeKind
from pipeline.probes.cls import evaluate_cls
from pipeline.probes.features import FinalNorm, in_memory_epochs, open_probe_stores, patch_chunks
from pipeline.probes.linear import ProbeSweep, ProbeTrainConfig, fit_sweep, load_probe
from pipeline.probes.template import ProbeResults, ProbeRun, ProbeTemplate, run_probe

MAJORITY_SCHEMA: dict[str, Any] = yaml.safe_load("""
type: object
additionalProperties: false
required: [cache]
properties:
  cache: {$ref: "#/$defs/cache_ref"}
  layer: {type: integer, default: -1}
  n_classes: {type: [integer, "null"], default: null}
  seed: {type: integer, default: 0}
  lrs: {type: array, items: {type: number}, default: [0.01, 0.03]}
  weight_decays: {type: array, items: {type: number}, default: [0.0]}
  epochs: {type: integer, default: 25}
  batch_size: {type: integer, default: 8}
  selection_fraction: {type: number, default: 0}
  selection_min_images: {type: integer, default: 1}
  selection_seed: {type: integer, default: 0}
""")


@dataclass(frozen=True)
class MajorityConfig:
    cache: CacheRef
    layer: int = default("layer", MAJORITY_SCHEMA)
    n_classes: int | None = None
    seed: int = default("seed", MAJORITY_SCHEMA)
    lrs: tuple[float, ...] = default("lrs", MAJORITY_SCHEMA)
    weight_decays: tuple[float, ...] = default("weight_decays", MAJORITY_SCHEMA)
    epochs: int = default("epochs", MAJORITY_SCHEMA)
    batch_size: int = default("batch_size", MAJORITY_SCHEMA)
    selection_fraction: float = default("selection_fraction", MAJORITY_SCHEMA)
    selection_min_images: int = default("selection_min_images", MAJORITY_SCHEMA)
    selection_seed: int = default("selection_seed", MAJORITY_SCHEMA)


def image_vectors(run: ProbeRun, norm: FinalNorm, split: str) -> tuple[torch.Tensor, np.ndarray]:
    """Per valid image with a labelled patch: its mean final-normed patch token and its most
    frequent real (non-zero) patch class."""
    reader = getattr(run.stores, split)
    labels = reader.labels("patch_label")
    xs, ys = [], []
    for image_B, x_BPD in patch_chunks(reader, run.pc.layer, norm):
        for image, x_PD in zip(image_B, x_BPD, strict=True):
            counts = np.bincount(labels[image], minlength=run.stores.n_classes)[1:]
            if counts.any():
                xs.append(x_PD.float().mean(0))
                ys.append(1 + int(counts.argmax()))
    return torch.stack(xs), np.array(ys)


@dataclass
class MajorityData:
    norm: FinalNorm
    x_train: torch.Tensor
    y_train: np.ndarray
    x_val: torch.Tensor
    y_val: np.ndarray

    @property
    def held_out_images(self) -> np.ndarray:
        return np.zeros(0, dtype=np.int64)  # selection on val


class MajorityProbe(ProbeTemplate[MajorityData, None]):
    kind = "majority"
    metric = "top1_acc"
    metric_title = "val top-1 accuracy"
    epoch_metric = "val_top1_acc"
    epoch_metric_title = "val top-1 accuracy"

    def data(self, run: ProbeRun) -> MajorityData:
        norm = FinalNorm(run.cfg, run.stores, run.device)
        return MajorityData(norm, *image_vectors(run, norm, "train"), *image_vectors(run, norm, "val"))

    def fit(self, run: ProbeRun, data: MajorityData, members) -> ProbeSweep:
        pc = run.pc
        return fit_sweep(
            in_memory_epochs(data.x_train, data.y_train, batch_size=pc.batch_size, seed=pc.seed),
            d_model=run.stores.d_model,
            n_classes=run.stores.n_classes,
            members=members,
            cfg=ProbeTrainConfig(epochs=pc.epochs, batch_size=pc.batch_size, seed=pc.seed),
            device=run.device,
            progress=False,
            on_epoch=lambda epoch, sw: {"val_top1_acc": [r["top1_acc"] for r, _ in evaluate_cls(sw, data.x_val, data.y_val)]},
        )  # fmt: skip

    def evaluate(self, run: ProbeRun, data: MajorityData, sweep: ProbeSweep) -> ProbeResults[None]:
        rows = [
            {"train_loss": float(sweep.train_loss_M[k]), **row, "selection_top1_acc": row["top1_acc"],
             "selection_loss": row["loss"]}
            for k, (row, _) in enumerate(evaluate_cls(sweep, data.x_val, data.y_val))
        ]  # fmt: skip
        return ProbeResults(rows, None)

    def tables(self, run: ProbeRun, data: MajorityData, results: ProbeResults[None], best: int) -> None:
        val = np.bincount(data.y_val, minlength=run.stores.n_classes)
        atomic.write_csv(pd.DataFrame({"class_id": np.arange(len(val)), "n_val_images": val}),
                         run.files.own("majority.csv"), index=False)  # fmt: skip

    def meta(self, run: ProbeRun, data: MajorityData, results: ProbeResults[None], best: int) -> dict:
        return {"n_train_images": len(data.y_train), "n_val_images": len(data.y_val)}


MAJORITY = MajorityProbe()


def run_majority(cfg, *, out_dir=None, progress=True, ctx=None) -> dict:
    return run_probe(MAJORITY, cfg, out_dir=out_dir, progress=progress, ctx=ctx)


KIND = ProbeKind(
    "majority",
    "segmentation",
    MajorityConfig,
    MAJORITY_SCHEMA,
    "test_probe_template:run_majority",
    files=("majority.csv",),
    help="an image's majority patch class (tests/test_probe_template.py; config: probes.majority)",
    reads="patch tokens",
)


@pytest.fixture
def majority(monkeypatch):
    monkeypatch.setitem(PROBE_KINDS, "majority", KIND)
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # run_majority's module, for run_kind's import


def test_a_kind_on_the_template_fits_and_writes_every_declared_file(project, majority, capsys):
    section = {"cache": {"model": "dino", "dataset": "seg"}}
    path = write_config(project, {"probes": {"majority": section}})
    cfg = load_config(path)
    for split in ("train", "val"):
        extract(cfg, CacheRef("dino", "seg"), split, progress=False)
    capsys.readouterr()

    assert cli_main(["probe-majority", "--config", str(path), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    folder = project / "results" / "probes" / "majority" / "dino" / "seg"
    assert sorted(p.name for p in folder.iterdir()) == sorted((*layout.PROBE_COMMON_FILES, "majority.csv"))
    provenance.check_output(cfg, "probe-majority")

    # the sweep: 2 members, each with its val metrics; epochs.csv: one row per epoch and member
    sweep = pd.read_csv(folder / "sweep.csv")
    assert list(sweep["lr"]) == [0.01, 0.03] and sweep["best"].sum() == 1
    assert len(pd.read_csv(folder / "epochs.csv")) == 25 * 2
    best = int(sweep.loc[sweep["best"], "member"].iloc[0])
    assert summary["best"]["index"] == best
    assert summary["selected_on"].startswith("val")
    assert summary["val_top1_acc"] == pytest.approx(sweep.loc[best, "top1_acc_pct"] / 100)

    # best.* is that member: its accuracy on the val vectors, recomputed here, is the reported one
    probe, meta = load_probe(folder / "best")
    assert meta["probe"] == "majority" and meta["member"]["index"] == best
    assert meta["n_selection_images"] == 0
    stores = open_probe_stores(
        cfg, CacheRef("dino", "seg"), layer=-1, task="segmentation", n_classes=None, key="probes/majority"
    )
    run = ProbeRun(cfg, cfg.probes["majority"], 1, torch.device("cpu"), stores, layout.ProbeFiles(folder, "majority"))
    norm = FinalNorm(cfg, stores, torch.device("cpu"))
    x_val, y_val = image_vectors(run, norm, "val")
    with torch.no_grad():
        logits = probe(x_val)
    assert meta["n_val_images"] == len(y_val)
    assert summary["val_top1_acc"] == pytest.approx((logits.argmax(1).numpy() == y_val).mean())
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y_val)).item()
    assert loss == pytest.approx(
        sweep.loc[best, "loss"], rel=1e-4
    )  # members differ here even where they tie on accuracy
    assert not np.isclose(sweep["loss"][0], sweep["loss"][1], rtol=1e-3)
    counts = pd.read_csv(folder / "majority.csv")
    assert counts["n_val_images"].sum() == len(y_val)
