"""Extraction benchmark: each stage alone, then the whole extraction; ratios from one run.

Same images, same model, same batch size, in one run:

(a) forward    the backbone's forward to the cached blocks at the configured precision
               (autocast), on pixels already in device memory;
(b) decode     decode + preprocess + labels alone, through the extractor's DataLoader with
               the configured ``num_workers``; with ``--decode cuda`` the workers read the files
               and the JPEGs are decoded and preprocessed on the GPU (``extract.decode``);
(c) write      device-side cast to the store dtype + copy to the host + the ``--compression``
               codec (and ``--shard-images`` shards) + zarr writes alone, from activations
               already in memory, ``write_threads`` threads;
(d) extraction the whole ``pipeline.extract`` loop (all stages concurrently).

The stages share the machine, so the rate they allow together is the *stage limit*: on a
GPU ``min(a, 1 / (1/b + 1/c))`` (decode and write share the CPU), with ``--decode cuda``
``min(1 / (1/a + 1/b), c)`` (decode and forward share the GPU), on CPU (the forward shares
the cores too) ``1 / (1/a + 1/b + 1/c)``. Also printed: ``d ÷ a`` and the time ImageNet-1K's
1,281,167 training images would take at rate (d). The line ``extraction ÷ stage limit`` says how close the
pipelined extractor comes to it (target ≥ 0.9): the median over ``--repeats`` rounds of each
round's ratio (its stages and its extraction measured back to back), and the ratio of the best
rates. Also printed: cache bytes ÷ raw float32 bytes (target ≤ 0.5) and the peak proportional resident memory (PSS) of the extraction
(this process and its DataLoader workers, sampled every 20 ms) above what it held before,
which includes loading the model and starting the workers, in chunks of float32
activations (it must stay bounded, not grow with the dataset).

    python benchmarks/bench_extract.py                       # ViT-S/14-sized (D=384, 12 blocks)
    python benchmarks/bench_extract.py --hidden 48 --layers 2  # tiny: decode and write bound it
    python benchmarks/bench_extract.py --precision-distance  # bfloat16 vs float32 cache, per block
    python benchmarks/bench_extract.py --decode cuda --compression none --shard-images 1024 \
        --image-size 448 --resize 256                       # the GPU write path, ImageNet-like JPEGs

``--precision-distance`` extracts every block of the same images twice (float32 store) with
``forward_dtype`` float32 and bfloat16 and prints, per block, the relative distance
‖bf16 − f32‖ / ‖f32‖ over all tokens and the median cosine similarity of token vectors.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's pipeline, also when another one is installed


def _rss_bytes(pid: int) -> int:
    """Proportional resident bytes (PSS: shared pages split between sharers) of ``pid`` and its
    child processes, so forked DataLoader workers are not counted twice (Linux /proc; 0 elsewhere)."""
    total = 0
    pids = [pid]
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            pids += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        return 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


class PeakMemory:
    """Samples this process tree's RSS in a thread; ``peak`` minus ``start`` is the growth."""

    def __enter__(self) -> PeakMemory:
        self.start = self.peak = _rss_bytes(os.getpid())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.2):  # reading smaps takes the process's memory lock: not too often
            self.peak = max(self.peak, _rss_bytes(os.getpid()))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def stage_rates(cfg, backbone, device, batch_size: int) -> tuple[float, float, float]:
    """(a) forward, (b) decode, (c) write rates in img/s, each stage alone."""
    from torch.utils.data import DataLoader

    from pipeline.cache import StoreWriter, create_or_open
    from pipeline.config import CacheRef
    from pipeline.extract import (
        _assemble_and_write,
        _collate,
        _Images,
        _StageClock,
        _to_host,
        device_pixels,
        layout_and_attrs,
        open_decoder,
        split_data,
    )
    from pipeline.runtime import forward_precision, resolve_forward_dtype

    ref = CacheRef("dino", "seg")
    model = cfg.model("dino")
    data = split_data(cfg, "seg", "train")
    n = len(data.samples)
    layout, attrs = layout_and_attrs(
        cfg,
        ref,
        "train",
        data,
        backbone,
        {"family": "dinov2", "source": "bench", "revision": None, "weights_sha256": "bench"},
    )
    layers = list(layout.layers)
    precision = resolve_forward_dtype(cfg.extract.forward_dtype, device)

    # (b) decode alone, with the configured workers (and, decode cuda, the device decoder)
    decoder = open_decoder(cfg, attrs["decode"], device)
    loader = DataLoader(
        _Images(
            data,
            np.arange(n),
            model.preprocess,
            backbone.patch_size,
            cfg.extract.max_image_pixels,
            device_decode=decoder is not None,
        ),
        batch_size=batch_size,
        num_workers=cfg.extract.num_workers,
        collate_fn=_collate,
        pin_memory=decoder is not None and device.type == "cuda",  # (b) of decode cpu: as measured before
    )
    t0 = time.perf_counter()
    if decoder is None:
        batches = [b["pixels"] for b in loader]
    else:
        ex = cfg.extract
        batches = [
            device_pixels(b, decoder, data, model.preprocess, ex.max_image_pixels, device, backbone.patch_size)[0]
            for b in loader
        ]
        if device.type == "cuda":
            torch.cuda.synchronize()
    decode = n / (time.perf_counter() - t0)

    # (a) forward alone, pixels already on the device
    pixels = [b.to(device) for b in batches]
    with torch.inference_mode(), forward_precision(precision, device):
        backbone.forward_to(pixels[0], layers)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        acts = [backbone.forward_to(p, layers) for p in pixels]
        if device.type == "cuda":
            torch.cuda.synchronize()
        forward = n / (time.perf_counter() - t0)

    # (c) cast + copy + compress + write alone, from activations in (device) memory
    acts_NLTD = torch.cat(acts)
    labels = {
        k: np.zeros((n,) + shape, dtype)
        for k, shape, dtype in (
            ("patch_label", (layout.n_patches,), np.uint16),
            ("patch_purity", (layout.n_patches,), np.float16),
            ("pixel_label", (layout.mask_size, layout.mask_size), np.uint16),
        )
    }
    store = Path(cfg.paths.cache) / "write-alone.zarr"
    group = create_or_open(store, layout, attrs)
    writer = StoreWriter.of(store, group)
    out_dtype = getattr(torch, layout.dtype)
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(max_workers=cfg.extract.write_threads) as pool:
        futures = []
        for s in range(0, n, layout.write_images):
            e = min(s + layout.write_images, n)
            host, copied = _to_host(acts_NLTD[s:e], out_dtype)
            piece = {
                "acts": host,
                "copied": copied,
                "bad": [False] * (e - s),
                "reason": [""] * (e - s),
                **{k: v[s:e] for k, v in labels.items()},
            }
            futures.append(
                pool.submit(_assemble_and_write, group, writer, s, [(piece, 0, e - s)], tuple(labels), _StageClock())
            )
        for f in futures:
            f.result()
    write = n / (time.perf_counter() - t0)
    return forward, decode, write


