"""``extract`` and ``finalize`` steps."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands import add_config_arg, add_store_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract",
        help="run the ViT over one split and fill (part of) its activation store",
        description="Reads the split's images (and masks) and the model; writes the chunks of part --part of --of into <cache>/<model>/<dataset>/<split>.zarr (finalizing it when --of is 1) and the --sentinel file.",
    )
    add_config_arg(p)
    add_store_args(p)
    p.add_argument("--part", type=int, default=0, help="this process's part, 0-based (default 0)")
    p.add_argument("--of", type=int, default=1, help="number of parts (default 1: whole split, then finalize)")
    p.add_argument("--sentinel", type=Path, help="file to write when this part is done (for Snakemake)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar and no progress lines in the log")

    f = sub.add_parser(
        "finalize",
        help="check every image of a store is done; consolidate its metadata",
        description="Reads <cache>/<model>/<dataset>/<split>.zarr after all extract parts; writes its final attrs (complete, bad images) and the --sentinel file.",
    )
    add_config_arg(f)
    add_store_args(f)
    f.add_argument("--sentinel", type=Path, help="file to write when the store is complete (for Snakemake)")

    v = sub.add_parser(
        "verify",
        help="check every chunk of a store (checksums); optionally mark corrupt images not done",
        description="Reads every chunk file of STORE (no config needed) and prints a summary: chunks ok / corrupt and "
        "the images each corrupt chunk holds. A store with corrupt chunks ends with one error line (exit 2) unless "
        "--mark-not-done marks their images not done (and the store unfinalized, its Snakemake sentinels removed), "
        "so that re-running the extraction (or snakemake) re-extracts only those chunks. Writes nothing without "
        "--mark-not-done; with it, the store's done flags and attrs.",
    )
    v.add_argument("store", type=Path, help="the store folder, e.g. cache/<model>/<dataset>/train.zarr")
    v.add_argument(
        "--mark-not-done",
        action="store_true",
        help="mark the images of corrupt chunks not done, so the next extraction recomputes just them",
    )
