"""Where every stage writes: one function per output, used by the CLI steps and the Snakefile.

Layers appear in paths as written in the config (``layer-2``), so the workflow can name
its outputs before any model is loaded; files inside record the resolved block number.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import CacheRef, Config


def layer_tag(layer: int) -> str:
    return f"layer{layer}"


def stats_path(cfg: Config, ref: CacheRef, split: str) -> Path:
    return cfg.paths.results / "stats" / ref.model / ref.dataset / f"{split}.json"


def probe_dir(cfg: Config, task: str) -> Path:
    """``results/probes/<seg|cls>/<model>/<dataset>``."""
    section = cfg.seg_probe if task == "seg" else cfg.cls_probe
    return cfg.paths.results / "probes" / task / section.cache.model / section.cache.dataset


def probe_stem(cfg: Config) -> Path:
    """The best segmentation probe: ``<stem>.safetensors`` + ``<stem>.json``."""
    return probe_dir(cfg, "seg") / "best"


def sae_dir(cfg: Config) -> Path:
    """``results/sae/<model>/<dataset>/layer<L>`` (L as in the config)."""
    return cfg.paths.results / "sae" / cfg.sae.cache.model / cfg.sae.cache.dataset / layer_tag(cfg.sae.layer)


def class_f1_path(cfg: Config) -> Path:
    return sae_dir(cfg) / "class_f1.zarr"


def quantify_dir(cfg: Config) -> Path:
    return cfg.paths.results / "quantitative"


def quantitative_csv(cfg: Config) -> Path:
    return cfg.paths.results / "quantitative.csv"
