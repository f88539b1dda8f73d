"""``import-saev``: how fast saev's activation shards become a store, and how much smaller.

Prints two ratios measured in one run (absolute rates depend on the machine):

(a) import rate ÷ plain read, in tokens/s (a token = one D-vector of one layer): the import's
    chunk writing (``import_saev``'s own ``tokens_per_second``: read the shard rows, cast to
    the store dtype, encode, checksum and write every chunk, ``extract.write_threads`` threads)
    ÷ a plain sequential read of the same shard files (each file's examples read into memory
    with one ``read``, in order). Both read files this run has just written, so both come from the page cache.
    Target ≥ 0.5 on CPU. The end-to-end import (checking the directory, loading the model for
    its provenance, creating and finalizing the store) is printed on an extra row.
    With ``--zarr-writes`` the import is also run with every chunk written through zarr's
    codec pipeline (``pipeline.cache.chunk_files.write_whole_chunks`` switched off: what the
    import did before it wrote chunk files itself), interleaved with the default runs, and the
    ratio of the two rates is printed.
(b) bytes of the imported store ÷ bytes of the shard files (acts*.bin as saev writes them, the
    last one full-size: the default 250 images in shards of 64 pad 6). Target ≤ 0.5 (float16 store).

Data: a random-init DINOv2-architecture model (to import against) and shards of random normal
float32 activations (saev's layout: CLS + 16x16 patches, two layers), written in a temp folder.

    python benchmarks/bench_saev_import.py [--images 250] [--per-shard 64] [--width 384] [--repeats 3] [--zarr-writes] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.config import CacheRef, config_from_dict  # noqa: E402
from pipeline.interop import saev_shards as fmt  # noqa: E402
from pipeline.interop.import_saev import import_saev  # noqa: E402


@contextlib.contextmanager
def zarr_writes(on: bool):
    """With ``on``, every chunk goes through zarr's codec pipeline (``write_chunk``'s fallback)."""
    import pipeline.cache.store as store

    direct = store.write_whole_chunks
    if on:
        store.write_whole_chunks = lambda *args, **kwargs: False
    try:
        yield
    finally:
        store.write_whole_chunks = direct


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def write_shards(
    root: Path, *, n: int, per_shard: int, layers: tuple[int, ...], tokens: int, width: int, seed: int
) -> Path:
    """A saev shard directory of random activations, ``per_shard`` examples a shard (files
    full-size, as saev writes them)."""
    md = fmt.SaevMetadata(
        family="dinov2",
        ckpt="random",
        layers=layers,
        content_tokens_per_example=tokens - 1,
        cls_token=True,
        d_model=width,
        n_examples=n,
        max_tokens_per_shard=per_shard * tokens * len(layers),
        data="",
        dataset=str(root),
    )
    folder = root / "saev" / "shards" / md.hash
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    shards = []
    for i, (_start, count) in enumerate(fmt.shard_plan(md)):
        acts = np.memmap(folder / fmt.ACTS_NAME.format(i), mode="w+", dtype="<f4", shape=md.shard_shape)
        for s in range(0, count, 16):
            e = min(count, s + 16)
            acts[s:e] = rng.standard_normal((e - s, *md.shard_shape[1:]), dtype=np.float32)
        acts.flush()
        del acts
        shards.append({"name": fmt.ACTS_NAME.format(i), "n_examples": count})
    fmt.write_json(folder / fmt.METADATA, md.to_json())
    fmt.write_json(folder / fmt.SHARDS, shards)
    return folder


def plain_read(folder: Path) -> float:
    """Seconds to read the examples of every shard file (its first n_examples rows; the rest of
    the last file is saev's padding), in order, with one ``read`` each."""
    md = fmt.read_metadata(folder)
    started = time.perf_counter()
    for shard in fmt.read_shards(folder, md):
        with open(folder / shard.name, "rb") as fd:
            fd.read(shard.n_examples * md.example_bytes)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=250)
    parser.add_argument(
        "--per-shard", type=int, default=64, help="examples a shard (saev's max_tokens_per_shard / (T x L))"
    )
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--blocks", type=int, default=4, help="model depth; the last two blocks are imported")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs of each side")
    parser.add_argument("--threads", type=int, default=2, help="extract.write_threads")
    parser.add_argument("--zarr-writes", action="store_true", help="also time the import through zarr's writes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from pipeline.models import build_demo_model

    tmp = Path(tempfile.mkdtemp(prefix="bench_saev_import_"))
    try:
        build_demo_model("dinov2", tmp / "model", seed=0, hidden_size=args.width, n_layers=args.blocks, n_heads=6,
                         image_size=224)  # fmt: skip
        tokens, layers = 1 + 16 * 16, (args.blocks - 2, args.blocks - 1)
        shard_dir = write_shards(
            tmp, n=args.images, per_shard=args.per_shard, layers=layers, tokens=tokens, width=args.width, seed=0
        )
        n_tokens = args.images * len(layers) * tokens
        raw = {
            "paths": {"resources": str(tmp), "cache": str(tmp / "cache"), "results": str(tmp / "results")},
            "threads": args.threads,
            "device": "cpu",
            "models": {
                "dino": {"family": "dinov2", "source": str(tmp / "model"), "preprocess": {"resize": 224, "crop": 224}}
            },
            "datasets": {"seg": {"kind": "ade20k", "root": str(tmp / "no-dataset")}},
            "extract": {"layers": [-2, -1], "dtype": "float16", "chunk_images": 32, "write_threads": args.threads},
            "caches": [{"model": "dino", "dataset": "seg"}],
        }
        cfg = config_from_dict(raw, source=tmp / "config.yaml")
        ref = CacheRef("dino", "seg")
        read_s = min(plain_read(shard_dir) for _ in range(args.repeats))
        rates, ends, zarr_rates = [], [], []
        for _ in range(args.repeats):
            for via_zarr in (False, True) if args.zarr_writes else (False,):
                shutil.rmtree(tmp / "cache", ignore_errors=True)
                started = time.perf_counter()
                with zarr_writes(via_zarr):
                    result = import_saev(cfg, ref, "train", shard_dir)
                (zarr_rates if via_zarr else rates).append(result["tokens_per_second"])
                if not via_zarr:
                    ends.append(time.perf_counter() - started)
        read_rate = n_tokens / read_s
        store_bytes = folder_bytes(cfg.store(ref, "train"))
        shard_bytes = sum(f.stat().st_size for f in shard_dir.glob("acts*.bin"))
        out = {
            "images": args.images,
            "tokens": n_tokens,
            "width": args.width,
            "plain_read_tokens_per_s": round(read_rate, 1),
            "import_tokens_per_s": round(max(rates), 1),
            "import_end_to_end_tokens_per_s": round(n_tokens / min(ends), 1),
            "import_over_read": round(max(rates) / read_rate, 3),
            "import_end_to_end_over_read": round(n_tokens / min(ends) / read_rate, 3),
            "store_bytes": store_bytes,
            "shard_bytes": shard_bytes,
            "store_over_shards": round(store_bytes / shard_bytes, 3),
        }
        if zarr_rates:
            out["import_zarr_writes_tokens_per_s"] = round(max(zarr_rates), 1)
            out["import_over_zarr_writes"] = round(max(rates) / max(zarr_rates), 3)
        if args.json:
            print(json.dumps(out, indent=1))
        print(f"images {args.images}, D {args.width}, {len(layers)} layers x {tokens} tokens, {n_tokens} tokens")
        print(f"plain sequential read of the shards     {read_rate:12.0f} tokens/s")
        print(f"import (chunk writing)                  {max(rates):12.0f} tokens/s")
        print(f"import rate / plain read                {out['import_over_read']:.3f}   (target >= 0.5)")
        if zarr_rates:
            print(f"import through zarr's chunk writes      {max(zarr_rates):12.0f} tokens/s")
            print(f"import / import through zarr's writes   {out['import_over_zarr_writes']:.3f}")
        print(f"import end to end / plain read          {out['import_end_to_end_over_read']:.3f}")
        print(f"store bytes / shard bytes               {out['store_over_shards']:.3f}   (target <= 0.5)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
