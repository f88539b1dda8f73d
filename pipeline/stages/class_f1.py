"""``class-f1``: per-class F1 of every SAE latent over the train store's patch tokens (:mod:`pipeline.feature_selection`).

Reads ``sae.pt`` and ``sae.cache``'s train store; writes ``class_f1.zarr`` and ``class_f1.json``
(with its provenance record) in the quantify folder (``layout.class_f1_path``).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from pipeline import atomic
from pipeline.config import require_sae
from pipeline.layout import sae_files
from pipeline.plan import require_quantify
from pipeline.provenance import record

if TYPE_CHECKING:  # the context module imports torch
    from pipeline.context import RunContext


def run(ctx: RunContext, args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.feature_selection import class_latent_f1, save_f1

    cfg = ctx.cfg
    q = require_quantify(cfg)  # upstream outputs were checked by provenance.check_cli_step
    sc = require_sae(cfg)
    train = ctx.store(sc.cache, "train")
    files = sae_files(cfg)
    sae, _, scaling = ctx.sae(files.sae_pt, train)  # refuses an SAE of another model / block / width
    ds = class_latent_f1(train, sc.layer, sae, scaling, q.thresholds, device=ctx.device)
    save_f1(ds, files.class_f1_zarr)
    summary = {
        "store": str(train.path),
        "n_tokens": ds.attrs["n_tokens"],
        "thresholds": list(q.thresholds),
        "written": str(files.class_f1_zarr),
        "provenance": record(cfg, "class-f1"),
    }
    atomic.write_json(files.class_f1_json, summary, indent=1)
    return summary
