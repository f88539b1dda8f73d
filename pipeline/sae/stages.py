"""SAE stages on the activation cache: train a sweep, latent statistics, gallery.

Glue between the store (:mod:`pipeline.cache`), the statistics (:mod:`pipeline.stats`) and
the SAE core (:mod:`pipeline.sae`); every stage writes into
``<results>/sae/<model>/<dataset>/layer<L>/`` (L = ``sae.layer`` as configured, e.g. ``layer-2``;
the files record it as ``layer`` and its block number as ``block``; :mod:`pipeline.layout`
owns these paths and file lists).

``sae-train`` (:func:`run_train`)
    Tokens of block L (``patches``; ``patches+cls`` adds the CLS token, never registers)
    from the TRAIN store. ``sae.token_source: stream`` (and ``auto`` off CUDA): streamed
    chunk-wise (:func:`train_batches`): each pass visits the store's chunks once in a fresh
    random order (seed ``seed + pass``), passes chained; groups of whole chunks holding about
    ``sae.shuffle_buffer`` rows are decoded on worker threads into preallocated buffers and each
    group's rows permuted and gathered into batches (leftovers carried), until ``n_tokens``; float32
    batches on CPU, stored-dtype pinned batches for CUDA (cast there), made on a producer thread.
    ``device`` (and ``auto`` on CUDA when they fit: at most half the free device memory): the
    layer's tokens loaded onto the device once, a fresh permutation per pass
    (:func:`device_batches`). Inputs are scaled with :class:`InputScaling` built from the stats file of
    the train store (``pipeline.stats``; mean and E‖x − mean‖² of those tokens). All members
    (lrs × sparsity_coeffs × exp_factors) train in one pass (:func:`train_sweep`); metrics
    come from up to ``EVAL_MAX_TOKENS`` tokens of the VAL store (held out). Writes
    ``sweep.csv``, ``sweep.{html,png,svg}``, ``members/<slug>.pt`` (+ ``.safetensors``),
    ``sae.pt`` (+ ``sae.safetensors``) = the member with the lowest normalised MSE among
    those with L0 ≤ ``max_l0`` (:func:`choose_member`), ``chosen.json``, and the training
    curves ``history.csv`` (one row per logged step per member, every
    ``max(1, n_steps // HISTORY_ROWS)``-th step) with their chart ``history.{html,png,svg}``.

``sae.source`` (where the SAE comes from; ``sae.cache`` is where it is applied)
    ``cache`` (or no source): the sweep above trains on that cache's train store (any cache
    of the same model: its stores must carry the same model weights hash, block and width as
    ``sae.cache``'s). ``checkpoint`` / ``hub`` (:func:`run_import`): the file (downloaded with
    ``huggingface_hub.hf_hub_download`` at the configured revision, its sha256 checked against
    ``sha256`` when given) is loaded with :func:`load_checkpoint` and re-saved as ``sae.pt``
    with its provenance (source, revision, resolved commit, sha256, encoder convention) and
    its input scaling: the checkpoint's own when it records one, else saev's convention
    (:func:`saev_scaling`) computed on ``sae.cache``'s train store. Every later stage loads
    ``sae.pt`` through :func:`load_sae_for`, which refuses an SAE whose recorded model
    weights hash, block or width differs from the store it is applied to.

``sae-latents`` (:func:`run_latents`)
    ``sae.pt`` over every valid image's patch tokens of the TRAIN store, one zarr chunk at a
    time, with the checkpoint's own scaling → :func:`latent_stats` → ``latents.zarr``, saev's
    feature-density views ``density.{html,png,svg}`` (:func:`density_chart`) and a
    ``latents.json`` summary (dead latents, the latents selected by ``log_freq_range`` /
    ``log_value_range`` on the mean value when firing, as saev).

``sae-gallery`` (:func:`run_gallery`)
    ``gallery_latents`` of the selected latents, spread evenly over log-frequency (so the
    gallery shows rare and common latents alike, not only the strongest), drawn with
    :func:`write_gallery` on the images read from the dataset root recorded in the store
    with the store's resize / centre-crop geometry (so patch maps line up). Writes
    ``gallery/index.html``, ``gallery/latent_<id>.png`` and ``gallery/selection.json``.

Dimension key: N rows (tokens), B images in a chunk, P patches, D width, S latents.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline import atomic
from pipeline.cache.reader import CacheReader
from pipeline.cache.store import CacheError
from pipeline.cache.stream import (
    DEVICE_MEMORY_FRACTION,
    ChunkDecoder,
    chunk_order,
    fits_on_device,
    group_batches,
    in_background,
    load_tokens,
    resident_batches,
    token_index,
    token_rows,
)
from pipeline import layout
from pipeline.data import store_image_loader
from pipeline.layout import sae_dir, stats_path
from pipeline.provenance import record
from pipeline.stats import read_stats
from pipeline.config import sae_is_imported, sae_train_ref, CacheRef, Config, ConfigError, SAEConfig
from pipeline.context import RunContext
from pipeline.progress import SAESweepProgress
from pipeline.runtime import describe_device

from .checkpoint import load_checkpoint, save_checkpoint
from .latents import density_chart, latent_stats, load_latent_stats, save_latent_stats, select_latents
from .scaling import InputScaling, scaling_from_stats
from .train import (
    SAEHparams,
    TrainConfig,
    TrainedSAE,
    history_chart,
    history_table,
    sweep_chart,
    sweep_table,
    train_sweep,
)

log = logging.getLogger(__name__)

EVAL_MAX_TOKENS = 1 << 18
"""Held-out tokens (from the VAL store, whole chunks in order) for the sweep's metrics."""
EVAL_BATCH = 8192
CHOICE_RULE = "lowest normalized_mse among members with l0 <= max_l0 (ties: first in sweep order)"
HISTORY_ROWS = 2000
"""sae-train logs every ``max(1, n_steps // HISTORY_ROWS)``-th step (at most ~2000 rows per member)."""


