"""``import-saev`` and ``export-saev``: saev's activation shards into a store and back
(:mod:`pipeline.interop`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands import add_config_arg, add_store_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    i = sub.add_parser(
        "import-saev",
        help="read a saev shard directory (protocol 2.1) into one of our stores",
        description="Reads SHARD_DIR (metadata.json, shards.json, acts*.bin, labels.bin if any) and the --model's "
        "weights (provenance, depth, token layout; no forward); writes <cache>/<model>/<dataset>/<split>.zarr as an "
        "extraction with this config would (extract.dtype, chunk_images, compression), recording SHARD_DIR and its "
        "metadata, then finalizes it. A killed import resumes where it stopped. What cannot be mapped (layers "
        "other than extract.layers', a token layout other than the model's) is refused naming the key.",
    )
    add_config_arg(i)
    i.add_argument("shard_dir", type=Path, metavar="SHARD_DIR", help="saev's .../saev/shards/<hash> directory")
    add_store_args(
        i,
        model="the name under `models` of the model saev ran",
        dataset="a name under `datasets` (its kind gives the store's task)",
    )
    i.add_argument("--sentinel", type=Path, help="file to write when the store is complete (for Snakemake)")

    e = sub.add_parser(
        "export-saev",
        help="write a store as a saev shard directory (protocol 2.1) that saev's loaders read",
        description="Reads STORE (finalized; no config); writes OUT_DIR/<hash>/ with metadata.json, shards.json, "
        "acts*.bin (float32) and labels.bin (segmentation stores) as saev's ShardWriter writes them. saev's "
        "loaders need OUT_DIR to end in saev/shards.",
    )
    e.add_argument(
        "store", type=Path, metavar="STORE", help="the store folder, e.g. cache/<model>/<dataset>/train.zarr"
    )
    e.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="the shards root (…/saev/shards)")
    e.add_argument(
        "--max-tokens-per-shard",
        type=int,
        help="saev's max_tokens_per_shard: tokens x layers per shard file (default: saev's, 2400000)",
    )
