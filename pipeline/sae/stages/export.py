"""``export-sae``: write an SAE checkpoint of ours as a saev schema-5 file (:mod:`pipeline.sae.export`).

A hand-run tool (no config, no Snakemake rule): reads ``SAE_PT``, writes ``OUT``.
"""

from __future__ import annotations

import argparse
from typing import Any


def run(ctx: None, args: argparse.Namespace) -> dict[str, Any]:
    """``python -m pipeline export-sae SAE_PT OUT``: takes no config, hence no context."""
    from pipeline.sae.export import export_saev

    return export_saev(
        args.sae_pt, args.out, fold_scaling=not args.no_fold_scaling, allow_topk_negatives=args.allow_topk_negatives
    )
