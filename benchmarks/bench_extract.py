"""Extraction benchmark: ratios from one run, not absolute times (this machine is shared and noisy).

1. extraction images/s ÷ bare forward images/s — the same model, images, batch size and
   threads; "bare" = the HF model's own forward over images already decoded and
   preprocessed in memory; "extraction" = the whole `pipeline.extract` (decode, labels,
   forward, float16 conversion, Blosc compression, zarr writes, finalize). Target ≥ 0.95.
2. cache bytes on disk ÷ bytes of the same tokens as raw float32 (saev's layout). Target ≤ 0.5.

    python benchmarks/bench_extract.py [--images 64] [--hidden 384] [--layers 12]

The default model is ViT-S/14-sized (random init, DINOv2 architecture) at 224 px.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    from helpers import benchmark_project

    from pipeline.config import CacheRef
    from pipeline.data import load_rgb, preprocess_image
    from pipeline.extract import extract, split_data
    from pipeline.models import load_backbone
    from pipeline.runtime import describe_device, resolve_device, set_threads

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = benchmark_project(tmp, n_train=args.images, n_val=1, hidden=args.hidden, n_layers=args.layers, extract={"dtype": "float16", "batch_size": args.batch_size, "chunk_images": 32, "num_workers": 1}, device=args.device)
        threads = set_threads(cfg.threads)
        device = resolve_device(cfg.device)

        # bare forward: images decoded and preprocessed beforehand, HF model forward only
        model = cfg.model("dino")
        backbone, _ = load_backbone(model.spec, device=device)
        data = split_data(cfg, "seg", "train")
        pixels = torch.stack([preprocess_image(load_rgb(s.image), model.preprocess) for s in data.samples])
        with torch.inference_mode():
            backbone.hf(pixel_values=pixels[: args.batch_size].to(device))  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for s in range(0, len(pixels), args.batch_size):
                backbone.hf(pixel_values=pixels[s : s + args.batch_size].to(device))
            if device.type == "cuda":
                torch.cuda.synchronize()
            bare = len(pixels) / (time.perf_counter() - t0)

        t0 = time.perf_counter()
        report = extract(cfg, CacheRef("dino", "seg"), "train", progress=False)
        whole = args.images / (time.perf_counter() - t0)
        loop = report.images_per_second

        store = cfg.store(CacheRef("dino", "seg"), "train")
        disk = sum(p.stat().st_size for p in (store / "acts").rglob("*") if p.is_file())
        n_layers = len(cfg.extract.layers)
        tokens = 1 + (224 // 14) ** 2
        raw_f32 = args.images * n_layers * tokens * args.hidden * 4

    print(f"device: {describe_device(device)}, threads: {threads}, model: DINOv2 arch D={args.hidden} x {args.layers} blocks, {args.images} images")
    print(f"{'ratio':<58} {'value':>7}  target")
    print(f"{'extraction loop img/s / bare forward img/s':<58} {loop / bare:7.3f}  >= 0.95")
    print(f"{'whole extract() call img/s / bare forward img/s':<58} {whole / bare:7.3f}  (incl. model load, store creation, finalize)")
    print(f"{'cache bytes / raw float32 bytes':<58} {disk / raw_f32:7.3f}  <= 0.5")


if __name__ == "__main__":
    main()
