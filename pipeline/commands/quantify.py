"""``class-f1``, ``propose`` and ``quantify`` steps (SAE feature interventions)."""

from __future__ import annotations

import argparse
import json

from pipeline.commands import add_config_arg, config_from_args
from pipeline.config import Config, ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser("class-f1", help="F1 of every SAE latent firing vs every class, on the train split",
                      description="Reads the chosen SAE (sae.pt) and the train store; writes <results>/quantitative/class_f1.zarr and its .json summary.")
    add_config_arg(f)
    f.set_defaults(func=run_class_f1)

    p = sub.add_parser("propose", help="per class, the top candidate latents by train F1, with gallery links (to pick manual features)",
                      description="Reads class_f1.zarr, latents.json and the train store; writes <results>/quantitative/proposals.csv and proposals.html.")
    add_config_arg(p)
    p.set_defaults(func=run_propose)

    q = sub.add_parser("quantify", help="SAE interventions re-forwarded from the cache → per-class change tables, results/quantitative.csv",
                      description="Reads the val store, the chosen SAE and its latent stats, class_f1.zarr, the seg probe and the model; writes <results>/quantitative/<method>.csv, chart.{html,png,svg} and <results>/quantitative.csv.")
    add_config_arg(q)
    q.add_argument("--no-progress", action="store_true", help="no progress bar and no progress lines in the log")
    q.set_defaults(func=run_quantify)


def _require(cfg: Config, step: str):
    """The checked ``quantify`` section (upstream outputs were checked by ``provenance.check_cli_step``)."""
    from pipeline.provenance import require_quantify

    return require_quantify(cfg)


def run_class_f1(args: argparse.Namespace) -> dict:
    from pipeline.context import RunContext
    from pipeline.feature_selection import class_latent_f1, save_f1
    from pipeline.layout import class_f1_path, sae_checkpoint
    from pipeline.provenance import record

    cfg = config_from_args(args)
    q = _require(cfg, "class-f1")
    ctx = RunContext.start(cfg)
    train = ctx.store(cfg.sae.cache, "train")
    sae, _, scaling = ctx.sae(sae_checkpoint(cfg), train)  # refuses an SAE of another model / block / width
    ds = class_latent_f1(train, cfg.sae.layer, sae, scaling, q.thresholds, device=ctx.device)
    out = class_f1_path(cfg)
    save_f1(ds, out)
    summary = {"store": str(train.path), "n_tokens": ds.attrs["n_tokens"], "thresholds": list(q.thresholds), "written": str(out),
               "provenance": record(cfg, "class-f1")}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def run_propose(args: argparse.Namespace) -> dict:
    from pipeline.proposals import write_proposals

    cfg = config_from_args(args)
    q = _require(cfg, "propose")
    return write_proposals(cfg, q)


def run_quantify(args: argparse.Namespace) -> dict:
    import numpy as np

    from pipeline.context import RunContext
    from pipeline.feature_selection import load_f1
    from pipeline.interventions import LatentEditor, ReforwardPredictor
    from pipeline.layout import class_f1_path, latents_zarr, probe_stem, quantify_dir, quantitative_csv, sae_checkpoint
    from pipeline.probes import load_probe
    from pipeline.quantify import provenance_columns, resolve_manual, run, write_outputs
    from pipeline.sae import load_latent_stats

    cfg = config_from_args(args)
    q = _require(cfg, "quantify")
    ctx = RunContext.start(cfg)
    device = ctx.device
    val = ctx.store(cfg.sae.cache, "val")
    val.require("patch_label")
    backbone, _ = ctx.backbone(cfg.sae.cache, val)  # refuses a model whose weights differ from the store's
    sae_path = sae_checkpoint(cfg)
    sae, _, scaling = ctx.sae(sae_path, val)  # refuses an SAE of another model / block / width
    sae = sae.to(device)
    latents = load_latent_stats(latents_zarr(cfg))
    probe, probe_meta = load_probe(probe_stem(cfg))
    probe = probe.to(device)
    if probe.out_features != val.n_classes:
        raise ConfigError(f"{probe_stem(cfg)}: the probe has {probe.out_features} classes but {val.path} has {val.n_classes}")
    manual = resolve_manual(q.manual, val.class_names, sae.W_enc.shape[1], str(cfg.source))
    editor = LatentEditor(sae, scaling, n_prefix=val.n_prefix)
    train_on_other = bool(probe_meta.get("probe_config", {}).get("train_on_other", False))
    predictor = ReforwardPredictor(backbone, probe, layer=val.block(cfg.sae.layer), n_prefix=val.n_prefix,
                                   forward_dtype=val.attrs.get("forward_dtype", "float32"), real_classes_only=not train_on_other)
    per_method, summary, timing = run(
        val=val,
        layer=cfg.sae.layer,
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
        layer=cfg.sae.layer,  # as configured; block: its block number
        block=val.block(cfg.sae.layer),
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
