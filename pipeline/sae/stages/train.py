"""``sae-train``: train the SAE sweep on one cached block and choose the member used downstream.

Tokens of block L (``patches``; ``patches+cls`` adds the CLS token, never registers) from the
TRAIN store of ``sae.source``'s cache (:mod:`.tokens`: streamed chunk-wise, or resident on the
device), scaled with :class:`~pipeline.sae.scaling.InputScaling` built from that store's stats
file (:mod:`pipeline.stats`; mean and E‖x − mean‖² of those tokens). All members
(``exp_factors`` × ``lrs`` × ``kinds`` entries × λ or each entry's parameters) train in one pass
(:func:`~pipeline.sae.train.train_sweep`); metrics come from up to ``EVAL_MAX_TOKENS`` tokens of
the VAL store (held out). ``sae.source: checkpoint | hub`` imports instead (:mod:`.source`).

Writes into ``<results>/sae/<model>/<dataset>/layer<L>/`` (:func:`pipeline.layout.sae_dir`):
``sweep.csv``, ``sweep.{html,png,svg}`` (with the PCA baseline), ``sweep_prefixes.csv`` (when a
member is Matryoshka: each prefix's normalised MSE), ``members/<slug>.pt`` (+ ``.safetensors``), ``sae.pt``
(+ ``sae.safetensors``) = the member with the lowest normalised MSE among those with
L0 ≤ ``max_l0`` (:func:`choose_member`), ``chosen.json``, and the training curves ``history.csv``
(one row per logged step per member, every ``max(1, n_steps // HISTORY_ROWS)``-th step) with
their chart ``history.{html,png,svg}``.

Dimension key: N rows (tokens), D width, S latents.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline import atomic, layout
from pipeline.cache.reader import CacheReader
from pipeline.config import (
    CacheRef,
    Config,
    ConfigError,
    SAEConfig,
    SAEMemberSpec,
    require_sae,
    sae_is_imported,
    sae_members,
    sae_train_ref,
)
from pipeline.context import RunContext
from pipeline.layout import SAEFiles, sae_files, stats_path
from pipeline.progress import SAESweepProgress
from pipeline.provenance import record
from pipeline.runtime import describe_device
from pipeline.stats import read_stats

from ..applies import SAEStageError, check_applies, weights_sha256
from ..scaling import InputScaling, scaling_from_stats
from ..train import (
    AuxK,
    SAEHparams,
    TrainConfig,
    TrainedSAE,
    history_chart,
    history_table,
    pca_table,
    prefix_table,
    sweep_chart,
    sweep_table,
    train_sweep,
)
from .common import now, open_store, write_json
from .source import run_import
from .tokens import (
    eval_batches,
    tokens_per_pass,
    training_batches,
)

log = logging.getLogger(__name__)


CHOICE_RULE = "lowest normalized_mse among members with l0 <= max_l0 (ties: first in sweep order)"
HISTORY_ROWS = 2000
"""sae-train logs every ``max(1, n_steps // HISTORY_ROWS)``-th step (at most ~2000 rows per member)."""


class NoMemberError(ConfigError):
    """No sweep member satisfies ``sae.max_l0`` (a config problem: raise max_l0 or λ)."""


def stats_file(cfg: Config, ref: CacheRef, split: str) -> Path:
    return stats_path(cfg, ref, split)


def member_grid(sc: SAEConfig) -> list[SAEHparams]:
    """The sweep's members (:func:`pipeline.config.sae_members`: exp_factor × lr × ``sae.kinds``
    entry × λ or the entry's parameter lists, in that nesting order, no duplicates) as
    :class:`SAEHparams`. Raises ConfigError when two members would share a file name."""
    members = [_hparams(m) for m in sae_members(sc)]
    slugs = [member_slug(hp) for hp in members]
    if len(set(slugs)) != len(slugs):
        twice = sorted({s for s in slugs if slugs.count(s) > 1})
        raise ConfigError(
            f"key sae/kinds: entries give two members named {twice[0]} (they differ only in auxk or matryoshka settings)"
        )
    return members


def _hparams(m: SAEMemberSpec) -> SAEHparams:
    return SAEHparams(
        lr=m.lr,
        sparsity_coeff=m.sparsity_coeff,
        exp_factor=m.exp_factor,
        kind=m.kind,
        kind_params=dict(m.params),
        auxk=None if m.auxk is None else AuxK(**dict(m.auxk)),
        prefixes=m.prefixes,
    )


def member_slug(hp: SAEHparams) -> str:
    """File-name-safe member name, e.g. ``x8_lr0.001_lambda0.0003`` or ``x8_lr0.001_topk_k32_auxk``
    (:func:`pipeline.layout.member_slug` owns the spelling)."""
    return layout.member_slug(
        hp.exp_factor,
        hp.lr,
        hp.sparsity_coeff,
        hp.kind,
        tuple(hp.kind_params.items()),
        auxk=hp.auxk is not None,
        n_prefixes=len(hp.prefixes or ()),
    )


# is_imported / train_ref live in pipeline.config (no torch): the workflow and provenance use them too
is_imported, train_ref = sae_is_imported, sae_train_ref


def run(ctx: RunContext, args: argparse.Namespace) -> dict[str, Any]:
    """``python -m pipeline sae-train``: :func:`run_train` in the step's context."""
    return run_train(ctx.cfg, out_dir=args.out, progress=not args.no_progress, ctx=ctx)


def train_outputs(cfg: Config) -> dict[str, list[Path]]:
    """Files ``sae-train`` writes: ``main`` (declared by the rule), ``members`` (written, not declared);
    from :func:`pipeline.layout.step_outputs`."""
    require_sae(cfg)
    outs = layout.step_outputs(cfg, "sae-train")
    return {"main": outs.files, "members": outs.undeclared}


# --------------------------------------------------------------------------- choosing a member


def choose_member(table: pd.DataFrame, max_l0: float) -> tuple[int, dict[str, Any]]:
    """Row position of the member used downstream, and why (see ``CHOICE_RULE``).

    Members with NaN metrics never qualify. Raises :class:`NoMemberError` naming
    ``max_l0`` and the smallest L0 found when none has L0 ≤ max_l0.
    """
    l0 = np.asarray(pd.to_numeric(table["l0"], errors="coerce"), dtype=float)
    nmse = np.asarray(pd.to_numeric(table["normalized_mse"], errors="coerce"), dtype=float)
    ok = np.isfinite(l0) & np.isfinite(nmse) & (l0 <= max_l0)
    if not ok.any():
        finite = l0[np.isfinite(l0)]
        smallest = f"{finite.min():.4g}" if finite.size else "none (no member has finite metrics)"
        raise NoMemberError(
            f"sae/max_l0: no sweep member has L0 <= max_l0 = {max_l0:g}; the smallest L0 found is {smallest}. "
            "Raise sae.max_l0, or add larger sparsity_coeffs to the sweep"
        )
    pos = int(np.flatnonzero(ok)[np.argmin(nmse[ok])])
    reason = {
        "rule": CHOICE_RULE,
        "max_l0": float(max_l0),
        "n_members": len(table),
        "n_qualifying": int(ok.sum()),
        "qualifying": [int(i) for i in np.flatnonzero(ok)],
        "l0": float(l0[pos]),
        "normalized_mse": float(nmse[pos]),
    }
    return pos, reason


def load_train_scaling(cfg: Config, reader: CacheReader, block: int, tokens: str) -> tuple[InputScaling, Path]:
    """The scaling from the train store's stats file (refusing one made from another store)."""
    path = stats_file(cfg, train_ref(require_sae(cfg)), "train")
    stats = read_stats(path, config_hash=reader.attrs["config_hash"])
    return scaling_from_stats(stats, block, tokens), path


def _provenance(cfg: Config, train: CacheReader, val: CacheReader | None, block: int, stats: Path) -> dict:
    sc = require_sae(cfg)
    ref = train_ref(sc)
    return {
        "model": ref.model,
        "dataset": ref.dataset,
        "model_weights_sha256": weights_sha256(train),
        "d_model": int(train.d_model),
        "store": str(train.path),
        "store_config_hash": train.attrs["config_hash"],
        "val_store": str(val.path) if val is not None else None,
        "val_store_config_hash": val.attrs["config_hash"] if val is not None else None,
        "layer": int(sc.layer),
        "block": int(block),
        "block_note": "layer: as configured (sae.layer); block: its block number; input = that block's output (residual stream), as cached",
        "tokens": sc.tokens,
        "stats": str(stats),
        "scaling_note": f"(x - mean) * scalar, mean and E||x - mean||^2 of the {sc.tokens} tokens of the train store",
        "random_weights": train.random_weights,
        "provenance": record(cfg, "sae-train"),
    }


def open_train_stores(cfg: Config, sc: SAEConfig) -> tuple[CacheReader, CacheReader | None, int]:
    """``(train, val, block)``: the train store of ``sae.source``'s cache (checked to apply to
    ``sae.cache`` when it is another one), its val store if extracted (checked to come from the
    same model and to hold the block; else None, with a warning) and the block number."""
    ref = train_ref(sc)
    train = open_store(cfg, ref, "train")
    block = train.block(sc.layer)
    if ref != sc.cache:  # trained elsewhere: it must apply to sae.cache (same weights, block, width)
        target = open_store(cfg, sc.cache, "train")
        check_applies(
            train.path,
            {"model_weights_sha256": weights_sha256(train), "block": block, "d_model": train.d_model},
            target,
            target.block(sc.layer),
        )
    val_path = cfg.store(ref, "val")
    val = CacheReader(val_path) if (val_path / "zarr.json").exists() else None
    if val is not None:
        val.layer_index(block)
        if val.attrs["config"]["model"] != train.attrs["config"]["model"] or val.d_model != train.d_model:
            raise SAEStageError(f"{val.path}: made with another model than {train.path}")
    else:
        log.warning("no val store at %s: sweep metrics come from the end of training", val_path)
    return train, val, block


def train_config(sc: SAEConfig) -> TrainConfig:
    """The sweep's :class:`TrainConfig` from ``sae``: tokens, batch, warm-ups, seed; a history
    row every ``n_steps / HISTORY_ROWS`` steps."""
    tc = TrainConfig(
        n_tokens=sc.n_tokens,
        batch_size=sc.batch_size,
        lr_warmup_steps=sc.lr_warmup_steps,
        sparsity_warmup_steps=sc.sparsity_warmup_steps,
        seed=sc.seed,
    )
    return dataclasses.replace(tc, log_every=max(1, tc.n_steps // HISTORY_ROWS))


def run_train(
    cfg: Config, *, out_dir: Path | None = None, progress: bool = True, device: str | None = None, ctx=None
) -> dict[str, Any]:
    """Train the sweep from the cache, write the outputs; return a summary. ``ctx``: the step's
    RunContext (default: one started here on ``device``, else the config's)."""
    sc = require_sae(cfg)
    if is_imported(sc):
        return run_import(cfg, out_dir=out_dir)
    ctx = ctx or RunContext.start(cfg, device=device)
    threads, dev = ctx.threads, ctx.device
    train, val, block = open_train_stores(cfg, sc)
    files = sae_files(cfg, out_dir)
    scaling, stats_path = load_train_scaling(cfg, train, block, sc.tokens)
    members = member_grid(sc)
    tc = train_config(sc)
    per_pass = tokens_per_pass(train, sc.tokens)
    log.info(
        "SAE sweep: %d members, %d tokens (%.2f passes of %d), block %d, device %s",
        len(members),
        sc.n_tokens,
        sc.n_tokens / per_pass,
        per_pass,
        block,
        dev,
    )
    source, batches = training_batches(train, block, sc, dev, threads)
    held_out = eval_batches(val, block, tokens=sc.tokens) if val is not None else None
    t0 = time.perf_counter()
    watch = SAESweepProgress(sc.n_tokens, [hp.label for hp in members], max_l0=sc.max_l0, enabled=progress)
    try:
        trained = train_sweep(
            batches,
            train.d_model,
            members,
            tc,
            # the scaled data has mean 0 (the scaling centres on the data mean): b_dec starts there
            data_mean_D=torch.zeros(train.d_model),
            device=dev,
            progress=False,
            scaling=scaling,
            eval_batches=held_out,
            on_step=watch,
        )
    finally:
        watch.close()
    seconds = time.perf_counter() - t0
    prov = {
        **_provenance(cfg, train, val, block, stats_path),
        "device": describe_device(dev),
        "threads": threads,
        "n_passes": math.ceil(sc.n_tokens / per_pass),
        "tokens_per_pass": per_pass,
        "token_source": source,
    }
    return write_train_outputs(trained, members, files, prov, max_l0=sc.max_l0, seconds=seconds)


def write_train_outputs(
    trained: list[TrainedSAE],
    members: list[SAEHparams],
    files: SAEFiles,
    prov: dict,
    *,
    max_l0: float,
    seconds: float = float("nan"),
) -> dict[str, Any]:
    """Members, sweep table + chart; then the choice (raises NoMemberError after writing the sweep)."""
    files.dir.mkdir(parents=True, exist_ok=True)
    slugs = [member_slug(hp) for hp in members]
    for t, slug in zip(trained, slugs):
        t.save(files.member(slug), extra_cfg={**prov, "member": slug})
    table = sweep_table(trained)
    table.insert(1, "slug", slugs)
    table["checkpoint"] = [str(files.member(s)) for s in slugs]
    table["random_weights"] = bool(prov.get("random_weights", False))
    table["chosen"] = False
    random_weights = bool(prov.get("random_weights", False))
    pca = pca_table(trained)
    prefixes = prefix_table(trained)
    if len(prefixes):  # Matryoshka members: each prefix's reconstruction (long: one row per member and prefix)
        prefixes.insert(1, "slug", [slugs[m] for m in prefixes["member"]])
        atomic.write_csv(prefixes, files.sweep_prefixes_csv, index=False)
    try:
        pos, reason = choose_member(table, max_l0)
    except NoMemberError:
        atomic.write_csv(table, files.sweep_csv, index=False)
        sweep_chart(table, files.sweep_chart, random_weights=random_weights, pca=pca)
        write_history(trained, slugs, files, chosen=None, random_weights=random_weights)
        for path in files.imported():  # no chosen SAE: none of an earlier run's is left
            path.unlink(missing_ok=True)
        raise
    table.loc[pos, "chosen"] = True
    atomic.write_csv(table, files.sweep_csv, index=False)
    sweep_chart(table, files.sweep_chart, random_weights=random_weights, pca=pca)
    write_history(trained, slugs, files, chosen=slugs[pos], random_weights=random_weights)
    chosen = trained[pos]
    record = {
        "member": slugs[pos],
        "label": chosen.hparams.label,
        "checkpoint": str(files.sae_pt),
        "member_checkpoint": str(files.member(slugs[pos])),
        "kind": chosen.hparams.kind,
        "kind_params": dict(chosen.hparams.kind_params),
        "lr": chosen.hparams.lr,
        "sparsity_coeff": chosen.hparams.sparsity_coeff,
        "exp_factor": chosen.hparams.exp_factor,
        "n_latents": chosen.sae.n_latents,
        "mse": chosen.mse,
        "n_dead": chosen.n_dead,
        "n_dense": chosen.n_dense,
        "metrics_source": chosen.metrics_source,
        **reason,
        "why": (
            f"{slugs[pos]} has the lowest normalised MSE ({reason['normalized_mse']:.4g}) of the "
            f"{reason['n_qualifying']} of {reason['n_members']} members with L0 <= {max_l0:g} "
            f"(its L0: {reason['l0']:.3g})"
        ),
    }
    chosen.save(files.sae_pt, extra_cfg={**prov, "member": slugs[pos], "chosen": reason})
    write_json(
        files.chosen_json,
        {
            **record,
            **{
                k: prov[k]
                for k in ("store", "store_config_hash", "layer", "block", "tokens", "provenance")
                if k in prov
            },
            "created": now(),
        },
    )
    return {
        "out": str(files.dir),
        "members": len(trained),
        "chosen": slugs[pos],
        "chosen_l0": round(reason["l0"], 4),
        "chosen_normalized_mse": round(reason["normalized_mse"], 5),
        "tokens_per_second": round(trained[0].n_tokens_seen / seconds, 1) if seconds > 0 else None,
        "metrics_source": chosen.metrics_source,
        "sweep": table[["slug", "l0", "normalized_mse", "n_dead", "n_dense"]].round(5).to_dict("records"),
    }


def write_history(
    trained: list[TrainedSAE], slugs: list[str], files: SAEFiles, *, chosen: str | None, random_weights: bool
) -> pd.DataFrame:
    """``history.csv`` (one row per logged step per member: ``slug``, ``chosen`` and
    :data:`~pipeline.sae.train.HISTORY_COLUMNS`) and its chart ``history.{html,png,svg}``."""
    history = history_table(trained)
    history.insert(1, "slug", [slugs[m] for m in history["member"]])
    history.insert(2, "chosen", history["slug"] == chosen)
    atomic.write_csv(history, files.history_csv, index=False)
    history_chart(
        history.rename(columns={"slug": "label"}), files.history_chart, chosen=chosen, random_weights=random_weights
    )
    return history
