"""Tiny projects for tests and benchmarks: a config, synthetic data and random-init models.

Reads nothing; writes the datasets and models a tiny config names (``build_demo_assets``),
or a 224 px project of a chosen model size for the benchmarks (``benchmark_project``). The
tests (``tests/helpers.py``) and the benchmarks (``benchmarks/``) both build from here, so
neither reaches into the other's folder.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from pipeline.config import config_from_dict
from pipeline.data.demo import make_classification_demo, make_segmentation_demo

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
    "extract": {
        "layers": [-2, -1],
        "dtype": "float32",
        "batch_size": 3,
        "chunk_images": 4,
        "parts": 1,
        "num_workers": 0,
    },
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


def build_demo_assets(folder: Path, config: dict | None = None) -> None:
    """Generate the tiny config's datasets and models in-process (fast: no interpreter start-up)."""
    from pipeline.models import build_demo_model  # transformers: only when models are built

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


def benchmark_project(
    folder: Path,
    *,
    n_train: int,
    n_val: int,
    hidden: int,
    n_layers: int,
    extract: dict,
    device: str = "auto",
    n_heads: int = 6,
    image_size: int = 224,
    resize: int = 224,
):
    """A segmentation dataset of ``image_size`` px JPEGs and a DINOv2-architecture model (224 px
    input: resize ``resize``, crop 224) of the given size, built in ``folder`` for the
    benchmarks; returns the validated Config (one cache: dino/seg)."""
    raw = deep_update(
        TINY_CONFIG,
        {
            "device": device,
            "demo": {
                "datasets": {"seg": {"n_train": n_train, "n_val": n_val, "image_size": image_size, "n_classes": 8}},
                "models": {
                    "dino": {"hidden_size": hidden, "n_layers": n_layers, "n_heads": n_heads, "image_size": 224}
                },
            },
            "models": {
                "dino": {"source": str(folder / "resources/models/dino"), "preprocess": {"resize": resize, "crop": 224}}
            },
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
