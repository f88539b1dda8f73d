"""SAE training at scale: the token stream vs saev's layout, and training streamed vs in memory.

    python benchmarks/bench_sae.py [--store STORE] [--passes 1] [--skip-demo-sweeps]

1. Stream read rate, width 768: two stores extracted here from a random-init DINOv2-architecture
   model (hidden 768, 224 px, float16, 32-image chunks), one per ``extract.compression``: ``none``
   (raw chunk files; the stream gathers rows straight from them, mapped) and ``lz4`` (the
   default, Blosc lz4 + bitshuffle; chunks decoded on 2 threads first). Our training stream
   (``train_batches`` as ``sae-train`` calls it: float16 batches, the stored dtype; the trainer
   casts inside its scaling op) ÷ saev's layout (the same patch tokens as a float32 ``.npy``
   memmap, each pass a random permutation cut into 1024-row batches, each batch's indices
   sorted, ``torch.from_numpy(mm[idx])``); both on a warm page cache (each read once before
   timing), the same number of tokens; the readers alternate ``--read-repeats`` times and each
   repeat's ratio is printed (their median first), with the process CPU time per token of each.
   Target ≥ 1.0. Also: the stream handing over float32 batches (cast on the stream's thread),
   the first stream (``token_parts`` → ``shuffle_buffer``), the ``token_source: device`` mode
   (tokens loaded once, CPU here) and bytes on disk: each store's chunk files of that layer ÷
   the same tokens (CLS included, as saev stores them) as raw float32 (target ≤ 0.5;
   ``none`` is float16's 0.5 exactly; activations of a random-init model barely compress, so
   ``lz4`` saves only a few percent more here).
2. GPU-scale sweep (``--device``: cpu by default, cuda on a GPU node; the same code path): width
   768, 16× expansion (12,288 latents), 8 members, the ``none`` store; tokens/s streamed
   (``train_batches``, float16 batches, pinned on CUDA → ``train_sweep`` casting and scaling on
   the device) ÷ the same scaled batches already in device memory. Target ≥ 0.9. On CPU keep
   the token count small (the CPU does ~0.5 TFLOP per 1024-token step for 8 such members).
3. SAE kinds at the same width (``--kinds-width``, default 768, 16× expansion, ``--device``): one
   member of each kind (``relu``, ``topk`` and ``batchtopk`` with k = 32, and the variants
   ``topk+auxk``, ``batchtopk+auxk``, ``topk+matryoshka``) trained alone on the same random
   in-memory batches of 1024 tokens; tokens/s per kind and ÷ ``relu``: TopK/BatchTopK target ≥ 0.7
   on CPU. The kinds alternate ``--kinds-repeats`` times; each ratio is the median of its
   repeats' ratios. ``--only-kinds`` runs this section alone.
4. (unless ``--skip-demo-sweeps``) the demo-size sweeps, streamed ÷ in memory, on ``--store``, else
   the demo cache if complete, else a tiny temp cache; target ≥ 0.8.

Ratios from one run of each kind on a shared machine: expect ±10–30 % between runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's pipeline, also when another one is installed
DEMO_STORE = REPO / "cache" / "dinov2_demo" / "demo_seg" / "train.zarr"


def build_fallback_store(folder: Path) -> Path:
    """A tiny-project cache (random-init model, synthetic ADE20K-layout data) in ``folder``."""
    import os

    from pipeline.config import CacheRef, load_config
    from pipeline.extract import extract
    from pipeline.testing import TINY_CONFIG, build_demo_assets, deep_update, write_config

    overrides = {"demo": {"datasets": {"seg": {"n_train": 192}}}}
    raw = deep_update(TINY_CONFIG, overrides)
    old = Path.cwd()
    os.chdir(folder)
    try:
        build_demo_assets(folder, raw)
        write_config(folder, overrides)
        cfg = load_config("config.yaml")
        extract(cfg, CacheRef("dino", "seg"), "train", progress=False)
        return folder / cfg.store(CacheRef("dino", "seg"), "train")
    finally:
        os.chdir(old)


def build_wide_store(folder: Path, *, images: int, compression: str) -> Path:
    """A width-768 float16 store (random-init DINOv2 architecture, 2 blocks, block 0 cached)."""
    from pipeline.config import CacheRef
    from pipeline.extract import extract
    from pipeline.testing import benchmark_project

    cfg = benchmark_project(
        folder,
        n_train=images,
        n_val=1,
        hidden=768,
        n_layers=2,
        extract={
            "layers": [0],
            "dtype": "float16",
            "batch_size": 16,
            "chunk_images": 32,
            "num_workers": 0,
            "compression": compression,
        },
        device="cpu",
    )
    extract(cfg, CacheRef("dino", "seg"), "train", progress=False)
    return cfg.store(CacheRef("dino", "seg"), "train")


def stream_vs_memmap(
    stores: dict[str, Path], folder: Path, *, passes: int, batch_size: int, buffer: int, workers: int, repeats: int
) -> dict:
    """Section 1: tokens/s of our stream on each store (by compression), of the device mode and of
    saev's memmap layout; bytes on disk of each store."""
    import numpy as np

    from pipeline.cache import CacheReader
    from pipeline.cache.stream import in_background, load_tokens, resident_batches, shuffle_buffer, token_index
    from pipeline.sae.stages import token_parts, tokens_per_pass, train_batches

    readers_of = {name: CacheReader(path) for name, path in stores.items()}
    reader = readers_of["lz4"]
    block = reader.layers[0]
    per_pass = tokens_per_pass(reader, "patches")
    n_tokens = passes * per_pass
    # saev's layout: the same patch tokens, float32, one row per token
    tokens = load_tokens(reader, block, token_index(reader, "patches"), device=torch.device("cpu"))
    mm_path = folder / "saev_layout.npy"
    mm = np.lib.format.open_memmap(mm_path, mode="w+", dtype=np.float32, shape=tuple(tokens.shape))
    mm[:] = tokens.float().numpy()
    mm.flush()
    del mm

    def saev_read() -> int:
        mm = np.load(mm_path, mmap_mode="r")
        rng, n = np.random.default_rng(0), 0
        for _ in range(passes):
            perm = rng.permutation(len(mm))
            for s in range(0, len(perm), batch_size):
                n += len(torch.from_numpy(mm[np.sort(perm[s : s + batch_size])]))
        return n

    def ours(compression: str, out_dtype: torch.dtype | None = None) -> int:  # None: the stored dtype, as sae-train
        return sum(
            len(b)
            for b in train_batches(
                readers_of[compression],
                block,
                tokens="patches",
                n_tokens=n_tokens,
                batch_size=batch_size,
                buffer_size=buffer,
                seed=0,
                workers=workers,
                out_dtype=out_dtype,
            )
        )

    def previous() -> int:  # the first stream: row arrays re-concatenated per part, float32
        parts = (
            (a,)
            for p in range(passes)
            for a, _, _ in token_parts(reader, block, tokens="patches", shuffle=True, seed=p)
        )
        return sum(
            len(torch.from_numpy(b[0]).float())
            for b in shuffle_buffer(parts, batch_size=batch_size, buffer_size=buffer, seed=0)
        )

    loaded = load_tokens(reader, block, token_index(reader, "patches"), device=torch.device("cpu"), workers=workers)

    def device_mode() -> int:  # batches only (on a producer thread, as device_batches on CPU): loaded once per run
        return sum(
            len(b) for b in in_background(resident_batches(loaded, n_tokens=n_tokens, batch_size=batch_size, seed=0))
        )

    readers = (
        ("saev", saev_read),
        ("none", lambda: ours("none")),
        ("lz4", lambda: ours("lz4")),
        ("none32", lambda: ours("none", torch.float32)),
        ("lz432", lambda: ours("lz4", torch.float32)),
        ("previous", previous),
        ("device", device_mode),
    )
    for _, fn in readers:
        fn()  # warm page cache, allocator
    runs: dict[str, list[float]] = {name: [] for name, _ in readers}
    cpu: dict[str, list[float]] = {name: [] for name, _ in readers}
    read: dict[str, int] = {}
    for _ in range(repeats):  # the readers alternate, so each repeat's ratios see the same load
        for name, fn in readers:
            t0, c0 = time.perf_counter(), time.process_time()
            n = read[name] = fn()
            runs[name].append(n / (time.perf_counter() - t0))
            cpu[name].append((time.process_time() - c0) / n * 1e6)
    if set(read.values()) != {n_tokens}:  # a rate is only comparable over the same tokens
        raise SystemExit(f"bench_sae: the readers read different token counts {read}, expected {n_tokens} each")
    rates = {name: float(np.median(r)) for name, r in runs.items()}
    ratios = {name: [a / b for a, b in zip(r, runs["saev"], strict=True)] for name, r in runs.items()}
    li = reader.layer_index(block)
    raw_f32 = reader.n_images * reader.n_tokens * reader.d_model * 4  # saev stores CLS + patches, float32
    files = {
        name: [p for p in (path / "acts" / "c").rglob("*") if p.is_file() and p.parent.parent.name == str(li)]
        for name, path in stores.items()
    }
    disk = {name: sum(p.stat().st_size for p in found) for name, found in files.items()}
    return {
        "d_model": reader.d_model,
        "tokens": n_tokens,
        "tokens_read": read,
        "per_pass": per_pass,
        "rates": rates,
        "runs": runs,
        "ratios": ratios,
        "cpu_us_per_token": {k: float(np.median(v)) for k, v in cpu.items()},
        "bytes_ratio": {name: n / raw_f32 for name, n in disk.items()},
        "disk_bytes": disk,
        "chunk_files": {name: len(found) for name, found in files.items()},
    }


