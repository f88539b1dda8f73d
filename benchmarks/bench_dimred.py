"""The STEGO study's cost: the whole dim sweep from the cache ÷ one ViT forward pass over the same images.

Prints one ratio measured in one run (absolute times depend on the machine):

    (whole ``run_dimred_study``: sample + standardise + fit the reductions + train every
     linear probe and k-means + one val pass scoring all of them + write the outputs)
    ÷ (one forward pass of the backbone over as many images as the study reads, train + val,
       at the store's image size and the config's extraction batch size)

The forward pass runs on random pixels (a ViT's cost does not depend on the pixel values),
so image decoding is not counted: the denominator is the cheapest possible "just run the
model again", the numerator everything the study costs once the cache exists.

Data: the ``dimred`` section of ``--config`` (default: the repo's demo ``config.yaml``) when
both of its stores are finalized; otherwise a small cache built in a temp folder with the
builders of ``pipeline.testing`` (96 + 24 synthetic images of 224 px, random-init 6-block DINOv2 with D = 96;
about a minute). Outputs go to a temp folder.

    python benchmarks/bench_dimred.py [--config config.yaml]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's pipeline, also when another one is installed

from pipeline.cache import CacheReader  # noqa: E402
from pipeline.config import Config, config_from_dict, load_config  # noqa: E402
from pipeline.context import RunContext  # noqa: E402
from pipeline.runtime import describe_device  # noqa: E402

# The tests' tiny project, grown to demo size (224 px, 6-block D = 96 random DINOv2), so the
# ViT forward pass is not trivially small.
SMALL_OVERRIDES = {
    "demo": {
        "datasets": {"seg": {"n_train": 96, "n_val": 24, "n_classes": 8, "image_size": 224}},
        "models": {"dino": {"hidden_size": 96, "n_layers": 6, "n_heads": 4, "image_size": 224}},
    },
    "models": {"dino": {"preprocess": {"resize": 224, "crop": 224}}},
    "extract": {"dtype": "float16", "batch_size": 16, "chunk_images": 32},
    "dimred": {
        "cache": {"model": "dino", "dataset": "seg"},
        "dims": [96, 48, 24, 12, 6, 3],
        "n_fit_tokens": 20000,
        "probe_epochs": 10,
        "probe_lr": 1e-2,
    },
}


def _complete(cfg: Config) -> bool:
    if cfg.dimred is None:
        return False
    for split in ("train", "val"):
        try:
            CacheReader(cfg.store(cfg.dimred.cache, split))
        except Exception:  # noqa: BLE001 - missing or unfinished: build a small one
            return False
    return True


def build_small(folder: Path) -> Config:
    """A small seg cache made with pipeline.testing (the tests' tiny config, more images) in ``folder``."""
    from pipeline.extract import extract
    from pipeline.testing import TINY_CONFIG, build_demo_assets, deep_update

    os.chdir(folder)
    raw = deep_update(TINY_CONFIG, SMALL_OVERRIDES)
    build_demo_assets(folder, raw)
    cfg = config_from_dict(raw, source=folder / "config.yaml")
    for split in ("train", "val"):
        extract(cfg, cfg.dimred.cache, split, progress=False)
    return cfg


def forward_seconds(cfg: Config, n_images: int, image_size: int, device: torch.device) -> float:
    """Wall time of one forward pass over ``n_images`` random images (after one warm-up batch)."""
    from pipeline.models import load_backbone

    backbone, _ = load_backbone(cfg.model(cfg.dimred.cache.model).spec, device=device)
    bs = cfg.extract.batch_size
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn(bs, 3, image_size, image_size, generator=gen).to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.inference_mode():
        backbone(pixels[:1])
        sync()
        t0 = time.perf_counter()
        for s in range(0, n_images, bs):
            backbone(pixels[: min(bs, n_images - s)])
        sync()
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=REPO / "config.yaml")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from pipeline.dimred_study import run_dimred_study

    tmp = tempfile.TemporaryDirectory(prefix="bench_dimred_")
    config = args.config.resolve()
    os.chdir(config.parent)
    cfg = load_config(config)
    source = f"the dimred cache of {args.config}"
    if not _complete(cfg):
        print(f"no finalized dimred cache for {args.config.name}; building a small one in {tmp.name} ...", flush=True)
        cfg = build_small(Path(tmp.name))
        source = "small cache built with pipeline.testing in a temp folder"
    cfg = dataclasses.replace(cfg, paths=dataclasses.replace(cfg.paths, results=Path(tmp.name) / "results"))
    ctx = RunContext.start(cfg)
    threads, device = ctx.threads, ctx.device
    train = CacheReader(cfg.store(cfg.dimred.cache, "train"))
    val = CacheReader(cfg.store(cfg.dimred.cache, "val"))
    n_images = int(train.valid.sum() + val.valid.sum())
    image_size = int(train.attrs["image_size"])

    t0 = time.perf_counter()
    summary = run_dimred_study(cfg, progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t_sweep = time.perf_counter() - t0
    t_forward = forward_seconds(cfg, n_images, image_size, device)

    n_variants = 1 + sum(len(summary["dims"]) for _ in summary["methods"])
    print(
        f"\ndimred benchmark: {source}; model {cfg.dimred.cache.model} (D={summary['d_model']}), "
        f"{n_images} images ({train.n_patches} patches each, {image_size} px); {describe_device(device)}, {threads} threads\n"
    )
    print(
        f"sweep: {n_variants} feature sets (full + {', '.join(summary['methods'])} x dims {summary['dims']}), "
        f"2 probes each, {summary['n_fit_tokens']} fit tokens"
    )
    for part, secs in summary["seconds"].items():
        print(f"  {part:<16} {secs:8.2f} s")
    print(f"whole dim sweep from the cache      {t_sweep:8.2f} s")
    print(f"one ViT forward pass, same images   {t_forward:8.2f} s  (random pixels, batch {cfg.extract.batch_size})")
    print(f"\nratio sweep / forward: {t_sweep / t_forward:.2f}")
    os.chdir(REPO)
    tmp.cleanup()


if __name__ == "__main__":
    main()