def precision_distance(args) -> None:
    """Per block: ‖bf16 − f32‖ / ‖f32‖ and median token cosine of a bfloat16-forward cache."""
    from pipeline.config import CacheRef
    from pipeline.extract import extract
    from pipeline.testing import benchmark_project

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = {
            "dtype": "float32",
            "batch_size": args.batch_size,
            "chunk_images": 16,
            "num_workers": 0,
            "layers": list(range(args.layers)),
        }
        cfg = benchmark_project(
            tmp,
            n_train=args.images,
            n_val=1,
            hidden=args.hidden,
            n_layers=args.layers,
            extract={**base, "forward_dtype": "float32"},
            device="cpu",
        )
        acts = {}
        for precision in ("float32", "bfloat16"):
            import dataclasses

            run = dataclasses.replace(
                cfg,
                extract=dataclasses.replace(cfg.extract, forward_dtype=precision),
                paths=dataclasses.replace(cfg.paths, cache=tmp / f"cache-{precision}"),
            )
            extract(run, CacheRef("dino", "seg"), "train", progress=False)
            import zarr

            acts[precision] = zarr.open_array(run.store(CacheRef("dino", "seg"), "train") / "acts", mode="r")[:].astype(
                np.float64
            )
    f32, bf16 = acts["float32"], acts["bfloat16"]
    print(
        f"bfloat16-forward vs float32-forward cache, random-init DINOv2 arch D={args.hidden} x {args.layers} blocks, {args.images} images of 224 px, CPU"
    )
    print(f"{'block':>5}  {'|bf16-f32|/|f32|':>16}  {'median token cosine':>19}")
    for li in range(f32.shape[1]):
        a, b = f32[:, li].reshape(-1, f32.shape[-1]), bf16[:, li].reshape(-1, f32.shape[-1])
        rel = np.linalg.norm(b - a) / np.linalg.norm(a)
        cos = np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
        print(f"{li:>5}  {rel:16.4f}  {np.median(cos):19.5f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--chunk-images", type=int, default=32)
    parser.add_argument("--num-workers", default="auto")
    parser.add_argument("--write-threads", default="auto")
    parser.add_argument("--forward-dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--decode", default="cpu", choices=["cpu", "cuda", "auto"], help="extract.decode")
    parser.add_argument("--compression", default="lz4", choices=["lz4", "none"], help="extract.compression")
    parser.add_argument("--shard-images", type=int, default=0, help="extract.shard_images (0: no shards)")
    parser.add_argument(
        "--variants",
        default="",
        help="DECODE:COMPRESSION:SHARD_IMAGES,... : one table per variant (and --cached count), same images and "
        "model; overrides --decode, --compression and --shard-images",
    )
    parser.add_argument("--image-size", type=int, default=224, help="side of the generated JPEGs, px")
    parser.add_argument("--resize", type=int, default=224, help="preprocess resize (shorter side); crop is 224")
    parser.add_argument(
        "--cached",
        default="2",
        help="numbers of cached blocks (the last ones), comma-separated: one table each, same images",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="alternating rounds of (a)-(c) and (d); each rate is its best round"
    )
    parser.add_argument(
        "--precision-distance",
        action="store_true",
        help="print the bfloat16 vs float32 cache distance per block instead",
    )
    args = parser.parse_args()
    if args.precision_distance:
        return precision_distance(args)

    from pipeline.config import ConfigError
    from pipeline.context import RunContext
    from pipeline.testing import benchmark_project

    counts = {
        k: (v if v == "auto" else int(v))
        for k, v in (("num_workers", args.num_workers), ("write_threads", args.write_threads))
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ex = {
            "dtype": "float16",
            "batch_size": args.batch_size,
            "chunk_images": args.chunk_images,
            "forward_dtype": args.forward_dtype,
            "decode": args.decode,
            "compression": args.compression,
            "shard_images": args.shard_images,
            **counts,
        }
        heads = args.hidden // 64 if args.hidden % 64 == 0 else 6  # ViT-S/B/L: 64-wide heads
        base = benchmark_project(
            tmp,
            n_train=args.images,
            n_val=1,
            hidden=args.hidden,
            n_layers=args.layers,
            extract=ex,
            device=args.device,
            n_heads=heads,
            image_size=args.image_size,
            resize=args.resize,
        )
        ctx = RunContext.start(base)
        threads, device = ctx.threads, ctx.device
        variants = [v.split(":") for v in args.variants.split(",")] if args.variants else []
        variants = variants or [[args.decode, args.compression, str(args.shard_images)]]
        for decode, compression, shard in variants:
            for n_cached in [int(c) for c in args.cached.split(",")]:
                # the last n_cached blocks, same images and model; a cache folder of their own
                layers = tuple(range(-n_cached, 0))
                ex_v = dict(layers=layers, decode=decode, compression=compression, shard_images=int(shard))
                cfg = dataclasses.replace(
                    base,
                    # `auto` counts (device: auto) as the extraction job resolves them for its device
                    extract=dataclasses.replace(base.extract.resolved(device.type), **ex_v),
                    paths=dataclasses.replace(
                        base.paths, cache=tmp / f"cache-{decode}-{compression}-{shard}-{n_cached}"
                    ),
                )
                try:
                    measure(cfg, args, device, threads, heads)
                except ConfigError as err:  # e.g. decode cuda where torchvision does not import: the others still run
                    print(f"\nvariant decode {decode}, compression {compression}, shard_images {shard}: error: {err}")
                finally:  # the stores of a variant go before the next one's (6,144 ViT-B images, 2 blocks: ~5 GB each)
                    shutil.rmtree(cfg.paths.cache, ignore_errors=True)


def stage_limit(a: float, b: float, c: float, device: torch.device, decode: str = "cpu") -> float:
    """The rate the stages allow together: on a GPU ``min(a, 1/(1/b + 1/c))`` (decode and write share
    the CPU, the forward runs on the GPU), or with the decode on the GPU ``min(1/(1/a + 1/b), c)``
    (decode and forward share the GPU); on CPU ``1/(1/a + 1/b + 1/c)`` (all three share the cores)."""
    if device.type != "cuda":
        return 1 / (1 / a + 1 / b + 1 / c)
    return min(1 / (1 / a + 1 / b), c) if decode == "cuda" else min(a, 1 / (1 / b + 1 / c))


IMAGENET_TRAIN = 1_281_167  # ImageNet-1K training images


def measure(cfg, args, device, threads: int, heads: int) -> None:
    """Stage rates (a)–(c), then the whole extraction (d), of one config; prints the table."""
    from pipeline.config import CacheRef
    from pipeline.extract import extract
    from pipeline.models import load_backbone
    from pipeline.runtime import describe_device

    # --repeats alternating rounds of (a)-(c) then (d); each rate is its best round (on a
    # shared machine other jobs only ever slow a round down). The ratio to the stage limit is
    # taken per round (a-d measured within seconds of each other) and its median printed:
    # best-of rates from different rounds favour the shortest measurement (a short stage fits
    # into a quiet moment more often than the whole extraction does).
    a = b = c = d = 0.0
    peak = 0
    round_ratios: list[float] = []
    for round_ in range(args.repeats):
        backbone, _ = load_backbone(cfg.model("dino").spec, device=device)
        a_r, b_r, c_r = stage_rates(cfg, backbone, device, args.batch_size)
        a, b, c = max(a, a_r), max(b, b_r), max(c, c_r)
        del backbone
        if device.type == "cuda":
            torch.cuda.empty_cache()
        run = dataclasses.replace(
            cfg, paths=dataclasses.replace(cfg.paths, cache=Path(cfg.paths.cache) / f"round-{round_}")
        )
        with PeakMemory() as mem:
            report = extract(run, CacheRef("dino", "seg"), "train", progress=False)
        round_ratios.append(report.images_per_second / stage_limit(a_r, b_r, c_r, device, report.decode))
        if report.images_per_second > d:
            d, best = report.images_per_second, report
        if round_ == 0:
            peak = mem.peak - mem.start
    report = best

    store = run.store(CacheRef("dino", "seg"), "train")
    acts_files = [p for p in (store / "acts").rglob("*") if p.is_file()]
    disk = sum(p.stat().st_size for p in acts_files)
    n_layers = len(cfg.extract.layers)
    tokens = 1 + (224 // 14) ** 2
    raw_f32 = args.images * n_layers * tokens * args.hidden * 4
    chunk_f32 = cfg.extract.chunk_images * n_layers * tokens * args.hidden * 4

    limit = stage_limit(a, b, c, device, report.decode)
    formula = (
        "1/(1/a+1/b+1/c): CPU, stages share the cores"
        if device.type != "cuda"
        else ("min(1/(1/a+1/b), c): decode on the GPU" if report.decode == "cuda" else "min(a, 1/(1/b+1/c))")
    )
    print(
        f"\ndevice: {describe_device(device)}, threads: {threads}, num_workers: {cfg.extract.num_workers}, write_threads: {cfg.extract.write_threads}, "
        f"forward: {report.forward_dtype}, model: DINOv2 arch D={args.hidden} x {args.layers} blocks ({heads} heads), "
        f"{n_layers} cached block(s) {list(cfg.extract.layers)}, {args.images} JPEGs of {args.image_size} px "
        f"(resize {args.resize}, crop 224), batch {args.batch_size}, best of {args.repeats} round(s)"
    )
    print(
        f"decode: {report.decode} ({report.device_fallbacks} device fallbacks), compression: {cfg.extract.compression}, "
        f"shard_images: {cfg.extract.shard_images or 'off'}"
    )
    print(f"{'(a) forward alone img/s':<44} {a:9.1f}")
    print(f"{'(b) decode + preprocess alone img/s':<44} {b:9.1f}")
    print(f"{'(c) cast + copy + compress + write img/s':<44} {c:9.1f}")
    print(f"{'(d) extraction img/s':<44} {d:9.1f}")
    print(f"{'stage limit img/s':<44} {limit:9.1f}  ({formula})")
    print(f"stage report of the extraction: {report.stages}")
    print(f"{'bound by (stage report)':<44} {report.stages.get('bound_by', '?'):>9}")
    print(f"{'ratio':<44} {'value':>9}  target")
    each = ", ".join(f"{r:.2f}" for r in round_ratios)
    print(
        f"{'extraction ÷ stage limit, median of rounds':<44} {float(np.median(round_ratios)):9.2f}  >= 0.9  (each round: {each})"
    )
    print(f"{'same, best (d) ÷ limit of best (a), (b), (c)':<44} {d / limit:9.2f}")
    print(f"{'d ÷ a':<44} {d / a:9.2f}")
    print(
        f"{'projected ImageNet-1K time at (d), minutes':<44} {IMAGENET_TRAIN / d / 60:9.1f}  "
        f"({IMAGENET_TRAIN:,} images; target <= 15)"
    )
    print(f"{'cache bytes ÷ raw float32 bytes':<44} {disk / raw_f32:9.3f}  <= 0.5")
    print(f"{'acts files (chunks or shards)':<44} {len(acts_files) - 1:9d}")  # less the array's zarr.json
    print(
        f"{'peak extra host memory, MiB (PSS)':<44} {peak / 2**20:9.0f}  (model load + workers + buffers; one float32 chunk is {chunk_f32 / 2**20:.0f} MiB)"
    )


if __name__ == "__main__":
    main()
