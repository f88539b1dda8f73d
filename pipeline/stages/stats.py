"""``stats --model M --dataset D --split S``: activation statistics of one store (:mod:`pipeline.stats`, dask).

Reads one finalized store; writes ``<results>/stats/<model>/<dataset>/<split>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the context module imports torch
    from pipeline.context import RunContext


def run(ctx: RunContext, args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.stats import run_stats

    try:
        return run_stats(ctx.cfg, args.model, args.dataset, args.split, scheduler=args.scheduler, out=args.out)
    except RuntimeError as err:  # --scheduler without the distributed package: one clear line
        if args.scheduler and "distributed" in str(err):
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
