"""``extract --model M --dataset D --split S [--part i --of n]``: fill (part of) one store (:mod:`pipeline.extract`).

Reads the dataset's images and the model; writes the store's chunks of this part (resumable:
done chunks are skipped) and, with ``--sentinel``, the part's sentinel JSON with its stage
report and provenance record.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from pipeline.config import CacheRef
from pipeline.provenance import record

if TYPE_CHECKING:  # the context module imports torch
    from pipeline.context import RunContext


def run(ctx: RunContext, args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.extract import extract, write_part_sentinel

    cfg = ctx.cfg
    report = extract(
        cfg,
        CacheRef(args.model, args.dataset),
        args.split,
        part=args.part,
        of=args.of,
        progress=not args.no_progress,
        ctx=ctx,
    )
    if args.sentinel:
        write_part_sentinel(
            args.sentinel, report, record(cfg, "extract", model=args.model, dataset=args.dataset, split=args.split)
        )
    return {**report.__dict__, "images_per_second": round(report.images_per_second, 2)}
