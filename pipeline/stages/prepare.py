"""``prepare``: lay out a downloaded dataset in the form the pipeline reads (:mod:`pipeline.prepare`).

A hand-run tool that takes no config (hence no run context); ``pipeline.prepare`` defines
its arguments and what it reads and writes.
"""

from __future__ import annotations

import argparse


def run(ctx: None, args: argparse.Namespace) -> int:
    from pipeline.prepare import _run

    return _run(args)
