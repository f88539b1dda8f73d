"""``finalize --model M --dataset D --split S``: check every part of one store is done, mark it complete (:func:`pipeline.cache.finalize`).

Reads the store; writes its ``complete`` attribute and, with ``--sentinel``, the summary and
provenance record its rule declares.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from pipeline import atomic
from pipeline.config import CacheRef
from pipeline.provenance import record

if TYPE_CHECKING:  # the context module imports torch
    from pipeline.context import RunContext


def run(ctx: RunContext, args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.cache import finalize

    cfg = ctx.cfg
    summary = finalize(cfg.store(CacheRef(args.model, args.dataset), args.split))
    if args.sentinel:
        args.sentinel.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            **summary,
            "provenance": record(cfg, "finalize", model=args.model, dataset=args.dataset, split=args.split),
        }
        atomic.write_json(args.sentinel, doc, indent=1)
    return summary