def gpu_scale_sweep(
    store: Path, *, n_tokens: int, batch_size: int, buffer: int, workers: int, device: torch.device
) -> dict:
    """Section 2: width 768, 16x expansion, 8 members; streamed ÷ in-memory tokens/s on ``device``.

    In memory: the same scaled float32 batches already on ``device``. Streamed: ``train_batches``
    (pinned host batches on CUDA) with scaling applied on the device, as ``sae-train`` does."""
    from pipeline.cache import CacheReader
    from pipeline.runtime import describe_device
    from pipeline.sae import SAEHparams, TrainConfig, train_sweep
    from pipeline.sae.scaling import InputScaling
    from pipeline.sae.stages import train_batches

    reader = CacheReader(store)
    block = reader.layers[0]
    d = reader.d_model

    cuda = device.type == "cuda"

    def stream():
        return train_batches(
            reader,
            block,
            tokens="patches",
            n_tokens=n_tokens,
            batch_size=batch_size,
            buffer_size=buffer,
            seed=0,
            workers=workers,
            pin_memory=cuda,
            out_dtype=None,
        )  # as sae-train asks: the stored dtype

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    first = torch.cat(list(stream())).float()
    scaling = InputScaling.from_batches(first.split(batch_size))
    in_memory = [scaling.apply(b.float()).to(device) for b in stream()]
    members = [SAEHparams(lr, lam, 16) for lr in (1e-4, 3e-4) for lam in (1e-4, 3e-4, 1e-3, 3e-3)]
    tc = TrainConfig(n_tokens=n_tokens, batch_size=batch_size, lr_warmup_steps=2, sparsity_warmup_steps=2)
    zeros = torch.zeros(d)
    warm = TrainConfig(n_tokens=batch_size, batch_size=batch_size, lr_warmup_steps=1, sparsity_warmup_steps=1)
    train_sweep(iter(in_memory), d, members, warm, data_mean_D=zeros, progress=False, device=device)
    sync()
    t0 = time.perf_counter()
    train_sweep(iter(in_memory), d, members, tc, data_mean_D=zeros, progress=False, device=device)
    sync()
    memory = n_tokens / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    train_sweep(stream(), d, members, tc, data_mean_D=zeros, progress=False, scaling=scaling, device=device)
    sync()
    streamed = n_tokens / (time.perf_counter() - t0)
    return {
        "members": len(members),
        "n_latents": 16 * d,
        "tokens": n_tokens,
        "memory_tok_s": memory,
        "stream_tok_s": streamed,
        "ratio": streamed / memory,
        "device": describe_device(device),
    }


