"""Every downstream stage with every SAE kind, on the tiny project.

One ``sae-train`` sweep of all kinds (ReLU, TopK + AuxK, BatchTopK, TopK + Matryoshka); then each
member is imported as ``sae.source: {checkpoint: …}`` into its own results folder and the stages
that read an SAE run on it: latent statistics, class F1, gallery, proposals, quantify (auto and
manual features: the edit and the re-forward), manipulate (the marimo app's session: a slider
value set and re-forwarded).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from test_manipulate import PROJECT, SEG, _run_chain

from helpers import write_config
from pipeline.config import load_config

KINDS = [
    {"kind": "relu"},
    {"kind": "topk", "k": [4], "auxk": {"k_aux": 16, "dead_tokens": 512}},
    {"kind": "batchtopk", "k": [4]},
    {"kind": "topk", "k": [4], "matryoshka": {"prefixes": [0.25, 1.0]}},
]
SLUGS = [
    "x4_lr0.003_lambda0.01",
    "x4_lr0.003_topk_k4_auxk",
    "x4_lr0.003_batchtopk_k4_momentum0.1",
    "x4_lr0.003_topk_k4_mat2",
]
DOWNSTREAM = [
    ["stats", "--model", "dino", "--dataset", "seg", "--split", "train"],
    ["sae-train", "--no-progress"],  # imports the member (sae.source: checkpoint)
    ["sae-latents", "--no-progress"],
    ["class-f1"],
    ["sae-gallery"],
    ["propose"],
    ["quantify", "--no-progress"],
    ["manipulate"],
]


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_assets):
    """The tiny project with the seg probe and one sweep of every kind (members in results/)."""
    folder = tmp_path_factory.mktemp("kinds_project")
    shutil.copytree(tiny_assets / "resources", folder / "resources")
    project = {**PROJECT, "sae": {**PROJECT["sae"], "kinds": KINDS, "max_l0": 1e9}}
    cfg = load_config(write_config(folder, project))
    _run_chain(
        folder,
        cfg,
        SEG,
        [
            ["probe-seg", "--no-progress"],
            ["stats", "--model", "dino", "--dataset", "seg", "--split", "train"],
            ["sae-train", "--no-progress"],
        ],
    )
    return folder, project


def test_the_sweep_trains_every_kind(swept):
    folder, _ = swept
    table = pd.read_csv(folder / "results/sae/dino/seg/layer-2/sweep.csv")
    assert list(table["slug"]) == SLUGS
    assert list(table["kind"]) == ["relu", "topk", "batchtopk", "topk"]
    assert (table.loc[table["kind"] == "topk", "l0"] <= 4.0 + 1e-9).all()  # TopK: at most k per token
    assert np.isfinite(table["pca_normalized_mse"]).all()
    prefixes = pd.read_csv(folder / "results/sae/dino/seg/layer-2/sweep_prefixes.csv")
    assert list(prefixes["slug"]) == [SLUGS[3]] * 2 and list(prefixes["n_latents"]) == [32, 128]


@pytest.mark.parametrize(
    "member",
    range(len(KINDS)),
    ids=[k["kind"] + ("+mat" if "matryoshka" in k else "") for k in KINDS],
)
def test_every_downstream_stage_runs_with_the_kind(swept, member, monkeypatch):
    folder, project = swept
    slug = SLUGS[member]
    results = f"results/{slug}"
    sae = {**project["sae"], "source": {"checkpoint": f"results/sae/dino/seg/layer-2/members/{slug}.pt"}}
    (folder / results / "probes").mkdir(parents=True, exist_ok=True)
    shutil.copytree(folder / "results/probes/seg", folder / results / "probes/seg", dirs_exist_ok=True)
    name = f"{slug}.yaml"
    cfg = load_config(
        write_config(
            folder, {**project, "paths": {**project.get("paths", {}), "results": results}, "sae": sae}, name=name
        )
    )
    monkeypatch.chdir(folder)
    from pipeline.__main__ import main

    for step in DOWNSTREAM:
        assert main([step[0], "--config", name, *step[1:]]) == 0, step

    out = folder / results / "sae/dino/seg/layer-2"
    from pipeline.sae import load_checkpoint, load_latent_stats

    sae_model, header, _ = load_checkpoint(out / "sae.pt")
    assert sae_model.kind == KINDS[member]["kind"]
    stats = load_latent_stats(out / "latents.zarr")
    assert (stats["max_value"].values >= 0).all() and (stats["max_value"].values > 0).any()
    if sae_model.kind == "topk":  # per token at most k latents fire: the mean firing count is ≤ k
        assert float(stats["freq"].values.sum()) <= 4.0 + 1e-6
    summary = pd.read_csv(folder / results / "quantitative.csv")
    assert summary["method"].tolist() == ["random_vector", "random_feature", "auto_feature", "manual_feature"]
    manual = pd.read_csv(folder / results / "quantitative/manual_feature.csv", dtype={"latent": str})
    assert set(manual["status"]) <= {"evaluated", "skipped"}
    assert (out / "gallery/index.html").exists()

    # the marimo app's session: a slider at +1 sets the latent to its max observed value on train
    from pipeline.manipulate import Manipulator

    m = Manipulator(cfg, device="cpu")
    live = int(np.flatnonzero(stats["max_value"].values > 0)[0])
    state = m.load_image("val", 0)
    result = m.apply(state, (live,), (1.0,))
    assert result.target_values == pytest.approx((float(stats["max_value"].values[live]),))
    # the edit moves the patches by (target − f) · W_dec / scalar: set after encoding, then decoded
    edited = m.edited_acts(state.acts_1TD, (live,), (1.0,))
    f_P = m.encode(state.acts_1TD)[:, live]
    expected = (result.target_values[0] - f_P)[:, None] * m.sae.W_dec[live] / m.scaling.scalar
    torch.testing.assert_close(edited[0, m.edited_tokens] - state.acts_1TD[0, m.edited_tokens], expected)
    assert json.loads((out / "chosen.json").read_text())["kind"] == KINDS[member]["kind"]
