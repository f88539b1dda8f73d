"""``quantify``: every intervention method on the val store, re-forwarded through the later blocks (:mod:`pipeline.quantify`).

Reads the val store, the model, ``sae.pt``, ``latents.zarr``, ``class_f1.zarr`` and the best seg
probe; writes the per-method tables, ``quantitative.csv`` and its chart (``layout.quantify_dir``,
``layout.quantitative_csv``).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.config import ConfigError, require_sae
from pipeline.layout import class_f1_path, latents_zarr, probe_stem, quantify_dir, quantitative_csv, sae_checkpoint
from pipeline.plan import require_quantify

if TYPE_CHECKING:  # the context module imports torch
    from pipeline.context import RunContext


def run(ctx: RunContext, args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.feature_selection import load_f1
    from pipeline.interventions import LatentEditor, ReforwardPredictor
    from pipeline.probes import load_probe
    from pipeline.quantify import provenance_columns, resolve_manual, run, write_outputs
    from pipeline.sae import load_latent_stats

    cfg = ctx.cfg
    q = require_quantify(cfg)  # upstream outputs were checked by provenance.check_cli_step
    sc = require_sae(cfg)
    device = ctx.device
    val = ctx.store(sc.cache, "val")
    val.require("patch_label")
    backbone, _ = ctx.backbone(sc.cache, val)  # refuses a model whose weights differ from the store's
    sae_path = sae_checkpoint(cfg)
    sae, _, scaling = ctx.sae(sae_path, val)  # refuses an SAE of another model / block / width
    sae = sae.to(device)
    latents = load_latent_stats(latents_zarr(cfg))
    probe, probe_meta = load_probe(probe_stem(cfg))
    probe = probe.to(device)
    if probe.out_features != val.n_classes:
        raise ConfigError(
            f"{probe_stem(cfg)}: the probe has {probe.out_features} classes but {val.path} has {val.n_classes}"
        )
    manual = resolve_manual(q.manual, val.class_names, sae.W_enc.shape[1], str(cfg.source))
    editor = LatentEditor(sae, scaling, n_prefix=val.n_prefix)
    train_on_other = bool(probe_meta.get("probe_config", {}).get("train_on_other", False))
    predictor = ReforwardPredictor(
        backbone,
        probe,
        layer=val.block(sc.layer),
        n_prefix=val.n_prefix,
        forward_dtype=val.attrs.get("forward_dtype", "float32"),
        real_classes_only=not train_on_other,
    )
    per_method, summary, timing = run(
        val=val,
        layer=sc.layer,
        editor=editor,
        predictor=predictor,
        cfg=q,
        max_value_S=np.asarray(latents["max_value"].values, dtype=np.float64),
        freq_S=np.asarray(latents["freq"].values, dtype=np.float64),
        f1=load_f1(class_f1_path(cfg)),
        manual=manual,
        device=device,
        progress=not args.no_progress,
    )
    summary = provenance_columns(
        summary,
        scale=q.scale,
        layer=sc.layer,  # as configured; block: its block number
        block=val.block(sc.layer),
        n_blocks=val.n_blocks,
        sae=str(sae_path),
        probe=str(probe_stem(cfg)),
        store=str(val.path),
        n_val_images=int(val.valid.sum()),
        predicts="all classes 0..C-1 (probe trained with train_on_other)" if train_on_other else "real classes 1..C-1",
        random_weights=val.random_weights,
        device=ctx.describe_device(),
    )
    write_outputs(quantify_dir(cfg), quantitative_csv(cfg), per_method, summary, random_weights=val.random_weights)
    return {"written": str(quantitative_csv(cfg)), **timing, "summary": summary.to_dict(orient="records")}
