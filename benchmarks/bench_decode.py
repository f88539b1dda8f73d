"""How far ``extract.decode: cuda`` is from the cpu path: pixels, activations per block, speed.

Generated JPEGs of ImageNet-like sizes (``--sizes``, quality 90, Pillow's default 4:2:0 chroma
subsampling: smooth colour fields, sharp-edged discs and noise), preprocessed for a 224 px
model (resize ``--resize`` on the shorter side, centre crop 224):

(1) resize   Pillow-decoded pixels resized by torch (``interpolate``) with each mode /
             antialias / rounding setting against Pillow's BICUBIC (the cpu path): mean and
             max |difference| in grey levels (0..255) of the 224 x 224 crop. Runs anywhere
             (torch's interpolate runs on CPU tensors too).
(2) blocks   a random-init DINOv2-architecture model (``--hidden``, ``--layers``), fed the cpu
             path's pixels and the device path's (the setting ``decode: cuda`` uses): per
             block, ‖device − cpu‖ / ‖cpu‖ over all tokens and the median token cosine.
(3) nvJPEG   only where CUDA and torchvision are present: nvJPEG (torchvision.io.decode_jpeg
             on the device, batched) against libjpeg (Pillow): the decoded pixels' distance,
             the whole device path's distance (decode + resize) and (2) again with nvJPEG's
             pixels; and the rates, img/s, of the device path (decode + preprocess, batches of
             ``--batch-size``) and of Pillow's decode + preprocess on one CPU core.

    python benchmarks/bench_decode.py                        # (1), (2) on CPU
    python benchmarks/bench_decode.py --device cuda          # and (3) on a GPU
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's pipeline, also when another one is installed

from PIL import Image  # noqa: E402

from pipeline.data import Preprocess, crop_geometry, preprocess_image  # noqa: E402
from pipeline.data.device_decode import device_preprocess  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def photo(w: int, h: int, seed: int) -> np.ndarray:
    """JPEG-like content, uint8 [H, W, 3]: smooth colour fields, sharp-edged discs, sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    img = np.stack([np.sin((5 + c) * x + seed) * np.cos((3 + c) * y - c) * 100 + 128 for c in range(3)], -1)
    for _ in range(10):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.02, 0.2)
        img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    return np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)