class NoMemberError(ConfigError):
    """No sweep member satisfies ``sae.max_l0`` (a config problem: raise max_l0 or λ)."""


class SAEStageError(CacheError):
    """An SAE output that does not fit the store or the config (names the file)."""


# --------------------------------------------------------------------------- names and paths


def require_sae(cfg: Config) -> SAEConfig:
    if cfg.sae is None:
        raise ConfigError(f"{cfg.source}: key sae: missing; the SAE stages need it (cache, layer, sweep)")
    return cfg.sae


def stats_file(cfg: Config, ref: CacheRef, split: str) -> Path:
    return stats_path(cfg, ref, split)


def member_grid(sc: SAEConfig) -> list[SAEHparams]:
    """Every (exp_factor, lr, sparsity_coeff) combination, in that nesting order, no duplicates."""
    uniq = lambda xs: list(dict.fromkeys(xs))  # noqa: E731
    return [
        SAEHparams(lr=float(lr), sparsity_coeff=float(sc_), exp_factor=int(e))
        for e in uniq(sc.exp_factors)
        for lr in uniq(sc.lrs)
        for sc_ in uniq(sc.sparsity_coeffs)
    ]


def member_slug(hp: SAEHparams) -> str:
    """File-name-safe member name, e.g. ``x8_lr0.001_lambda0.0003`` (pipeline.layout owns the spelling)."""
    return layout.member_slug(hp.exp_factor, hp.lr, hp.sparsity_coeff)


# is_imported / train_ref live in pipeline.config (no torch): the workflow and provenance use them too
is_imported, train_ref = sae_is_imported, sae_train_ref


def train_outputs(cfg: Config) -> dict[str, list[Path]]:
    """Files ``sae-train`` writes: ``main`` (declared by the rule), ``members`` (written, not declared);
    from :func:`pipeline.layout.step_outputs`."""
    require_sae(cfg)
    outs = layout.step_outputs(cfg, "sae-train")
    return {"main": outs.files, "members": outs.undeclared}


# --------------------------------------------------------------------------- token streams


def _token_mode(tokens: str) -> str:
    if tokens not in ("patches", "patches+cls"):
        raise ConfigError(f"sae/tokens: {tokens!r} is not one of patches, patches+cls")
    return "patches" if tokens == "patches" else "all"


