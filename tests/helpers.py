"""Test helpers: a tiny project (config, synthetic data, random-init models) in a temp folder.

Every test that needs a cache builds one here with the real generators and
loaders, small enough to run in seconds on 2 cores.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent

TINY_CONFIG = {
    "paths": {"resources": "resources", "cache": "cache", "results": "results"},
    "threads": 2,
    "device": "cpu",
    "demo": {
        "seed": 0,
        "datasets": {
            "seg": {"kind": "segmentation", "n_train": 24, "n_val": 12, "n_classes": 4, "image_size": 56},
            "cls": {"kind": "classification", "n_per_class": 8, "n_classes": 3, "image_size": 64},
        },
        "models": {
            "dino": {"family": "dinov2", "hidden_size": 32, "n_layers": 3, "n_heads": 2, "image_size": 56},
            "clip": {"family": "clip", "hidden_size": 32, "n_layers": 3, "n_heads": 2, "image_size": 64},
        },
    },
    "models": {
        "dino": {"family": "dinov2", "source": "resources/models/dino", "preprocess": {"resize": 56, "crop": 56}},
        "clip": {"family": "clip", "source": "resources/models/clip", "preprocess": {"resize": 64, "crop": 64}},
    },
    "datasets": {
        "seg": {"kind": "ade20k", "root": "resources/data/seg"},
        "cls": {"kind": "imagefolder", "root": "resources/data/cls", "val_fraction": 0.25},
    },
    "extract": {"layers": [-2, -1], "dtype": "float32", "batch_size": 3, "chunk_images": 4, "parts": 1, "num_workers": 0},
    "caches": [{"model": "dino", "dataset": "seg"}, {"model": "clip", "dataset": "cls"}],
}


def deep_update(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


def write_config(folder: Path, overrides: dict | None = None, name: str = "config.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(deep_update(TINY_CONFIG, overrides or {}), sort_keys=False))
    return path


def run_cli(args: list[str], cwd: Path, *, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m pipeline ARGS`` in ``cwd``; returns the finished process (stdout/stderr captured)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True, text=True, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"pipeline {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def build_demo_assets(folder: Path, config: dict | None = None) -> None:
    """Generate the tiny config's datasets and models in-process (fast: no interpreter start-up)."""
    from pipeline.config import config_from_dict
    from pipeline.data.demo import make_classification_demo, make_segmentation_demo
    from pipeline.models import build_demo_model

    raw = config or TINY_CONFIG
    cfg = config_from_dict(raw)
    for name, spec in raw["demo"]["datasets"].items():
        spec = dict(spec)
        root = folder / cfg.dataset(name).root
        if spec.pop("kind") == "segmentation":
            make_segmentation_demo(root, seed=0, **spec)
        else:
            make_classification_demo(root, seed=0, **spec)
    for name, spec in raw["demo"]["models"].items():
        spec = dict(spec)
        build_demo_model(spec.pop("family"), folder / cfg.model(name).spec.source, seed=0, **spec)


# The whole chain on the tiny data: one seg cache, a small probe sweep, a small SAE sweep,
# quantify. Used by the end-to-end workflow tests (local and SLURM).
CHAIN_OVERRIDES = {
    "caches": [{"model": "dino", "dataset": "seg"}],
    "extract": {"parts": 2},
    "probes": {
        "seg": {"cache": {"model": "dino", "dataset": "seg"}, "lrs": [1.0e-3, 1.0e-2], "weight_decays": [1.0e-3], "epochs": 3, "batch_size": 256, "n_figure_images": 2}
    },
    "sae": {
        "cache": {"model": "dino", "dataset": "seg"}, "layer": -2, "n_tokens": 4096, "batch_size": 256,
        "lrs": [3.0e-3], "sparsity_coeffs": [1.0e-2], "exp_factors": [4], "lr_warmup_steps": 2,
        "sparsity_warmup_steps": 4, "top_k": 4, "gallery_latents": 4, "shuffle_buffer": 1024,
    },
    # tiny SAEs have few selective latents: let auto features use any latent that fires
    "quantify": {"scale": -2.0, "manual": {"1": 3}, "batch_size": 8, "max_firing_fraction": 1.0},
}


def chain_config(folder: Path) -> Path:
    """The tiny chain config in ``folder`` (no classification cache: quantify needs seg only)."""
    raw = deep_update(TINY_CONFIG, CHAIN_OVERRIDES)
    raw["demo"]["datasets"].pop("cls")
    raw["demo"]["models"].pop("clip")
    raw["models"].pop("clip")
    raw["datasets"].pop("cls")
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def benchmark_project(folder: Path, *, n_train: int, n_val: int, hidden: int, n_layers: int, extract: dict, device: str = "auto",
                      n_heads: int = 6):
    """A 224 px segmentation dataset and a DINOv2-architecture model of the given size, built in
    ``folder`` for the benchmarks; returns the validated Config (one cache: dino/seg)."""
    from pipeline.config import config_from_dict

    raw = deep_update(
        TINY_CONFIG,
        {
            "device": device,
            "demo": {
                "datasets": {"seg": {"n_train": n_train, "n_val": n_val, "image_size": 224, "n_classes": 8}},
                "models": {"dino": {"hidden_size": hidden, "n_layers": n_layers, "n_heads": n_heads, "image_size": 224}},
            },
            "models": {"dino": {"source": str(folder / "resources/models/dino"), "preprocess": {"resize": 224, "crop": 224}}},
            "datasets": {"seg": {"root": str(folder / "resources/data/seg")}},
            "paths": {"cache": str(folder / "cache")},
            "extract": extract,
            "caches": [{"model": "dino", "dataset": "seg"}],
        },
    )
    for section in ("datasets", "models"):
        raw["demo"][section] = {k: v for k, v in raw["demo"][section].items() if k in ("seg", "dino")}
    build_demo_assets(folder, raw)
    return config_from_dict(raw)
