"""``propose``: the latents each intervention method would edit, written for review (:mod:`pipeline.proposals`).

Reads ``latents.json``, ``class_f1.zarr`` and the train store; writes the proposal tables and
image folders in the quantify folder (``pipeline.layout`` lists them).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from pipeline.plan import require_quantify

if TYPE_CHECKING:  # the context module imports torch
    from pipeline.context import RunContext


def run(ctx: RunContext, args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.proposals import write_proposals

    return write_proposals(ctx.cfg, require_quantify(ctx.cfg))