def token_parts(
    reader: CacheReader, layer: int, *, tokens: str = "patches", shuffle: bool = False, seed: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(acts_ND, image_N, token_N)`` per chunk for ``patches`` or ``patches+cls`` (no registers).

    One store read per chunk; ``token_N`` indexes the store's token axis for ``patches+cls``.
    """
    mode = _token_mode(tokens)
    for acts_ND, image_N, token_N in token_rows(reader, layer, tokens=mode, shuffle=shuffle, seed=seed):
        if mode == "all" and reader.n_prefix > 1:
            keep = (token_N == 0) | (token_N >= reader.n_prefix)
            acts_ND, image_N, token_N = acts_ND[keep], image_N[keep], token_N[keep]
        yield acts_ND, image_N, token_N


def tokens_per_pass(reader: CacheReader, tokens: str) -> int:
    per_image = reader.n_patches + (1 if tokens == "patches+cls" else 0)
    return int(reader.valid.sum()) * per_image


def train_batches(
    reader: CacheReader,
    layer: int,
    *,
    tokens: str,
    n_tokens: int,
    batch_size: int,
    buffer_size: int,
    seed: int,
    workers: int = 2,
    out_dtype: torch.dtype | None = torch.float32,
    pin_memory: bool = False,
) -> Iterator[torch.Tensor]:
    """Shuffled ``[batch, D]`` batches (``out_dtype``; None: the stored dtype) for ``n_tokens`` tokens from the store.

    Seed contract: ``ceil(n_tokens / tokens_per_pass)`` passes; pass p visits every chunk once in
    the order seeded ``seed + p`` (:func:`chunk_order`); the passes' chunk orders, chained, go
    through :func:`group_batches` (seed ``seed``): groups of about ``buffer_size`` rows (whole
    chunks), each permuted, leftovers carried to the next group, so every pass's tokens come out
    exactly once and only the very last batch may be short. The batches depend on the seed, the
    store's chunking, ``batch_size`` and ``buffer_size`` only, not on ``workers`` (tested). Raw
    activations, made on a producer thread (:func:`in_background`); scaling happens on the
    trainer's device. ``sae-train`` asks for the stored dtype (pinned for CUDA): float16 halves
    the bytes gathered and copied to the device, and the trainer's scaling turns it into float32
    in the same op (:func:`pipeline.sae.train.prepare_batch`).
    """
    per_pass = tokens_per_pass(reader, tokens)
    if per_pass == 0:
        raise SAEStageError(f"{reader.path}: no valid image to train on")
    _token_mode(tokens)
    n_passes = math.ceil(n_tokens / per_pass)
    order = (chunk for p in range(n_passes) for chunk in chunk_order(reader, shuffle=True, seed=seed + p))
    yield from in_background(
        group_batches(
            reader,
            layer,
            order,
            token_index(reader, tokens),
            batch_size=batch_size,
            buffer_size=buffer_size,
            seed=seed,
            workers=workers,
            out_dtype=out_dtype,
            pin_memory=pin_memory,
        )
    )


def device_batches(
    reader: CacheReader,
    layer: int,
    *,
    tokens: str,
    n_tokens: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    workers: int = 2,
) -> Iterator[torch.Tensor]:
    """``token_source: device``: the layer's tokens loaded onto ``device`` once (:func:`load_tokens`),
    then float32 batches of a fresh permutation per pass (:func:`resident_batches`, pass p seeded
    ``seed + p``): the same tokens per pass as :func:`train_batches`, in another order. On CPU the
    batches are gathered on a producer thread (:func:`in_background`), as the stream's are."""
    _token_mode(tokens)
    tokens_ND = load_tokens(reader, layer, token_index(reader, tokens), device=device, workers=workers)
    batches = resident_batches(tokens_ND, n_tokens=n_tokens, batch_size=batch_size, seed=seed)
    yield from in_background(batches) if device.type == "cpu" else batches


def token_source(reader: CacheReader, sc: SAEConfig, device: torch.device) -> str:
    """``stream`` or ``device`` for ``sae.token_source`` (see the schema); the size rule is
    :func:`pipeline.cache.stream.fits_on_device` (at most half the device's free memory)."""
    n_bytes = tokens_per_pass(reader, sc.tokens) * reader.d_model * ChunkDecoder(reader).dtype.itemsize
    if sc.token_source == "stream":
        return "stream"
    fits = fits_on_device(n_bytes, device)
    if sc.token_source == "device" and not fits:
        raise ConfigError(
            f"sae/token_source: device: the layer's tokens take {n_bytes / 2**30:.2f} GiB, more than "
            f"{DEVICE_MEMORY_FRACTION:g} of the free memory of {device}; use stream or auto"
        )
    return "device" if fits and (sc.token_source == "device" or device.type == "cuda") else "stream"


def eval_batches(
    reader: CacheReader, layer: int, *, tokens: str, max_tokens: int = EVAL_MAX_TOKENS, batch_size: int = EVAL_BATCH
) -> Iterator[np.ndarray]:
    """Held-out ``[batch, D]`` batches: chunks in order, at most ``max_tokens`` tokens."""
    seen = 0
    for acts_ND, _, _ in token_parts(reader, layer, tokens=tokens):
        acts_ND = acts_ND[: max_tokens - seen]
        for s in range(0, len(acts_ND), batch_size):
            yield acts_ND[s : s + batch_size]
        seen += len(acts_ND)
        if seen >= max_tokens:
            return


# --------------------------------------------------------------------------- choosing a member


def choose_member(table: pd.DataFrame, max_l0: float) -> tuple[int, dict[str, Any]]:
    """Row position of the member used downstream, and why (see ``CHOICE_RULE``).

    Members with NaN metrics never qualify. Raises :class:`NoMemberError` naming
    ``max_l0`` and the smallest L0 found when none has L0 ≤ max_l0.
    """
    l0 = pd.to_numeric(table["l0"], errors="coerce").to_numpy(dtype=float)
    nmse = pd.to_numeric(table["normalized_mse"], errors="coerce").to_numpy(dtype=float)
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


# --------------------------------------------------------------------------- sae-train


def _open(cfg: Config, ref: CacheRef, split: str) -> CacheReader:
    return CacheReader(cfg.store(ref, split))


def load_train_scaling(cfg: Config, reader: CacheReader, block: int, tokens: str) -> tuple[InputScaling, Path]:
    """The scaling from the train store's stats file (refusing one made from another store)."""
    path = stats_file(cfg, train_ref(require_sae(cfg)), "train")
    stats = read_stats(path, config_hash=reader.attrs["config_hash"])
    return scaling_from_stats(stats, block, tokens), path


def weights_sha256(reader: CacheReader) -> str | None:
    """The model weights hash a store was extracted with (its provenance)."""
    return reader.attrs.get("model", {}).get("weights_sha256")


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
    train = _open(cfg, ref, "train")
    block = train.block(sc.layer)
    if ref != sc.cache:  # trained elsewhere: it must apply to sae.cache (same weights, block, width)
        target = _open(cfg, sc.cache, "train")
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


def training_batches(
    train: CacheReader, block: int, sc: SAEConfig, dev: torch.device, threads: int
) -> tuple[str, Iterator[torch.Tensor]]:
    """``(source, batches)``: the token stream the sweep trains on, from ``token_source``
    (``device``: every token resident on the device; else groups of chunks permuted, read
    straight from the mapped files of an uncompressed store or decoded on worker threads)."""
    source = token_source(train, sc, dev)
    log.info("tokens from: %s (sae.token_source: %s)", source, sc.token_source)
    if source == "stream" and not ChunkDecoder(train).raw:
        log.info(
            "tokens are decoded on every read (store %s is compressed); a store extracted with "
            "extract.compression: none is read without decoding",
            train.path,
        )
    if source == "device":
        batches = device_batches(
            train,
            block,
            tokens=sc.tokens,
            n_tokens=sc.n_tokens,
            batch_size=sc.batch_size,
            seed=sc.seed,
            device=dev,
            workers=max(2, threads),
        )
    else:
        batches = train_batches(
            train,
            block,
            tokens=sc.tokens,
            n_tokens=sc.n_tokens,
            batch_size=sc.batch_size,
            buffer_size=sc.shuffle_buffer,
            seed=sc.seed,
            workers=max(2, threads),
            out_dtype=None,  # the stored dtype: train_sweep casts inside its scaling, on the device
            pin_memory=dev.type == "cuda",
        )
    return source, batches


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
    out = Path(out_dir) if out_dir is not None else sae_dir(cfg)
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
    return write_train_outputs(trained, members, out, prov, max_l0=sc.max_l0, seconds=seconds)


def write_train_outputs(
    trained: list[TrainedSAE],
    members: list[SAEHparams],
    out: Path,
    prov: dict,
    *,
    max_l0: float,
    seconds: float = float("nan"),
) -> dict[str, Any]:
    """Members, sweep table + chart; then the choice (raises NoMemberError after writing the sweep)."""
    out.mkdir(parents=True, exist_ok=True)
    slugs = [member_slug(hp) for hp in members]
    for t, slug in zip(trained, slugs):
        t.save(out / "members" / f"{slug}.pt", extra_cfg={**prov, "member": slug})
    table = sweep_table(trained)
    table.insert(1, "slug", slugs)
    table["checkpoint"] = [str(out / "members" / f"{s}.pt") for s in slugs]
    table["random_weights"] = bool(prov.get("random_weights", False))
    table["chosen"] = False
    random_weights = bool(prov.get("random_weights", False))
    try:
        pos, reason = choose_member(table, max_l0)
    except NoMemberError:
        atomic.write_csv(table, out / "sweep.csv", index=False)
        sweep_chart(table, out / "sweep", random_weights=random_weights)
        write_history(trained, slugs, out, chosen=None, random_weights=random_weights)
        for name in ("sae.pt", "sae.safetensors", "chosen.json"):
            (out / name).unlink(missing_ok=True)
        raise
    table.loc[pos, "chosen"] = True
    atomic.write_csv(table, out / "sweep.csv", index=False)
    sweep_chart(table, out / "sweep", random_weights=random_weights)
    write_history(trained, slugs, out, chosen=slugs[pos], random_weights=random_weights)
    chosen = trained[pos]
    record = {
        "member": slugs[pos],
        "label": chosen.hparams.label,
        "checkpoint": str(out / "sae.pt"),
        "member_checkpoint": str(out / "members" / f"{slugs[pos]}.pt"),
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
    chosen.save(out / "sae.pt", extra_cfg={**prov, "member": slugs[pos], "chosen": reason})
    _write_json(
        out / "chosen.json",
        {
            **record,
            **{
                k: prov[k]
                for k in ("store", "store_config_hash", "layer", "block", "tokens", "provenance")
                if k in prov
            },
            "created": _now(),
        },
    )
    return {
        "out": str(out),
        "members": len(trained),
        "chosen": slugs[pos],
        "chosen_l0": round(reason["l0"], 4),
        "chosen_normalized_mse": round(reason["normalized_mse"], 5),
        "tokens_per_second": round(trained[0].n_tokens_seen / seconds, 1) if seconds > 0 else None,
        "metrics_source": chosen.metrics_source,
        "sweep": table[["slug", "l0", "normalized_mse", "n_dead", "n_dense"]].round(5).to_dict("records"),
    }


def write_history(
    trained: list[TrainedSAE], slugs: list[str], out: Path, *, chosen: str | None, random_weights: bool
) -> pd.DataFrame:
    """``history.csv`` (one row per logged step per member: ``slug``, ``chosen`` and
    :data:`~pipeline.sae.train.HISTORY_COLUMNS`) and its chart ``history.{html,png,svg}``."""
    history = history_table(trained)
    history.insert(1, "slug", [slugs[m] for m in history["member"]])
    history.insert(2, "chosen", history["slug"] == chosen)
    atomic.write_csv(history, out / "history.csv", index=False)
    history_chart(
        history.rename(columns={"slug": "label"}), out / "history", chosen=chosen, random_weights=random_weights
    )
    return history


# --------------------------------------------------------------------------- sae-latents


def trained_block(hcfg: dict) -> int | None:
    """The block an SAE was trained on, from its header cfg: ``block``; a checkpoint written before
    ``block`` was recorded (and saev's) has the block number under ``layer``."""
    found = hcfg.get("block", hcfg.get("layer"))
    return None if found is None else int(found)


def check_applies(path: Path | str, hcfg: dict, reader: CacheReader, block: int) -> dict[str, str]:
    """Refuse an SAE (header cfg ``hcfg``) that does not fit ``reader``'s block-``block`` activations.

    Width must agree; the block and the model weights hash must agree when the checkpoint
    records them (ours always do; saev's record neither). Returns what was checked, and how.
    """
    checked = {}
    d_sae = hcfg.get("d_model", hcfg.get("d_vit"))
    if d_sae is not None and int(d_sae) != reader.d_model:
        raise SAEStageError(f"{path}: the SAE reads width D={d_sae}, {reader.path} holds D={reader.d_model}")
    checked["width"] = f"D={reader.d_model}"
    trained = trained_block(hcfg)
    if trained is not None:
        if trained != int(block):
            raise SAEStageError(
                f"{path}: the SAE was trained on block {trained}, sae.layer is block {block} of {reader.path}"
            )
        checked["block"] = f"block {block}"
    else:
        checked["block"] = "not recorded in the checkpoint"
    mine, theirs = hcfg.get("model_weights_sha256"), weights_sha256(reader)
    if mine is not None and theirs is not None:
        if mine != theirs:
            raise SAEStageError(
                f"{path}: the SAE was trained on activations of model weights sha256 {mine[:12]}, "
                f"{reader.path} was extracted with {theirs[:12]}: another model"
            )
        checked["model_weights_sha256"] = theirs
    else:
        checked["model_weights_sha256"] = (
            "not recorded in the checkpoint" if mine is None else "not recorded in the store"
        )
    return checked


def load_sae_for(cfg: Config, path: Path, reader: CacheReader):
    """Load ``sae.pt`` (trained or imported by ``sae-train``) and check it applies to ``reader``."""
    sae, header, scaling = load_checkpoint(path)
    hcfg = header.get("cfg", header)
    check_applies(path, hcfg, reader, reader.block(require_sae(cfg).layer))
    if scaling is None:
        raise SAEStageError(f"{path}: checkpoint has no input scaling")
    return sae, hcfg, scaling


# --------------------------------------------------------------------------- import (sae.source: checkpoint / hub)

SAEV_SCALING_SAMPLES = 1 << 19
SAEV_SCALING_SEED = 42
SAEV_SCALING_NOTE = (
    "saev's convention (saev.activations.Dataset, scale_mean and scale_norm true): x -> (x - mean) / s with mean "
    "and s = E||x - mean|| / sqrt(D) from a seeded sample of up to 2^19 tokens of the data the SAE reads "
    "(here sae.cache's train store); i.e. InputScaling(mean, scalar = sqrt(D) / E||x - mean||)"
)


def saev_scaling(
    reader: CacheReader,
    block: int,
    *,
    tokens: str = "patches",
    n_samples: int = SAEV_SCALING_SAMPLES,
    seed: int = SAEV_SCALING_SEED,
) -> InputScaling:
    """saev's input scaling for a checkpoint that records none (see ``SAEV_SCALING_NOTE``).

    saev took the mean and the mean L2 norm of the centred activations over a random sample
    of ``2^19`` examples (seed 42) of the dataset it read, and divided by ``norm / sqrt(D)``.
    Here: every token when the store holds at most ``n_samples``, else a seeded uniform
    subset of each chunk's tokens in proportion (the same rule, drawn chunk by chunk).
    """
    total = tokens_per_pass(reader, tokens)
    if total == 0:
        raise SAEStageError(f"{reader.path}: no valid token to compute saev's input scaling from")
    keep = min(1.0, n_samples / total)
    rng = np.random.default_rng(seed)
    parts = []
    for acts_ND, _, _ in token_parts(reader, block, tokens=tokens):
        if keep < 1.0:
            acts_ND = acts_ND[rng.random(len(acts_ND)) < keep]
        parts.append(np.asarray(acts_ND, dtype=np.float64))
    x_ND = np.concatenate(parts)
    mean_D = x_ND.mean(axis=0)
    l2_mean = float(np.linalg.norm(x_ND - mean_D, axis=1).mean())
    if not l2_mean > 0:
        raise SAEStageError(f"{reader.path}: block {block} activations are constant; saev's scaling is undefined")
    return InputScaling(mean_D.astype(np.float32), math.sqrt(reader.d_model) / l2_mean)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fd:
        for block in iter(lambda: fd.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_checkpoint(cfg: Config) -> tuple[Path, dict[str, Any]]:
    """The local file of ``sae.source`` (downloading a hub file) and its provenance record."""
    src = require_sae(cfg).source
    if src.kind == "checkpoint":
        path = Path(src.path)
        if not path.is_file():
            raise ConfigError(f"{cfg.source}: key sae/source/checkpoint: {path} does not exist")
        record: dict[str, Any] = {"kind": "checkpoint", "path": str(path)}
    else:
        from huggingface_hub import hf_hub_download  # only for an SAE imported from the hub

        try:
            path = Path(hf_hub_download(repo_id=src.repo, filename=src.file, revision=src.revision))
        except Exception as err:  # network, unknown repo / file / revision: all name the source
            raise SAEStageError(
                f"sae/source: cannot download {src.file} from hub repo {src.repo} "
                f"(revision {src.revision or 'main'}): {err}"
            ) from err
        # hub cache layout: .../snapshots/<commit>/<file>: the commit the revision resolved to
        parts = path.parts
        resolved = parts[parts.index("snapshots") + 1] if "snapshots" in parts else None
        record = {
            "kind": "hub",
            "repo": src.repo,
            "file": src.file,
            "revision": src.revision,
            "resolved_commit": resolved,
            "path": str(path),
        }
    digest = sha256_file(path)
    if src.sha256 is not None and digest != src.sha256:
        raise SAEStageError(
            f"{path}: sha256 {digest} differs from sae/source/sha256 {src.sha256}; refusing another file"
        )
    record["sha256"] = digest
    record["sha256_pinned"] = src.sha256 is not None
    return path, record


def run_import(cfg: Config, *, out_dir: Path | None = None) -> dict[str, Any]:
    """``sae-train`` for ``sae.source: checkpoint | hub``: check, scale and re-save the SAE as ``sae.pt``."""
    sc = require_sae(cfg)
    src = sc.source
    path, record = resolve_checkpoint(cfg)
    sae, header, scaling = load_checkpoint(path)
    hcfg = dict(header.get("cfg", header))
    reader = _open(cfg, sc.cache, "train")
    block = reader.block(sc.layer)
    checked = check_applies(path, hcfg, reader, block)
    if scaling is not None and src.scaling == "auto":
        scaling_note = "the checkpoint's own recorded scaling"
    else:
        scaling = saev_scaling(reader, block, tokens=sc.tokens)
        scaling_note = SAEV_SCALING_NOTE
    out = Path(out_dir) if out_dir is not None else sae_dir(cfg)
    prov = {
        "model": sc.cache.model,
        "dataset": sc.cache.dataset,
        "model_weights_sha256": hcfg.get("model_weights_sha256"),
        "d_model": int(sae.d_model),
        "layer": int(sc.layer),
        "block": int(block),
        "tokens": sc.tokens,
        "store": str(reader.path),
        "store_config_hash": reader.attrs["config_hash"],
        "random_weights": reader.random_weights,
        "imported_from": record,
        "imported_header": header,
        "checked_against_store": checked,
        "scaling_note": scaling_note,
        "encoder": sae.encoder,
    }
    for key in ("lr", "sparsity_coeff", "exp_factor"):
        if key in hcfg:
            prov[f"source_{key}"] = hcfg[key]
    if prov["model_weights_sha256"] is None:
        log.warning("%s records no model weights hash: checked width (and block when recorded) only", path)
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "sae.pt", sae, cfg=prov, scaling=scaling)
    _write_json(
        out / "chosen.json", {"member": "imported", "checkpoint": str(out / "sae.pt"), **prov, "created": _now()}
    )
    return {
        "out": str(out),
        "imported": record,
        "checked": checked,
        "scaling": scaling_note,
        "encoder": sae.encoder,
        "n_latents": int(sae.n_latents),
        "d_model": int(sae.d_model),
    }


def run_latents(
    cfg: Config, *, out_dir: Path | None = None, progress: bool = True, device: str | None = None, ctx=None
) -> dict[str, Any]:
    """Latent statistics of ``sae.pt`` over the train store's patch tokens. ``ctx``: the step's
    RunContext (default: one started here on ``device``, else the config's)."""
    sc = require_sae(cfg)
    dev = (ctx or RunContext.start(cfg, device=device)).device
    reader = _open(cfg, sc.cache, "train")
    block = reader.block(sc.layer)
    out = Path(out_dir) if out_dir is not None else sae_dir(cfg)
    ckpt = out / "sae.pt"
    sae, hcfg, scaling = load_sae_for(cfg, ckpt, reader)
    sae = sae.to(dev)
    t0 = time.perf_counter()
    ds = latent_stats(
        reader.iter_chunks(block, tokens="patches"),
        sae,
        scaling,
        n_images=reader.n_images,
        top_k=sc.top_k,
        device=dev,
        progress=progress,
    )
    seconds = time.perf_counter() - t0
    ds.attrs.update(
        {
            "store": str(reader.path),
            "store_config_hash": reader.attrs["config_hash"],
            "layer": int(sc.layer),
            "block": int(block),
            "checkpoint": str(ckpt),
            "member": hcfg.get("member", ""),
            "random_weights": int(reader.random_weights),
            "grid": list(reader.grid),
            "tokens": "patches (valid images of the train store)",
        }
    )
    save_latent_stats(ds, out / "latents.zarr")
    density_chart(
        ds,
        out / "density",
        random_weights=reader.random_weights,
        title=f"Feature density of the chosen SAE ({hcfg.get('member', '')}, block {block}, "
        f"{ds.sizes['latent']} latents, {ds.attrs['n_tokens']} train patch tokens)",
    )
    selected = select_latents(ds, log_freq_range=tuple(sc.log_freq_range), log_value_range=tuple(sc.log_value_range))
    n_fired = ds["n_fired"].values
    max_value = ds["max_value"].values
    summary = {
        "latents": str(out / "latents.zarr"),
        "checkpoint": str(ckpt),
        "member": hcfg.get("member"),
        "store": str(reader.path),
        "store_config_hash": reader.attrs["config_hash"],
        "layer": int(sc.layer),
        "block": int(block),
        "random_weights": reader.random_weights,
        "n_latents": int(ds.sizes["latent"]),
        "n_dead": int((n_fired == 0).sum()),
        "n_images": int(ds.attrs["n_images"]),
        "n_tokens": int(ds.attrs["n_tokens"]),
        "top_k": int(sc.top_k),
        "max_value": {
            "min": float(max_value.min()),
            "median": float(np.median(max_value)),
            "max": float(max_value.max()),
        },
        "selection": {
            "log_freq_range": list(sc.log_freq_range),
            "log_value_range": list(sc.log_value_range),
            "value": "mean_value (mean activation when firing), as saev",
        },
        "n_selected": int(selected.size),
        "selected": [int(i) for i in selected],
        "seconds": round(seconds, 2),
        "created": _now(),
        "provenance": record(cfg, "sae-latents"),
    }
    _write_json(out / "latents.json", summary)
    return {k: v for k, v in summary.items() if k != "selected"}


# --------------------------------------------------------------------------- sae-gallery


def spread_by_frequency(ds, candidates: np.ndarray, n: int) -> np.ndarray:
    """``n`` of ``candidates`` at evenly spaced ranks of their frequency (all if fewer)."""
    candidates = np.asarray(candidates, dtype=np.int64)
    if n <= 0 or candidates.size == 0:
        return np.zeros(0, dtype=np.int64)
    if candidates.size <= n:
        picked = candidates
    else:
        freq = np.asarray(ds["freq"].sel(latent=candidates).values)
        order = candidates[np.argsort(freq, kind="stable")]
        picked = order[np.unique(np.round(np.linspace(0, candidates.size - 1, n)).astype(int))]
    freq = np.asarray(ds["freq"].sel(latent=picked).values)
    return picked[np.argsort(-freq, kind="stable")]  # most frequent first


def run_gallery(cfg: Config, *, out_dir: Path | None = None) -> dict[str, Any]:
    """Write the gallery of ``gallery_latents`` selected latents."""
    from .gallery import write_gallery  # altair (via pipeline.plots): only for the gallery step

    sc = require_sae(cfg)
    reader = _open(cfg, sc.cache, "train")
    reader.block(sc.layer)  # fails early, naming the store, when the layer is not cached
    out = Path(out_dir) if out_dir is not None else sae_dir(cfg)
    info = json.loads((out / "latents.json").read_text())
    if info.get("store_config_hash") != reader.attrs["config_hash"]:
        raise SAEStageError(f"{out / 'latents.json'}: computed on another store than {reader.path}; re-run sae-latents")
    ds = load_latent_stats(out / "latents.zarr")
    selected = np.asarray(info["selected"], dtype=np.int64)
    source = "selected by log_freq_range / log_value_range"
    if selected.size == 0:
        selected = np.flatnonzero(ds["n_fired"].values > 0)
        source = "no latent passed the selection ranges: all latents that fired"
        log.warning("gallery: %s", source)
    latent_ids = spread_by_frequency(ds, selected, sc.gallery_latents)
    gallery = out / "gallery"
    gallery.mkdir(parents=True, exist_ok=True)
    for old in gallery.glob("latent_*.png"):
        old.unlink()
    index = write_gallery(
        ds,
        latent_ids,
        image_loader=store_image_loader(reader),
        grid=reader.grid,
        out_dir=gallery,
        image_ids=[str(i) for i in reader.image_ids],
        random_weights=reader.random_weights,
        n_images=min(9, ds.sizes["rank"]),
    )
    _write_json(
        gallery / "selection.json",
        {
            "latents": [int(i) for i in latent_ids],
            "how": f"{min(sc.gallery_latents, selected.size)} of {selected.size} candidate latents ({source}), "
            "at evenly spaced ranks of their firing frequency; listed most frequent first",
            "random_weights": reader.random_weights,
            "created": _now(),
            "provenance": record(cfg, "sae-gallery"),
        },
    )
    return {"index": str(index), "n_latents": int(latent_ids.size), "candidates": int(selected.size), "source": source}


# --------------------------------------------------------------------------- helpers


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _write_json(path: Path, obj: Any) -> None:
    atomic.write_json(path, obj, indent=1, default=_json_default)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


__all__ = [
    "CHOICE_RULE",
    "EVAL_MAX_TOKENS",
    "NoMemberError",
    "SAEStageError",
    "check_applies",
    "choose_member",
    "eval_batches",
    "is_imported",
    "load_sae_for",
    "load_train_scaling",
    "resolve_checkpoint",
    "run_import",
    "saev_scaling",
    "train_ref",
    "train_config",
    "trained_block",
    "training_batches",
    "member_grid",
    "member_slug",
    "open_train_stores",
    "run_gallery",
    "run_latents",
    "run_train",
    "sae_dir",
    "spread_by_frequency",
    "token_parts",
    "tokens_per_pass",
    "train_batches",
    "train_outputs",
    "write_train_outputs",
]
