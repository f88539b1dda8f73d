"""Quantify benchmark: edited re-forwards from the cache vs hooked full forwards (ratios from one run).

Edited-image re-forwards per second (cached block-l acts → SAE edit → blocks l+1…N−1 → final
norm → probe, one edit per batch of images; `quantify` stacks several edits per forward, which
this does not measure) ÷ full forwards per second of the same images with the same edit applied
by a forward hook at block l (pixels already in memory; same model, threads and batch size). Printed beside the ideal N / (N − l − 1)
(the fraction of blocks skipped). Target ≥ 0.8 × ideal.

    python benchmarks/bench_quantify.py [--images 32] [--hidden 384] [--layers 12]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's pipeline, also when another one is installed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    from pipeline.cache import CacheReader
    from pipeline.config import CacheRef
    from pipeline.context import RunContext
    from pipeline.data import load_rgb, preprocess_image
    from pipeline.extract import extract, split_data
    from pipeline.interventions import LatentEditor, ReforwardPredictor
    from pipeline.methods import Edit
    from pipeline.models import load_backbone
    from pipeline.runtime import describe_device
    from pipeline.sae import InputScaling, SparseAutoencoder
    from pipeline.testing import benchmark_project

    n = args.layers
    edit_layers = [n // 2, n - 2]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = benchmark_project(
            tmp,
            n_train=1,
            n_val=args.images,
            hidden=args.hidden,
            n_layers=n,
            extract={"layers": edit_layers, "dtype": "float16", "batch_size": args.batch_size, "chunk_images": 32},
            device=args.device,
        )
        ctx = RunContext.start(cfg)
        threads, device = ctx.threads, ctx.device
        extract(cfg, CacheRef("dino", "seg"), "val", progress=False)
        reader = CacheReader(cfg.store(CacheRef("dino", "seg"), "val"))
        backbone, _ = load_backbone(cfg.model("dino").spec, device=device)
        data = split_data(cfg, "seg", "val")
        pixels = torch.stack(
            [preprocess_image(load_rgb(s.image), cfg.model("dino").preprocess) for s in data.samples]
        ).to(device)
        sae = SparseAutoencoder(args.hidden, 8 * args.hidden).to(device)
        probe = torch.nn.Linear(args.hidden, 9).to(device)
        bs = args.batch_size

        def timed(fn) -> float:
            fn()  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t0

        rows = []
        for layer in edit_layers:
            acts = torch.from_numpy(reader.read(layer, 0, reader.n_images)).to(device, torch.float32)
            scaling = InputScaling.from_batches([acts[:, 1:].reshape(-1, args.hidden).cpu()])
            editor = LatentEditor(sae, scaling, n_prefix=reader.n_prefix)
            predictor = ReforwardPredictor(backbone, probe, layer=layer, n_prefix=reader.n_prefix)
            edit = Edit((3,), (-2.0,))

            def reforward():
                with torch.inference_mode():
                    for s in range(0, len(acts), bs):
                        predictor.predict(editor.apply(acts[s : s + bs], edit))

            def hooked():
                handle = backbone.edit_block_output(layer, lambda x: editor.apply(x, edit).to(x.dtype))
                try:
                    with torch.inference_mode():
                        for s in range(0, len(pixels), bs):
                            out = backbone.forward(pixels[s : s + bs])
                            probe(out[:, reader.n_prefix :]).argmax(-1)
                finally:
                    handle.remove()

            ratio = timed(hooked) / timed(reforward)
            ideal = n / (n - layer - 1)
            rows.append((layer, ratio, ideal))

    print(
        f"device: {describe_device(device)}, threads: {threads}, model: DINOv2 arch D={args.hidden} x {n} blocks, {args.images} images, batch {bs}"
    )
    print(
        f"{'edit at block':<14} {'re-forward / hooked full forward (img/s)':>42} {'ideal N/(N-l-1)':>16} {'ratio / ideal':>14}  target"
    )
    for layer, ratio, ideal in rows:
        print(f"{layer:<14} {ratio:42.2f} {ideal:16.2f} {ratio / ideal:14.2f}  >= 0.8")


if __name__ == "__main__":
    main()
