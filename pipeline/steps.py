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
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline import atomic, layout
from pipeline.config import CacheRef, Config, ConfigError, ManipulateConfig, ManipulateExample
from pipeline.data.demo import make_classification_demo, make_segmentation_demo
from pipeline.layout import class_f1_path, latents_zarr, probe_stem, quantify_dir, quantitative_csv, sae_checkpoint
from pipeline.prepare import _run
from pipeline.probe_kinds import run_kind
from pipeline.plan import require_quantify
from pipeline.provenance import record

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
    atomic.write_json(Path(folder) / ".complete", result, indent=1)


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
        atomic.write_json(args.sentinel, doc, indent=1)
    return summary


def run_verify(ctx: None, args: argparse.Namespace) -> None:
    """``verify STORE``: check every chunk, print the summary; corrupt chunks end in a
    ChunkCorruptError (one ``error:`` line) unless ``--mark-not-done`` marks their images."""
    from pipeline.cache.checksums import mark_not_done, scan
    from pipeline.cache.store import ChunkCorruptError, open_group

    store = Path(args.store)
    open_group(store)  # not a store: CacheError naming it
    result = scan(store)
    summary = result.summary()
    n_bad = len(result.bad)
    print(
        f"{store}: {summary['chunks_checked']} chunks checked: {summary['chunks_checked'] - n_bad} ok, {n_bad} corrupt"
    )
    if not result.checksummed:
        print("  (a store made before chunk checksums: chunks were decoded, so flipped bits go unnoticed)")
    for b in result.bad:
        held = f"images {b.images[0]}..{b.images[1] - 1}" if b.images else "no per-image rows"
        print(f"  corrupt: {b.array} chunk {'.'.join(map(str, b.index))} ({held}): {b.why}")
    if not n_bad:
        return
    images = summary["corrupt_images"]
    print(f"  corrupt images: {len(images)} ({_ranges(images)})")
    if not args.mark_not_done:
        raise ChunkCorruptError(
            f"{store}: {n_bad} corrupt chunks ({len(images)} images); re-run with --mark-not-done to re-extract "
            "just them, or delete the store"
        )
    marked = mark_not_done(store, result)
    for sentinel in layout.store_sentinels(store):  # so snakemake reschedules the extraction
        shutil.rmtree(sentinel) if sentinel.is_dir() else sentinel.unlink(missing_ok=True)
    print(
        f"  marked {len(marked)} images not done ({_ranges(marked)}); re-run the extraction "
        "(snakemake, or `python -m pipeline extract` for each part, then finalize) to recompute them"
    )


def _ranges(values: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1..3, 7"``."""
    out, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            out.append(f"{start}..{v}" if v != start else str(v))
            start = None
    return ", ".join(out)


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
    atomic.write_json(out.with_suffix(".json"), summary, indent=1)
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
