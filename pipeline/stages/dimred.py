"""``dimred``: the STEGO follow-up study on one cache (:mod:`pipeline.dimred_study`).

Reads the ``dimred`` section's cache (train and val stores) and model; writes
``<results>/dimred/<model>/<dataset>/`` (``pipeline.layout`` lists the files).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the context module imports torch
    from pipeline.context import RunContext


def run(ctx: RunContext, args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.dimred_study import run_dimred_study

    return run_dimred_study(ctx.cfg, progress=not args.no_progress, ctx=ctx)
