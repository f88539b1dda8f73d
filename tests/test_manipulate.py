"""Look and play (``python -m pipeline manipulate``, :mod:`pipeline.manipulate`) on tiny projects.

Segmentation: the tiny seg chain (extract, probe-seg, stats, sae-train, sae-latents, class-f1),
built once per session by :func:`built_project` and shared with ``test_browser.py`` and
``test_figures.py`` (which adds the classification probe, quantify, dimred and the figures).
Classification: a second tiny project whose SAE reads the CLIP classification cache with
``tokens: patches+cls``; the CLS token is edited.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import REPO, run_cli, snakemake, write_config
from pipeline.config import CacheRef, ConfigError, ManipulateExample, load_config

SEG = CacheRef("dino", "seg")
CLS = CacheRef("clip", "cls")
SEGC = {"model": "dino", "dataset": "seg"}
CLSC = {"model": "clip", "dataset": "cls"}
SAE = {  # top_k 9: propose draws 9 top images per latent (see the report on proposals)
    "cache": SEGC,
    "layer": -2,
    "n_tokens": 2048,
    "batch_size": 128,
    "lrs": [3e-3],
    "sparsity_coeffs": [1e-2],
    "exp_factors": [4],
    "lr_warmup_steps": 2,
    "sparsity_warmup_steps": 4,
    "top_k": 9,
    "gallery_latents": 4,
    "shuffle_buffer": 512,
}
PROJECT = {  # everything the config can build, tiny
    "probes": {
        "seg": {
            "cache": SEGC,
            "lrs": [1e-3, 1e-2],
            "weight_decays": [1e-3],
            "epochs": 3,
            "batch_size": 128,
            "shuffle_buffer": 256,
            "n_figure_images": 2,
        },
        "cls": {"cache": CLSC, "lrs": [1e-3, 1e-2], "weight_decays": [1e-3], "epochs": 10, "batch_size": 16},
    },
    "sae": SAE,
    # max_firing_fraction 1: the tiny SAE's latents fire on > 10 % of patches (see the report on proposals)
    "quantify": {"scale": -2.0, "manual": {"1": 3}, "batch_size": 8, "max_firing_fraction": 1.0},
    "dimred": {
        "cache": SEGC,
        "layer": -1,
        "methods": ["pca", "random_projection"],
        "dims": [16, 4],
        "n_fit_tokens": 500,
        "probe_epochs": 2,
        "probe_lr": 1e-2,
    },
    "manipulate": {
        "n_top_latents": 4,
        "n_top_classes": 3,
        "examples": [
            {"name": "first", "image": 0},
            {"name": "named", "image": 1, "latents": [0, 5], "values": [1.0, -0.5]},
        ],
    },
}

_BUILT: dict[str, SimpleNamespace] = {}


def _main(args: list[str]) -> None:
    from pipeline.__main__ import main

    rc = main(args)
    assert rc == 0, f"pipeline {' '.join(args)} returned {rc}"


def _run_chain(folder: Path, cfg, ref, steps: list[list[str]]) -> None:
    """In ``folder``: extract both splits of ``ref``, then each ``python -m pipeline STEP`` in-process."""
    from pipeline.extract import extract

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        for split in ("train", "val"):
            extract(cfg, ref, split, progress=False)
        for step in steps:
            _main([step[0], "--config", "config.yaml", *step[1:]])


def built_project(tmp_path_factory, tiny_assets: Path, *, full: bool = False) -> SimpleNamespace:
    """The tiny project with the seg chain built in-process (``full``: also cls probe, quantify, dimred).

    Built once per session (one folder, grown to ``full`` when a test asks for it); callers must
    not write into it.
    """
    if "project" not in _BUILT:
        folder = tmp_path_factory.mktemp("manipulate_project")
        shutil.copytree(tiny_assets / "resources", folder / "resources")
        cfg = load_config(write_config(folder, PROJECT))
        _run_chain(
            folder,
            cfg,
            SEG,
            [
                ["probe-seg", "--no-progress"],
                ["stats", "--model", "dino", "--dataset", "seg", "--split", "train"],
                ["sae-train", "--no-progress"],
                ["sae-latents", "--no-progress"],
                ["class-f1"],
            ],
        )
        _BUILT["project"] = SimpleNamespace(folder=folder, cfg=cfg, full=False)
    built = _BUILT["project"]
    if full and not built.full:
        _run_chain(
            built.folder,
            built.cfg,
            CLS,
            [
                ["probe-cls", "--no-progress"],
                ["sae-gallery"],
                ["propose"],
                ["quantify", "--no-progress"],
                ["dimred", "--no-progress"],
                ["manipulate"],
            ],
        )
        built.full = True
    return built


@pytest.fixture(scope="module")
def seg(tmp_path_factory, tiny_assets):
    from pipeline.manipulate import Manipulator

    built = built_project(tmp_path_factory, tiny_assets)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(built.folder)
        m = Manipulator(built.cfg, device="cpu")
    return SimpleNamespace(folder=built.folder, cfg=built.cfg, m=m)


@pytest.fixture
def in_seg(seg, monkeypatch):
    monkeypatch.chdir(seg.folder)
    return seg


# ---- values, edits, the re-forward path ---------------------------------------------------------
def test_without_a_device_the_session_uses_the_configs(in_seg, monkeypatch):
    """``Manipulator(cfg)`` (the notebook API, no ``device=``) resolves the config's ``device``
    as a step does (runtime.resolve_device): ``cpu`` is the CPU, ``cuda`` on a machine without
    one is the same DeviceError, ``auto`` without CUDA the CPU."""
    import dataclasses

    from pipeline.manipulate import Manipulator
    from pipeline.runtime import DeviceError

    assert Manipulator(dataclasses.replace(in_seg.cfg, device="cpu")).device == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="config key device: cuda, but torch finds no CUDA GPU"):
        Manipulator(dataclasses.replace(in_seg.cfg, device="cuda"))
    assert Manipulator(dataclasses.replace(in_seg.cfg, device="auto")).device == torch.device("cpu")


def test_values_are_fractions_of_the_max_observed_on_train(in_seg):
    m = in_seg.m
    from pipeline.sae import load_latent_stats

    stats = load_latent_stats(in_seg.folder / "results/sae/dino/seg/layer-2/latents.zarr")
    live = np.flatnonzero(stats["max_value"].values > 0)
    s = int(live[0])
    assert m.target_values((s,), (1.0,)) == pytest.approx((float(stats["max_value"].values[s]),))
    assert m.target_values((s, s), (-1.0, 0.25)) == pytest.approx(
        (-stats["max_value"].values[s], 0.25 * stats["max_value"].values[s])
    )
    assert max(abs(v) for v in m.target_values(tuple(live), (1.0,) * len(live))) < 100  # not saev's hard-coded 100
    with pytest.raises(ConfigError, match="outside"):
        m.target_values((s,), (1.5,))
    with pytest.raises(ConfigError, match="does not exist"):
        m.target_values((m.n_latents,), (0.5,))


def test_baseline_reforward_matches_the_cached_last_block(in_seg):
    """Before = blocks l+1..N-1 + final norm + probe from the cached block l: the same as the probe
    on the final norm of the cached last block (the tiny cache is float32)."""
    m = in_seg.m
    state = m.load_image("val", 2)
    from pipeline.cache import CacheReader

    r = CacheReader(in_seg.cfg.store(SEG, "val"))
    last = torch.from_numpy(r.read(-1, 2, 3))
    with torch.no_grad():
        direct = m.probe(m.backbone.final_norm(last)[0, r.n_prefix :])
    assert torch.allclose(state.logits_before, direct, atol=1e-4, rtol=1e-4)
    assert state.f_PS.shape == (r.n_patches, m.n_latents)


def test_no_edit_changes_nothing_and_an_edit_changes_only_patch_tokens(in_seg):
    m = in_seg.m
    state = m.load_image("val", 0)
    same = m.apply(state)
    assert same.n_changed == 0 and np.array_equal(same.probs_before_C, same.probs_after_C)
    latent = int(np.flatnonzero(m.max_value_S > 0)[0])
    edited = m.edited_acts(state.acts_1TD, (latent,), (1.0,))
    assert torch.equal(edited[:, : m.n_prefix], state.acts_1TD[:, : m.n_prefix])  # CLS untouched
    assert not torch.allclose(edited[:, m.n_prefix :], state.acts_1TD[:, m.n_prefix :])
    # x' = x + (v - f(x)) W_dec[i] / scalar on every patch, v = +1 x the latent's max on train
    v = float(m.max_value_S[latent])
    expected = (v - state.f_PS[:, latent : latent + 1]) * m.sae.W_dec[latent] / m.scaling.scalar
    assert torch.allclose(edited[0, m.n_prefix :] - state.acts_1TD[0, m.n_prefix :], expected, atol=1e-4)


def test_some_top_latent_moves_the_prediction(in_seg):
    m = in_seg.m
    state = m.load_image("val", 0)
    target, _ = m.default_classes(state, None, None)
    changed = {}
    for s in m.rank_latents(state, target, 8)["latent"]:
        for u in (1.0, -1.0):
            changed[(int(s), u)] = m.apply(state, (int(s),), (u,)).n_changed
    print("patches changed per (latent, value):", changed)
    assert max(changed.values()) > 0


def test_ranking_f1_and_activation(in_seg):
    m = in_seg.m
    assert m.rank_by == "f1"  # class_f1.zarr exists
    state = m.load_image("val", 0)
    target, other = m.default_classes(state, None, None)
    assert target != other and target >= 1 and other >= 1
    labels = state.labels
    assert target == int(np.bincount(labels[labels > 0]).argmax())  # the most frequent labelled class
    f1 = m.rank_latents(state, target, 4)
    assert len(f1) == 4 and f1["score_kind"].str.startswith("train F1").all()
    assert (np.diff(f1["score"].to_numpy()) <= 1e-9).all()
    # values are the latents' on this image (zeros allowed) and never above the train max... on train
    assert (f1["value_max_on_image"] >= 0).all() and (f1["train_max"] >= 0).all()
    m.rank_by = "activation"
    try:
        act = m.rank_latents(state, target, 4)
        f = state.f_PS.numpy()[labels == target].mean(0)
        assert act["latent"].tolist() == np.argsort(-f, kind="stable")[:4].tolist()
        assert act["score"].to_numpy() == pytest.approx(f[act["latent"]])
        absent = next(
            (c for c in range(1, m.n_classes) if not (labels == c).any() and not (state.pred_before == c).any()), None
        )
        if absent is not None:  # a class not on this image: ranked by its train specificity
            fallback = m.rank_latents(state, absent, 3)
            assert fallback["score_kind"].str.contains("train tokens").all()
            assert fallback["value_on_class_tokens"].isna().all()
    finally:
        m.rank_by = "f1"


def test_run_example_writes_tables_figures_and_summary(in_seg, tmp_path):
    from pipeline.manipulate import FILES, run_example

    m = in_seg.m
    summary = run_example(m, ManipulateExample("t", 0), tmp_path / "t")
    for name in FILES["segmentation"]:
        assert (tmp_path / "t" / name).stat().st_size > 0, name
    latents = pd.read_csv(tmp_path / "t" / "latents.csv")
    assert set(latents.role) == {"class", "other class"}
    chosen = latents.dropna(subset=["unit_value"])
    assert sorted(chosen.unit_value.unique().tolist()) in ([-1.0, 1.0], [-1.0])
    assert np.allclose(chosen.set_to, chosen.unit_value * chosen.train_max)
    probs = pd.read_csv(tmp_path / "t" / "probabilities.csv")
    assert probs.prob_before_pct.sum() == pytest.approx(
        100.0, abs=1e-2
    ) and probs.prob_after_pct.sum() == pytest.approx(100.0, abs=1e-2)
    assert 0 not in probs.class_id.tolist()  # the seg probe predicts real classes only
    n_patches = 16
    assert probs.patches_before.sum() == n_patches == probs.patches_after.sum()
    changed = int(np.abs(probs.patches_after - probs.patches_before).sum())
    assert summary["n_changed"] >= changed // 2
    assert summary["task"] == "segmentation" and summary["edited_tokens"] == "every patch token"
    assert summary["latents"] == chosen.drop_duplicates("latent").latent.tolist()
    assert json.loads((tmp_path / "t" / "summary.json").read_text())["readout"] == summary["readout"]
    from PIL import Image

    with Image.open(tmp_path / "t" / "maps.png") as im:
        assert im.width > 3 * 224 and im.height > 224  # image | before | after, legend below


def test_cli_configured_and_ad_hoc_examples(seg, tmp_path, monkeypatch, capsys):
    proc = run_cli(
        ["manipulate", "--config", "config.yaml", "--example", "named", "--out", str(tmp_path / "named")], seg.folder
    )
    summary = json.loads(proc.stdout)["examples"][0]
    assert summary["latents"] == [0, 5] and summary["unit_values"] == [1.0, -0.5]
    latents = pd.read_csv(tmp_path / "named" / "latents.csv")
    assert set(latents.latent[latents.unit_value.notna()]) == {0, 5}
    # the rest in-process (same entry point, no interpreter start-up)
    from pipeline.__main__ import main

    monkeypatch.chdir(seg.folder)
    capsys.readouterr()
    assert (
        main(
            [
                "manipulate",
                "--image",
                "images/validation/ADE_val_00000003.jpg",
                "--latents",
                "1",
                "--values",
                "-1",
                "--out",
                str(tmp_path / "adhoc"),
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["examples"][0]["image_index"] == 2
    assert main(["manipulate", "--example", "nope"]) == 2
    assert "no example named nope" in capsys.readouterr().err
    assert main(["manipulate", "--image", "0", "--latents", "1", "--values", "3"]) == 2
    assert "outside [-1, 1]" in capsys.readouterr().err
    assert main(["manipulate", "--image", "999"]) == 2
    assert "outside [0, 12)" in capsys.readouterr().err


# ---- config -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "manipulate, message",
    [
        ({"examples": [{"name": "a", "image": 0, "values": [2.0]}]}, "values/0"),
        ({"examples": [{"name": "a", "image": 0, "latents": [1, 2], "values": [0.5]}]}, "1 values for 2 latents"),
        ({"examples": [{"name": "a", "image": 0}, {"name": "a", "image": 1}]}, "repeated: a"),
        ({"examples": [{"name": "a/b", "image": 0}]}, "examples/0/name"),
        ({"rank_by": "magic"}, "rank_by"),
    ],
)
def test_config_errors_name_the_key(tmp_path, manipulate, message):
    write_config(tmp_path, {"sae": SAE, "manipulate": manipulate})
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "config.yaml")


def test_config_needs_an_sae_and_parses_examples(tmp_path):
    write_config(tmp_path, {"manipulate": {"examples": [{"name": "a", "image": 0}]}})
    with pytest.raises(ConfigError, match="key manipulate: needs an `sae`"):
        load_config(tmp_path / "config.yaml")
    write_config(
        tmp_path,
        {
            "sae": SAE,
            "manipulate": {
                "examples": [{"name": "a", "image": "x.jpg", "class": "red", "latents": [3], "values": [-1]}]
            },
        },
    )
    ex = load_config(tmp_path / "config.yaml").manipulate.examples[0]
    assert (ex.image, ex.split, ex.target_class, ex.latents, ex.values) == ("x.jpg", "val", "red", (3,), (-1.0,))
    # a patches-only SAE still may not sit on a classification cache; patches+cls may
    write_config(tmp_path, {"sae": {**SAE, "cache": CLSC}})
    with pytest.raises(ConfigError, match="patches\\+cls"):
        load_config(tmp_path / "config.yaml")
    write_config(tmp_path, {"sae": {**SAE, "cache": CLSC, "tokens": "patches+cls"}})
    assert load_config(tmp_path / "config.yaml").sae.cache == CLS


def test_the_demo_config_and_the_rule(tmp_path):
    cfg = load_config(REPO / "config.yaml")
    assert cfg.manipulate is not None and cfg.manipulate.examples
    write_config(tmp_path, PROJECT)
    proc = snakemake(tmp_path, "-n", "manipulate", timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert (
        "manipulate_example" in out
        and "results/manipulate/first/maps.png" in out
        and "results/manipulate/named/summary.json" in out
    )
    # an example that names no probe for its task is refused when the workflow is parsed
    write_config(tmp_path, {**{k: v for k, v in PROJECT.items() if k not in ("probes", "quantify")}})
    proc = snakemake(tmp_path, "-n", "manipulate", timeout=300)
    assert proc.returncode != 0 and "probes/seg" in proc.stdout + proc.stderr


# ---- classification: an SAE on the CLS cache (tokens patches+cls) --------------------------------
CLS_PROJECT = {
    "caches": [CLSC],
    "sae": {**SAE, "cache": CLSC, "tokens": "patches+cls", "n_tokens": 4096, "batch_size": 64, "shuffle_buffer": 256},
    "probes": {"cls": {"cache": CLSC, "lrs": [1e-2, 3e-2], "weight_decays": [1e-3], "epochs": 40, "batch_size": 16}},
    "manipulate": {"examples": [{"name": "cls-first", "image": 0}]},
}


@pytest.fixture(scope="module")
def cls_project(tiny_assets, tmp_path_factory):
    folder = tmp_path_factory.mktemp("manipulate_cls")
    shutil.copytree(tiny_assets / "resources", folder / "resources")
    cfg = load_config(write_config(folder, CLS_PROJECT))
    _run_chain(
        folder,
        cfg,
        CLS,
        [
            ["stats", "--model", "clip", "--dataset", "cls", "--split", "train"],
            ["sae-train", "--no-progress"],
            ["sae-latents", "--no-progress"],
            ["probe-cls", "--no-progress"],
        ],
    )
    return SimpleNamespace(folder=folder, cfg=cfg)


def test_classification_edits_the_cls_token(cls_project, monkeypatch):
    from pipeline.manipulate import FILES, Manipulator, run_example

    monkeypatch.chdir(cls_project.folder)
    m = Manipulator(cls_project.cfg, device="cpu")
    assert m.task == "classification" and m.rank_by == "activation" and "CLS" in m.max_value_note
    state = m.load_image("val", 0)
    assert state.f_PS.shape == (1, m.n_latents)
    target, other = m.default_classes(state, None, None)
    assert target == int(state.labels[0]) and other != target
    latent = int(m.rank_latents(state, target, 1).latent[0])
    edited = m.edited_acts(state.acts_1TD, (latent,), (-1.0,))
    assert torch.equal(edited[:, 1:], state.acts_1TD[:, 1:])  # only the CLS token moves
    v = -float(m.max_value_S[latent])
    expected = (v - state.f_PS[0, latent]) * m.sae.W_dec[latent] / m.scaling.scalar
    assert torch.allclose(edited[0, 0] - state.acts_1TD[0, 0], expected, atol=1e-4)
    result = m.apply(state, (latent,), (-1.0,))
    assert result.probs_after_C.sum() == pytest.approx(1.0, abs=1e-5)
    assert not np.allclose(result.probs_before_C, result.probs_after_C)
    summary = run_example(m, ManipulateExample("cls-first", 0), cls_project.folder / "results/manipulate/cls-first")
    for name in FILES["classification"]:
        assert (cls_project.folder / "results/manipulate/cls-first" / name).exists(), name
    assert summary["edited_tokens"] == "the CLS token" and summary["task"] == "classification"
    probs = pd.read_csv(cls_project.folder / "results/manipulate/cls-first/probabilities.csv")
    assert len(probs) == m.n_classes and probs.prob_before_pct.sum() == pytest.approx(100.0, abs=1e-2)
    print("classification example:", summary["top_classes_before"][0], "->", summary["top_classes_after"][0])


@pytest.mark.slow
def test_snakemake_builds_a_classification_example_from_nothing(tmp_path):
    """`snakemake manipulate` on the classification config: demo data and model, cache, probe, SAE, example (~1 min)."""
    write_config(tmp_path, CLS_PROJECT)
    proc = snakemake(tmp_path, "--cores", "2", "manipulate")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "results" / "manipulate" / "cls-first"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "classification" and summary["edited_tokens"] == "the CLS token"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "latents.csv",
            "probabilities.csv",
            "probabilities.html",
            "probabilities.png",
            "probabilities.svg",
            "summary.json",
        ]
    )