KIND_MEMBERS = {
    "relu": {},
    "topk": {"kind": "topk", "kind_params": {"k": 32}},
    "batchtopk": {"kind": "batchtopk", "kind_params": {"k": 32}},
    "topk+auxk": {"kind": "topk", "kind_params": {"k": 32}, "auxk": True},
    "batchtopk+auxk": {"kind": "batchtopk", "kind_params": {"k": 32}, "auxk": True},
    "topk+matryoshka": {"kind": "topk", "kind_params": {"k": 32}, "prefixes": (0.0625, 0.25, 1.0)},
}
"""Section 3's members (one each, 16× expansion, lr 1e-4; relu with λ = 1e-3)."""


def kinds_sweep(*, width: int, n_tokens: int, batch_size: int, repeats: int, device: torch.device) -> dict:
    """Section 3: tokens/s of one member of each kind on the same in-memory batches on ``device``.

    AuxK members count a latent dead after one batch without firing (so the AuxK term is computed
    from the second step on, as in a long run once latents die; it costs the same whatever the
    number of dead latents: no host sync)."""
    import numpy as np

    from pipeline.runtime import describe_device
    from pipeline.sae import SAEHparams, TrainConfig, train_sweep
    from pipeline.sae.train import AuxK

    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(batch_size, width, generator=g).to(device) for _ in range(max(1, n_tokens // batch_size))]
    n_tokens = len(batches) * batch_size
    members = {}
    for name, spec in KIND_MEMBERS.items():
        spec = dict(spec)
        auxk = AuxK(dead_tokens=batch_size) if spec.pop("auxk", False) else None
        lam = 1e-3 if spec.get("kind", "relu") == "relu" else 0.0
        members[name] = SAEHparams(1e-4, lam, 16, auxk=auxk, **spec)
    tc = TrainConfig(n_tokens=n_tokens, batch_size=batch_size, lr_warmup_steps=1, sparsity_warmup_steps=1)
    warm = TrainConfig(n_tokens=batch_size, batch_size=batch_size, lr_warmup_steps=1, sparsity_warmup_steps=1)
    zeros = torch.zeros(width)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for hp in members.values():  # warm-up: allocator, kernels
        train_sweep(iter(batches[:1]), width, [hp], warm, data_mean_D=zeros, progress=False, device=device)
    runs: dict[str, list[float]] = {name: [] for name in members}
    for _ in range(repeats):  # alternate the kinds, so each repeat's ratios see the same load
        for name, hp in members.items():
            sync()
            t0 = time.perf_counter()
            train_sweep(iter(batches), width, [hp], tc, data_mean_D=zeros, progress=False, device=device)
            sync()
            runs[name].append(n_tokens / (time.perf_counter() - t0))
    ratios = {name: [a / b for a, b in zip(r, runs["relu"], strict=True)] for name, r in runs.items()}
    return {
        "width": width,
        "n_latents": 16 * width,
        "tokens": n_tokens,
        "device": describe_device(device),
        "tok_s": {name: float(np.median(r)) for name, r in runs.items()},
        "runs": runs,
        "ratio_to_relu": {name: float(np.median(r)) for name, r in ratios.items()},
    }


def print_kinds(kinds: dict) -> None:
    print(
        f"\n3. SAE kinds on {kinds['device']}: D={kinds['width']}, {kinds['n_latents']} latents (16x), one member "
        f"each, k=32, {kinds['tokens']} tokens, median of alternating repeats"
    )
    for name, rate in kinds["tok_s"].items():
        print(f"   {name:<18} {rate:>12,.0f} tok/s   ÷ relu {kinds['ratio_to_relu'][name]:5.2f}")
    print(
        f"   ratio topk / relu       {kinds['ratio_to_relu']['topk']:.2f}   (target >= 0.7 on CPU)\n"
        f"   ratio batchtopk / relu  {kinds['ratio_to_relu']['batchtopk']:.2f}   (target >= 0.7 on CPU)"
    )


def run(store: Path, *, passes: float, batch_size: int, buffer: int, threads: int, repeats: int) -> list[dict]:
    from pipeline.cache import CacheReader
    from pipeline.runtime import set_threads
    from pipeline.sae import SAEHparams, TrainConfig, train_sweep
    from pipeline.sae.scaling import scaling_from_stats
    from pipeline.sae.stages import tokens_per_pass, train_batches
    from pipeline.stats import compute_stats

    threads = set_threads(threads)
    reader = CacheReader(store)
    block = reader.block(-2)
    scaling = scaling_from_stats(compute_stats(store, layers=[block], threads=threads), block)
    per_pass = tokens_per_pass(reader, "patches")
    n_tokens = int(passes * per_pass) // batch_size * batch_size
    d = reader.d_model
    print(
        f"store {store}: block {block}, D={d}, {per_pass} patch tokens per pass, dtype {reader.attrs['dtype']}; "
        f"{n_tokens} tokens per run, batch {batch_size}, shuffle buffer {buffer}, {threads} torch threads"
    )

    sweeps = {
        "1 member x4": [SAEHparams(3e-3, 0.03, 4)],
        "1 member x16": [SAEHparams(3e-3, 0.03, 16)],
        "4 members x4,x8": [SAEHparams(3e-3, lam, e) for e in (4, 8) for lam in (0.01, 0.03)],
        "8 members (demo sweep)": [
            SAEHparams(lr, lam, e) for e in (4, 8) for lr in (1e-3, 3e-3) for lam in (0.01, 0.03)
        ],
    }
    tc = TrainConfig(n_tokens=n_tokens, batch_size=batch_size, lr_warmup_steps=50, sparsity_warmup_steps=100, seed=0)

    def stream():
        return train_batches(
            reader, block, tokens="patches", n_tokens=n_tokens, batch_size=batch_size, buffer_size=buffer, seed=0
        )

    # the same batches, scaled to float32 in memory beforehand
    in_memory = [scaling.apply(b.float()) for b in stream()]
    zeros = torch.zeros(d)
    # warm-up (allocator, kernels, first chunk reads) — not timed
    warm = TrainConfig(n_tokens=8 * batch_size, batch_size=batch_size, lr_warmup_steps=1, sparsity_warmup_steps=1)
    train_sweep(iter(in_memory), d, sweeps["1 member x4"], warm, data_mean_D=zeros, progress=False)
    train_sweep(stream(), d, sweeps["1 member x4"], warm, data_mean_D=zeros, progress=False, scaling=scaling)

    def timed(fn):
        w0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        return result, time.perf_counter() - w0, time.process_time() - c0

    rows = []
    for name, members in sweeps.items():
        best = {"memory": (float("inf"), float("inf")), "stream": (float("inf"), float("inf"))}
        for _ in range(repeats):  # alternate the two, keep the fastest of each (shared machines are noisy)
            mem, w, c = timed(lambda: train_sweep(iter(in_memory), d, members, tc, data_mean_D=zeros, progress=False))
            best["memory"] = min(best["memory"], (w, c))
            streamed, w, c = timed(
                lambda: train_sweep(stream(), d, members, tc, data_mean_D=zeros, progress=False, scaling=scaling)
            )
            best["stream"] = min(best["stream"], (w, c))
        same = all(torch.allclose(a.sae.W_dec, b.sae.W_dec, atol=1e-5) for a, b in zip(mem, streamed))
        n = streamed[0].n_tokens_seen
        rows.append(
            {
                "sweep": name,
                "members": len(members),
                "tokens": n,
                "stream_tok_s": n / best["stream"][0],
                "memory_tok_s": n / best["memory"][0],
                "ratio": best["memory"][0] / best["stream"][0],
                "cpu_ratio": best["memory"][1] / best["stream"][1],
                "same_weights": same,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, help="a finalized store (default: the demo cache, else a temp tiny one)")
    p.add_argument("--passes", type=float, default=1.0, help="passes over the store per timed run (default 1)")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--buffer", type=int, default=32768, help="shuffle buffer rows (default 32768, as the demo)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1, help="timed runs of each kind; the fastest counts (default 1)")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--wide-images", type=int, default=128, help="images in the width-768 store (256 patches each)")
    p.add_argument("--read-passes", type=int, default=12, help="passes over the width-768 store per read timing")
    p.add_argument("--workers", type=int, default=2, help="decode threads of the stream (default 2)")
    p.add_argument(
        "--read-repeats", type=int, default=3, help="alternating timings of each reader in section 1 (default 3)"
    )
    p.add_argument("--sweep-tokens", type=int, default=4096, help="tokens of the GPU-scale sweep (default 4096)")
    p.add_argument("--skip-demo-sweeps", action="store_true", help="only sections 1 and 2")
    p.add_argument("--device", default="cpu", help="where sections 2 and 3 train (cpu, cuda, auto)")
    p.add_argument("--kinds-width", type=int, default=768, help="D of section 3 (default 768, 16x expansion)")
    p.add_argument("--kinds-tokens", type=int, default=8192, help="tokens per kind in section 3 (default 8192)")
    p.add_argument("--kinds-repeats", type=int, default=3, help="alternating timings in section 3 (default 3)")
    p.add_argument("--only-kinds", action="store_true", help="only section 3")
    args = p.parse_args(argv)

    import numpy as np

    from pipeline.runtime import resolve_device, set_threads

    set_threads(args.threads)
    device = resolve_device(args.device)

    def kinds_section() -> dict:
        kinds = kinds_sweep(
            width=args.kinds_width,
            n_tokens=args.kinds_tokens,
            batch_size=args.batch_size,
            repeats=args.kinds_repeats,
            device=device,
        )
        print_kinds(kinds)
        return kinds

    if args.only_kinds:
        kinds = kinds_section()
        if args.json:
            args.json.write_text(json.dumps({"kinds": kinds}, indent=1) + "\n")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        stores = {
            compression: build_wide_store(
                Path(tmp) / f"wide-{compression}", images=args.wide_images, compression=compression
            )
            for compression in ("none", "lz4")
        }
        wide = stores["none"]
        read = stream_vs_memmap(
            stores,
            Path(tmp),
            passes=args.read_passes,
            batch_size=args.batch_size,
            buffer=args.buffer,
            workers=args.workers,
            repeats=args.read_repeats,
        )
        r, q, c = read["rates"], read["ratios"], read["cpu_us_per_token"]

        def spread(v: list[float]) -> str:
            return f"{np.median(v):6.2f}  (each repeat: {', '.join(f'{x:.2f}' for x in v)})"

        print(
            f"\n1. stream read, D={read['d_model']}, {read['per_pass']} patch tokens per pass, {read['tokens']} tokens"
            f" per timing, warm page cache, {args.workers} stream threads; {args.read_repeats} alternating repeats,"
            f" median tok/s and process CPU µs per token"
        )
        lines = (
            ("saev", "saev layout (fp32 memmap, sorted random 1024-row batches)"),
            ("none", "our stream, compression none (float16, as sae-train reads)"),
            ("lz4", "our stream, compression lz4 (float16, as sae-train reads)"),
            ("none32", "our stream, compression none, float32 batches"),
            ("lz432", "our stream, compression lz4, float32 batches"),
            ("previous", "first stream (token_parts -> shuffle_buffer, .float())"),
            ("device", "token_source: device (CPU here; batches after the load)"),
        )
        for key, label in lines:
            print(f"   {label:<60} {r[key]:>12,.0f} tok/s {c[key]:6.2f} µs")
        print(f"   ratio stream (none) / saev layout  {spread(q['none'])}   (target >= 1.0)")
        print(f"   ratio stream (lz4) / saev layout   {spread(q['lz4'])}")
        print(f"   ratio float32 batches (none) / saev {spread(q['none32'])}")
        print(f"   ratio float32 batches (lz4) / saev {spread(q['lz432'])}")
        print(f"   ratio device mode / saev layout    {spread(q['device'])}")
        print(
            f"   ratio stream (lz4) / first stream  {spread([a / b for a, b in zip(read['runs']['lz4'], read['runs']['previous'], strict=True)])}"
        )
        print(f"   CPU time per token, stream (none) / saev layout {c['none'] / c['saev']:6.2f}")
        print(f"   CPU time per token, stream (lz4) / saev layout  {c['lz4'] / c['saev']:6.2f}")
        b = read["bytes_ratio"]
        print(
            f"   bytes on disk / saev's float32 (none)  {b['none']:6.3f}   (target <= 0.5)\n"
            f"   bytes on disk / saev's float32 (lz4)   {b['lz4']:6.3f}   (random-init activations barely compress)"
        )
        sweep = gpu_scale_sweep(
            wide,
            n_tokens=args.sweep_tokens,
            batch_size=args.batch_size,
            buffer=args.buffer,
            workers=args.workers,
            device=device,
        )
        print(
            f"\n2. GPU-scale sweep on {sweep['device']}: D={read['d_model']}, {sweep['n_latents']} latents (16x), "
            f"{sweep['members']} members, {sweep['tokens']} tokens"
        )
        print(
            f"   streamed {sweep['stream_tok_s']:,.0f} tok/s, in memory {sweep['memory_tok_s']:,.0f} tok/s: "
            f"ratio {sweep['ratio']:.2f} (target >= 0.9)"
        )
        kinds = kinds_section()
        if args.skip_demo_sweeps:
            if args.json:
                args.json.write_text(json.dumps({"read": read, "sweep": sweep, "kinds": kinds}, indent=1) + "\n")
            return 0
        store = args.store
        if store is None:
            if (DEMO_STORE / "zarr.json").exists() and json.loads((DEMO_STORE / "zarr.json").read_text()).get(
                "attributes", {}
            ).get("complete"):
                store = DEMO_STORE
            else:
                print(f"no complete demo cache at {DEMO_STORE}; building a tiny one in {tmp}")
                store = build_fallback_store(Path(tmp))
        rows = run(
            store,
            passes=args.passes,
            batch_size=args.batch_size,
            buffer=args.buffer,
            threads=args.threads,
            repeats=args.repeats,
        )

    print(
        f"\n{'sweep':<24} {'members':>7} {'tokens':>8} {'stream tok/s':>13} {'memory tok/s':>13} {'ratio':>6} "
        f"{'cpu ratio':>9}  same weights"
    )
    for r in rows:
        print(
            f"{r['sweep']:<24} {r['members']:>7} {r['tokens']:>8} {r['stream_tok_s']:>13,.0f} "
            f"{r['memory_tok_s']:>13,.0f} {r['ratio']:>6.2f} {r['cpu_ratio']:>9.2f}  {r['same_weights']}"
        )
    print(
        "\nratio = streamed tokens/s ÷ in-memory tokens/s, wall clock, fastest of --repeats runs each (target ≥ 0.8);"
        "\ncpu ratio = the same with process CPU time (less sensitive to other load on the machine)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"read": read, "sweep": sweep, "kinds": kinds, "demo": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
