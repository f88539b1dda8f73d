"""What each ``python -m pipeline STEP`` does once its run context is started: the stages' ``run``.

``pipeline/__main__.py`` parses the arguments (the ``pipeline.commands`` modules define them),
loads the config, refuses stale upstream outputs (:func:`pipeline.provenance.check_cli_step`),
starts a :class:`pipeline.context.RunContext` and calls ``STAGES[step].run(ctx, args)``, which
lands here: each function reads the parsed ``args`` and the context (config, threads, device,
checked stores), calls the stage's module and returns the JSON summary ``__main__`` prints.
``ctx`` is None only for ``prepare``, which takes no config.

Each function imports its stage module when called (the function-local imports below), so
``--help`` and a config error import no torch, transformers or dask; the torch-free modules
(config, layout, provenance, probe_kinds, demo data, prepare) are imported at the top.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.config import CacheRef, Config, ConfigError, ManipulateConfig, ManipulateExample
from pipeline.data.demo import make_classification_demo, make_segmentation_demo
from pipeline.layout import class_f1_path, latents_zarr, probe_stem, quantify_dir, quantitative_csv, sae_checkpoint
from pipeline.prepare import _run
from pipeline.probe_kinds import run_kind
from pipeline.provenance import record, require_quantify

if TYPE_CHECKING:  # the context module imports torch
    from pipeline.context import RunContext

# ---------------------------------------------------------------------------- demo


def _demo_entry(cfg: Config, section: str, name: str) -> dict:
    table = cfg.demo.get(section, {})
    if name not in table:
        raise ConfigError(f"{cfg.source}: key demo/{section}/{name}: not defined (known: {', '.join(table) or 'none'})")
    return dict(table[name])


def _mark_complete(folder, result: dict) -> None:
    """The sentinel the demo rules declare; written last, so a killed run is redone."""
    (Path(folder) / ".complete").write_text(json.dumps(result, indent=1) + "\n")


def run_demo_data(ctx: RunContext, args: argparse.Namespace) -> dict:

    cfg = ctx.cfg
    spec = _demo_entry(cfg, "datasets", args.name)
    root = cfg.dataset(args.name).root
    seed = cfg.demo.get("seed", 0)
    kind = spec.pop("kind")
    if kind == "segmentation":
        out = make_segmentation_demo(root, seed=seed, **spec)
    else:
        out = make_classification_demo(root, seed=seed, **spec)
    result = {"dataset": args.name, "written": str(out), "note": "synthetic data", "seed": seed, **spec}
    _mark_complete(root, result)
    return result


def run_demo_model(ctx: RunContext, args: argparse.Namespace) -> dict:
    from pipeline.models import build_demo_model

    cfg = ctx.cfg
    spec = _demo_entry(cfg, "models", args.name)
    family = spec.pop("family")
    out = build_demo_model(family, Path(cfg.model(args.name).spec.source), seed=cfg.demo.get("seed", 0), **spec)
    result = {"model": args.name, "written": str(out), "note": "RANDOM-INIT weights", "family": family, **spec}
    _mark_complete(Path(out), result)
    return result


# ---------------------------------------------------------------------------- extract


def run_extract(ctx: RunContext, args: argparse.Namespace) -> dict:
    from pipeline.extract import extract, write_part_sentinel

    cfg = ctx.cfg
    report = extract(
        cfg,
        CacheRef(args.model, args.dataset),
        args.split,
        part=args.part,
        of=args.of,
        progress=not args.no_progress,
        ctx=ctx,
    )
    if args.sentinel:
        write_part_sentinel(
            args.sentinel, report, record(cfg, "extract", model=args.model, dataset=args.dataset, split=args.split)
        )
    return {**report.__dict__, "images_per_second": round(report.images_per_second, 2)}


def run_finalize(ctx: RunContext, args: argparse.Namespace) -> dict:
    from pipeline.cache import finalize

    cfg = ctx.cfg
    summary = finalize(cfg.store(CacheRef(args.model, args.dataset), args.split))
    if args.sentinel:
        args.sentinel.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            **summary,
            "provenance": record(cfg, "finalize", model=args.model, dataset=args.dataset, split=args.split),
        }
        args.sentinel.write_text(json.dumps(doc, indent=1) + "\n")
    return summary


def run_prepare(ctx: None, args: argparse.Namespace) -> int:
    """``prepare`` takes no config (hence no context): its own entry point."""

    return _run(args)


# ---------------------------------------------------------------------------- stats and SAE


def run_stats(ctx: RunContext, args: argparse.Namespace) -> dict:
    from pipeline.stats import run_stats as stats

    try:
        return stats(ctx.cfg, args.model, args.dataset, args.split, scheduler=args.scheduler, out=args.out)
    except RuntimeError as err:  # --scheduler without the distributed package: one clear line
        if args.scheduler and "distributed" in str(err):
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        raise


# ---------------------------------------------------------------------------- probes and dimred


def run_probe(ctx: RunContext, args: argparse.Namespace) -> dict:
    """``probe-<kind>``: the kind (``args.probe``, set by its sub-command) runs its sweep."""

    return run_kind(args.probe, ctx.cfg, out_dir=args.out, progress=not args.no_progress, ctx=ctx)


def run_dimred(ctx: RunContext, args: argparse.Namespace) -> dict:
    from pipeline.dimred_study import run_dimred_study

    return run_dimred_study(ctx.cfg, progress=not args.no_progress, ctx=ctx)


# ---------------------------------------------------------------------------- interventions


def run_class_f1(ctx: RunContext, args: argparse.Namespace) -> dict:
    from pipeline.feature_selection import class_latent_f1, save_f1

    cfg = ctx.cfg
    q = require_quantify(cfg)  # upstream outputs were checked by provenance.check_cli_step
    train = ctx.store(cfg.sae.cache, "train")
    sae, _, scaling = ctx.sae(sae_checkpoint(cfg), train)  # refuses an SAE of another model / block / width
    ds = class_latent_f1(train, cfg.sae.layer, sae, scaling, q.thresholds, device=ctx.device)
    out = class_f1_path(cfg)
    save_f1(ds, out)
    summary = {
        "store": str(train.path),
        "n_tokens": ds.attrs["n_tokens"],
        "thresholds": list(q.thresholds),
        "written": str(out),
        "provenance": record(cfg, "class-f1"),
    }
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def run_propose(ctx: RunContext, args: argparse.Namespace) -> dict:
    from pipeline.proposals import write_proposals

    return write_proposals(ctx.cfg, require_quantify(ctx.cfg))


def run_quantify(ctx: RunContext, args: argparse.Namespace) -> dict:
    from pipeline.feature_selection import load_f1
    from pipeline.interventions import LatentEditor, ReforwardPredictor
    from pipeline.probes import load_probe
    from pipeline.quantify import provenance_columns, resolve_manual, run, write_outputs
    from pipeline.sae import load_latent_stats

    cfg = ctx.cfg
    q = require_quantify(cfg)  # upstream outputs were checked by provenance.check_cli_step
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
        raise ConfigError(
            f"{probe_stem(cfg)}: the probe has {probe.out_features} classes but {val.path} has {val.n_classes}"
        )
    manual = resolve_manual(q.manual, val.class_names, sae.W_enc.shape[1], str(cfg.source))
    editor = LatentEditor(sae, scaling, n_prefix=val.n_prefix)
    train_on_other = bool(probe_meta.get("probe_config", {}).get("train_on_other", False))
    predictor = ReforwardPredictor(
        backbone,
        probe,
        layer=val.block(cfg.sae.layer),
        n_prefix=val.n_prefix,
        forward_dtype=val.attrs.get("forward_dtype", "float32"),
        real_classes_only=not train_on_other,
    )
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


def run_manipulate(ctx: RunContext, args: argparse.Namespace) -> dict:
    from pipeline.manipulate import Manipulator, run_example

    cfg = ctx.cfg
    settings = cfg.manipulate or ManipulateConfig()
    if args.image is not None:
        if args.example:
            raise ConfigError("give either --example or --image, not both")
        if args.latents and len(args.values) != len(args.latents):
            raise ConfigError(f"--values: {len(args.values)} values for {len(args.latents)} latents")
        image = int(args.image) if args.image.isdigit() else args.image
        examples = [
            ManipulateExample(
                args.name,
                image,
                args.split,
                args.target_class,
                args.other_class,
                tuple(args.latents),
                tuple(args.values),
            )
        ]
    else:
        known = {e.name: e for e in settings.examples}
        missing = [n for n in args.example if n not in known]
        if missing:
            raise ConfigError(
                f"{cfg.source}: key manipulate/examples: no example named {', '.join(missing)} (known: {', '.join(known) or 'none'})"
            )
        examples = [known[n] for n in args.example] if args.example else list(settings.examples)
        if not examples:
            raise ConfigError(f"{cfg.source}: key manipulate/examples: no example configured; add one or pass --image")
    if args.out is not None and len(examples) > 1:
        raise ConfigError("--out names one folder: give one --example with it")
    m = Manipulator(cfg, device=ctx.device)
    return {"examples": [run_example(m, ex, args.out) for ex in examples]}
