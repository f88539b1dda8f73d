"""``class-f1``, ``propose`` and ``quantify`` steps (SAE feature interventions)."""

from __future__ import annotations

import argparse
import json

from pipeline.commands import add_config_arg, config_from_args
from pipeline.config import Config, ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser("class-f1", help="F1 of every SAE latent firing vs every class, on the train split")
    add_config_arg(f)
    f.set_defaults(func=run_class_f1)

    p = sub.add_parser("propose", help="per class, the top candidate latents by train F1, with gallery links (to pick manual features)")
    add_config_arg(p)
    p.set_defaults(func=run_propose)

    q = sub.add_parser("quantify", help="SAE interventions re-forwarded from the cache → per-class change tables, results/quantitative.csv")
    add_config_arg(q)
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=run_quantify)


def _require(cfg: Config):
    if cfg.sae is None or cfg.seg_probe is None:
        raise ConfigError(f"{cfg.source}: quantify needs both an `sae` and a `probes: seg` section")
    q = cfg.quantify
    if q is None:
        from pipeline.config import QuantifyConfig

        q = QuantifyConfig()
    if cfg.sae.cache != cfg.seg_probe.cache:
        raise ConfigError(f"{cfg.source}: key sae/cache and probes/seg/cache must name the same (model, dataset) for quantify: "
                          "sae.cache is where the SAE is applied; train it elsewhere with sae.source")
    if cfg.seg_probe.layer != -1:
        raise ConfigError(f"{cfg.source}: key probes/seg/layer must be -1 (the final representation) for quantify")
    return q


def run_class_f1(args: argparse.Namespace) -> dict:
    from pipeline.cache import CacheReader
    from pipeline.feature_selection import class_latent_f1, save_f1
    from pipeline.paths import class_f1_path, sae_dir
    from pipeline.runtime import resolve_device, set_threads
    from pipeline.sae.stages import load_sae_for

    cfg = config_from_args(args)
    q = _require(cfg)
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    train = CacheReader(cfg.store(cfg.sae.cache, "train"))
    sae, _, scaling = load_sae_for(cfg, sae_dir(cfg) / "sae.pt", train)  # refuses an SAE of another model / block / width
    ds = class_latent_f1(train, cfg.sae.layer, sae, scaling, q.thresholds, device=device)
    out = class_f1_path(cfg)
    save_f1(ds, out)
    summary = {"store": str(train.path), "n_tokens": ds.attrs["n_tokens"], "thresholds": list(q.thresholds), "written": str(out)}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def run_propose(args: argparse.Namespace) -> dict:
    from pipeline.proposals import write_proposals

    cfg = config_from_args(args)
    q = _require(cfg)
    return write_proposals(cfg, q)


def run_quantify(args: argparse.Namespace) -> dict:
    import numpy as np

    from pipeline.cache import CacheReader
    from pipeline.feature_selection import load_f1
    from pipeline.interventions import LatentEditor, ReforwardPredictor
    from pipeline.models import load_backbone
    from pipeline.paths import class_f1_path, probe_stem, quantify_dir, quantitative_csv, sae_dir
    from pipeline.probes import load_probe
    from pipeline.quantify import provenance_columns, resolve_manual, run, write_outputs
    from pipeline.runtime import describe_device, resolve_device, set_threads
    from pipeline.sae import load_latent_stats
    from pipeline.sae.stages import load_sae_for

    cfg = config_from_args(args)
    q = _require(cfg)
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    val = CacheReader(cfg.store(cfg.sae.cache, "val"))
    val.require("patch_label")
    backbone, _ = load_backbone(cfg.model(cfg.sae.cache.model).spec, device=device)
    sae_path = sae_dir(cfg) / "sae.pt"
    sae, _, scaling = load_sae_for(cfg, sae_path, val)  # refuses an SAE of another model / block / width
    sae = sae.to(device)
    latents = load_latent_stats(sae_dir(cfg) / "latents.zarr")
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
        layer=val.block(cfg.sae.layer),
        n_blocks=val.n_blocks,
        sae=str(sae_path),
        probe=str(probe_stem(cfg)),
        store=str(val.path),
        n_val_images=int(val.valid.sum()),
        predicts="all classes 0..C-1 (probe trained with train_on_other)" if train_on_other else "real classes 1..C-1",
        random_weights=val.random_weights,
        device=describe_device(device),
    )
    write_outputs(quantify_dir(cfg), quantitative_csv(cfg), per_method, summary, random_weights=val.random_weights)
    return {"written": str(quantitative_csv(cfg)), **timing, "summary": summary.to_dict(orient="records")}