def jpegs(sizes: list[tuple[int, int]], n: int) -> list[bytes]:
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        buf = io.BytesIO()
        Image.fromarray(photo(w, h, seed=i)).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def pil_rgb(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def chw(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def torch_resized(img: torch.Tensor, pre: Preprocess, mode: str, antialias: bool, rounded: bool) -> torch.Tensor:
    """uint8 [3, H, W] -> float [3, crop, crop] grey levels, resized by torch with one setting."""
    geo = crop_geometry(img.shape[2], img.shape[1], pre)
    out = F.interpolate(img[None].float(), size=(geo.resized_H, geo.resized_W), mode=mode, antialias=antialias)
    if rounded:
        out = out.round().clamp(0, 255)
    return out[0, :, geo.top : geo.top + geo.crop, geo.left : geo.left + geo.crop]


def levels(normalised: torch.Tensor) -> torch.Tensor:
    """Normalised pixels back to grey levels (0..255)."""
    mean, std = (torch.tensor(v, device=normalised.device)[:, None, None] for v in (MEAN, STD))
    return (normalised * std + mean) * 255


def resize_table(blobs: list[bytes], pre: Preprocess) -> None:
    print("(1) torch resize vs Pillow BICUBIC (the cpu path), grey levels of the 224 x 224 crop")
    print(f"{'mode':<9} {'antialias':>9} {'rounded':>8} {'mean |d|':>9} {'p99.9 |d|':>10} {'max |d|':>8}")
    images = [pil_rgb(b) for b in blobs]
    refs = [levels(preprocess_image(img, pre)) for img in images]
    for mode, aa, rounded in [
        ("bicubic", True, True),
        ("bicubic", True, False),
        ("bicubic", False, True),
        ("bilinear", True, True),
        ("bilinear", False, True),
    ]:
        d = torch.cat(
            [(torch_resized(chw(img), pre, mode, aa, rounded) - ref).abs().flatten() for img, ref in zip(images, refs)]
        )
        q = torch.quantile(d[torch.randperm(d.numel(), generator=torch.Generator().manual_seed(0))[:1_000_000]], 0.999)
        print(f"{mode:<9} {aa!s:>9} {rounded!s:>8} {d.mean():9.3f} {q:10.2f} {d.max():8.2f}")


def model(hidden: int, layers: int, tmp: Path):
    from pipeline.models import load_backbone
    from pipeline.testing import benchmark_project

    heads = hidden // 64 if hidden % 64 == 0 else 6
    cfg = benchmark_project(
        tmp, n_train=1, n_val=1, hidden=hidden, n_layers=layers, extract={"num_workers": 0}, device="cpu", n_heads=heads
    )
    backbone, _ = load_backbone(cfg.model("dino").spec, device=torch.device("cpu"))
    return backbone


def block_table(backbone, cpu_pixels: torch.Tensor, dev_pixels: torch.Tensor, what: str) -> None:
    layers = list(range(backbone.n_blocks))
    with torch.inference_mode():
        a = backbone.forward_to(cpu_pixels.float().cpu(), layers).double()
        b = backbone.forward_to(dev_pixels.float().cpu(), layers).double()
    print(f"(2) activations, {what}: random-init DINOv2 arch D={a.shape[-1]} x {len(layers)} blocks, float32 forward")
    print(f"{'block':>5} {'|dev-cpu|/|cpu|':>16} {'median token cosine':>20}")
    for li in layers:
        x, y = a[:, li].reshape(-1, a.shape[-1]), b[:, li].reshape(-1, a.shape[-1])
        cos = torch.nn.functional.cosine_similarity(x, y, dim=-1)
        print(f"{li:>5} {(torch.linalg.norm(y - x) / torch.linalg.norm(x)).item():16.5f} {cos.median().item():20.6f}")


def nvjpeg(blobs: list[bytes], pre: Preprocess, device: torch.device, batch: int, backbone) -> None:
    import importlib.util

    if device.type != "cuda" or importlib.util.find_spec("torchvision") is None:
        print("(3) nvJPEG: skipped (needs CUDA and torchvision)")
        return
    from pipeline.data.device_decode import decode_each, open_nvjpeg

    decoder = open_nvjpeg(device)
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    decoded = decode_each(decoder, tensors)
    failed = sum(isinstance(d, Exception) for d in decoded)
    images = [pil_rgb(b) for b in blobs]
    dec = torch.cat(
        [
            (d.cpu().float() - chw(img).float()).abs().flatten()
            for d, img in zip(decoded, images)
            if isinstance(d, torch.Tensor)
        ]
    )
    print(
        f"(3) nvJPEG (torchvision {__import__('torchvision').__version__}) vs libjpeg (Pillow), {len(blobs)} JPEGs, {failed} failed"
    )
    print(
        f"decoded pixels: mean |d| {dec.mean():.3f}, max |d| {dec.max():.0f} grey levels, {(dec > 0).float().mean():.3f} of values differ"
    )
    dev = torch.stack([device_preprocess(d, pre) for d in decoded if isinstance(d, torch.Tensor)])
    cpu = torch.stack([preprocess_image(img, pre) for d, img in zip(decoded, images) if isinstance(d, torch.Tensor)])
    whole = (levels(dev.cpu()) - levels(cpu)).abs()
    print(
        f"whole device path (nvJPEG + torch resize) vs cpu path: mean |d| {whole.mean():.3f}, max |d| {whole.max():.1f} grey levels"
    )
    block_table(backbone, cpu[:64], dev[:64].cpu(), "nvJPEG + torch resize vs the cpu path")
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for s in range(0, len(tensors), batch):
        out = decode_each(decoder, tensors[s : s + batch])
        torch.stack([device_preprocess(d, pre) for d in out if isinstance(d, torch.Tensor)])
    torch.cuda.synchronize()
    rate_dev = len(tensors) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for b in blobs[:256]:
        preprocess_image(pil_rgb(b), pre)
    rate_cpu = min(256, len(blobs)) / (time.perf_counter() - t0)
    print(
        f"device decode + preprocess, batches of {batch}: {rate_dev:.0f} img/s; Pillow on one core: {rate_cpu:.0f} img/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--sizes", default="500x375,375x500,500x333,640x480,1024x768,300x225")
    parser.add_argument("--resize", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    pre = Preprocess(resize=args.resize, crop=224, mean=MEAN, std=STD)
    blobs = jpegs(sizes, args.images)  # type: ignore[arg-type]
    print(f"{args.images} JPEGs (quality 90, 4:2:0) of sizes {args.sizes}; resize {args.resize}, crop 224")
    resize_table(blobs, pre)
    with tempfile.TemporaryDirectory() as tmp:
        backbone = model(args.hidden, args.layers, Path(tmp))
        images = [pil_rgb(b) for b in blobs[:64]]
        cpu = torch.stack([preprocess_image(img, pre) for img in images])
        dev = torch.stack([device_preprocess(chw(img), pre) for img in images])
        block_table(backbone, cpu, dev, "libjpeg + torch resize (decode: cuda's setting) vs the cpu path")
        nvjpeg(blobs, pre, torch.device(args.device), args.batch_size, backbone)


if __name__ == "__main__":
    main()
