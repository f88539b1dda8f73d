"""``probe-<kind>``: one probe kind's sweep (:mod:`pipeline.probe_kinds`; the kind's module does the work).

Every probe kind's stage runs this ``run``: the sub-command sets ``args.probe`` to its kind.
Reads the kind's cache and config section; writes ``<results>/probes/<kind>/<model>/<dataset>/``
(``pipeline.layout`` lists the files).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from pipeline.probe_kinds import run_kind

if TYPE_CHECKING:  # the context module imports torch
    from pipeline.context import RunContext


def run(ctx: RunContext, args: argparse.Namespace) -> dict[str, Any]:
    return run_kind(args.probe, ctx.cfg, out_dir=args.out, progress=not args.no_progress, ctx=ctx)
