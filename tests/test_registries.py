"""A model family and an intervention method are each one record in a registry (issue 26).

Throwaway ones are registered at test time and nothing else is edited (as
tests/test_probe_kinds.py does for a probe kind and tests/test_dataset_kinds.py for a dataset
layout): the config schema accepts them, ``python -m pipeline`` runs a real step with them
and ``snakemake -n`` plans the workflow that names them.

* ``toyvit``: DINOv2's family record under another name. Its demo model, built by the
  ``demo-model`` step with the same recipe and seed, and the store extracted from it equal
  the shipped ``dinov2`` ones value for value.
* ``toy_ablation``: zero ablation's choice under another name. Its quantify table equals the
  ``zero_ablation`` rows.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from helpers import chain_config, plan_registered, write_config
from pipeline.__main__ import main as cli_main
from pipeline.cache import CacheReader
from pipeline.config import CacheRef, ConfigError, QuantifyConfig, load_config
from pipeline.interventions import LatentEditor, ReforwardPredictor
from pipeline.methods import METHOD_REGISTRY, Method, zero_ablation
from pipeline.models.families import FAMILY_REGISTRY
from pipeline.quantify import run
from pipeline.sae import InputScaling, SparseAutoencoder

TOYVIT = dataclasses.replace(FAMILY_REGISTRY["dinov2"], name="toyvit", summary="toy: DINOv2 under another name")
TOY_METHOD = Method("toy_ablation", zero_ablation.choose, "toy: zero ablation under another name")


def register() -> None:
    """Add both toys to their registries (the only change each makes outside its own module)."""
    FAMILY_REGISTRY["toyvit"] = TOYVIT
    METHOD_REGISTRY["toy_ablation"] = TOY_METHOD


@pytest.fixture
def toys(monkeypatch):
    monkeypatch.setitem(FAMILY_REGISTRY, "toyvit", TOYVIT)
    monkeypatch.setitem(METHOD_REGISTRY, "toy_ablation", TOY_METHOD)


def _toy_model_config(folder: Path) -> Path:
    """The tiny config plus model ``toy`` (family toyvit, the dino demo's shape) on the seg dataset."""
    dino_demo = {"family": "toyvit", "hidden_size": 32, "n_layers": 3, "n_heads": 2, "image_size": 56}
    return write_config(
        folder,
        {
            "demo": {"models": {"toy": dino_demo}},
            "models": {
                "toy": {"family": "toyvit", "source": "resources/models/toy", "preprocess": {"resize": 56, "crop": 56}}
            },
            "caches": [{"model": "dino", "dataset": "seg"}, {"model": "toy", "dataset": "seg"}],
        },
    )


def test_unregistered_family_and_method_are_refused_naming_the_key(tmp_path):
    path = _toy_model_config(tmp_path)
    with pytest.raises(ConfigError, match=r"key demo/models/toy/family|key models/toy/family"):
        load_config(path)
    write_config(tmp_path, {"quantify": {"methods": ["toy_ablation"]}})
    with pytest.raises(ConfigError, match=r"key quantify/methods/0: 'toy_ablation' is not one of"):
        load_config(tmp_path / "config.yaml")


def test_a_registered_family_builds_and_extracts_like_the_family_it_copies(toys, project, capsys):
    path = _toy_model_config(project)
    cfg = load_config(path)
    assert cfg.model("toy").spec.family == "toyvit"
    assert cli_main(["demo-model", "--config", str(path), "--name", "toy"]) == 0
    for model in ("dino", "toy"):
        args = [
            "extract",
            "--config",
            str(path),
            "--model",
            model,
            "--dataset",
            "seg",
            "--split",
            "val",
            "--no-progress",
        ]
        assert cli_main(args) == 0
    capsys.readouterr()
    dino, toy = (zarr.open_group(cfg.store(CacheRef(m, "seg"), "val"), mode="r") for m in ("dino", "toy"))
    assert toy.attrs["model"]["family"] == "toyvit" and dino.attrs["model"]["family"] == "dinov2"
    assert toy.attrs["model"]["weights_sha256"] == dino.attrs["model"]["weights_sha256"]  # same recipe and seed
    np.testing.assert_array_equal(toy["acts"][:], dino["acts"][:])
    assert toy.attrs["config_hash"] != dino.attrs["config_hash"]  # the family is part of the store's identity


def test_a_registered_method_runs_through_quantify(toys, project):
    """The toy method's table equals zero ablation's on a real store (the same choice, another name)."""
    from pipeline.extract import extract
    from pipeline.models import load_backbone

    write_config(project, {"quantify": {"methods": ["toy_ablation", "zero_ablation"]}})
    cfg = load_config("config.yaml")
    assert cfg.quantify.methods == ("toy_ablation", "zero_ablation")
    extract(cfg, CacheRef("dino", "seg"), "val", progress=False)
    reader = CacheReader(cfg.store(CacheRef("dino", "seg"), "val"))
    backbone, _ = load_backbone(cfg.model("dino").spec)
    d, n_prefix, n_classes = reader.d_model, reader.n_prefix, reader.n_classes
    sae = SparseAutoencoder(d, 4 * d, seed=0)
    acts = torch.from_numpy(reader.read(-2, 0, reader.n_images))
    scaling = InputScaling.from_batches([acts[:, n_prefix:].reshape(-1, d)])
    torch.manual_seed(0)
    predictor = ReforwardPredictor(backbone, torch.nn.Linear(d, n_classes), layer=reader.block(-2), n_prefix=n_prefix)
    import xarray as xr

    f1 = np.full((n_classes, 4 * d, 1), 0.1, np.float32)
    f1[:, 7, 0] = 1.0  # latent 7: every class's best
    f1_table = xr.Dataset(
        {"f1": (("class", "latent", "threshold"), f1)},
        coords={"class": np.arange(n_classes), "latent": np.arange(4 * d), "threshold": [0.0]},
    )
    per_method, summary, _ = run(
        val=reader,
        layer=-2,
        editor=LatentEditor(sae, scaling, n_prefix=n_prefix),
        predictor=predictor,
        cfg=QuantifyConfig(methods=cfg.quantify.methods, max_firing_fraction=0.1, batch_size=4),
        max_value_S=np.ones(4 * d),
        freq_S=np.full(4 * d, 0.01),
        f1=f1_table,
        manual={},
        device="cpu",
        progress=False,
    )
    toy, zero = per_method["toy_ablation"], per_method["zero_ablation"]
    assert len(toy) >= 1 and (toy["latent"] == "7").all()
    counts = ["class_id", "n_target", "target_lost", "other_gained", "other_changed"]
    assert toy[counts].equals(zero[counts])
    assert list(summary["method"]) == ["toy_ablation", "zero_ablation"]


def test_the_workflow_plans_with_the_registered_family_and_method(tmp_path):
    import yaml

    path = chain_config(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["quantify"]["methods"] = ["toy_ablation"]
    raw["demo"]["models"]["toy"] = {**raw["demo"]["models"]["dino"], "family": "toyvit"}
    raw["models"]["toy"] = {**raw["models"]["dino"], "family": "toyvit", "source": "resources/models/toy"}
    raw["caches"].append({"model": "toy", "dataset": "seg"})
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    proc = plan_registered("test_registries", tmp_path)  # after this module's register(): the default target
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "rule quantify" in out and "rule demo_model" in out, out
    assert "cache/toy/seg/val.parts/0-of-" in out, out
