"""``sae-latents``: per-latent statistics of ``sae.pt`` on the train store.

``sae.pt`` (through :func:`~pipeline.sae.applies.load_sae_for`) over every valid image's patch
tokens of the TRAIN store, one zarr chunk at a time, with the checkpoint's own scaling →
:func:`~pipeline.sae.latents.latent_stats`. Writes ``latents.zarr``, saev's feature-density
views ``density.{html,png,svg}`` and ``latents.json`` (dead latents, the latents selected by
``log_freq_range`` / ``log_value_range`` on the mean value when firing, as saev).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import Config, require_sae
from pipeline.context import RunContext
from pipeline.layout import sae_files
from pipeline.provenance import record

from ..applies import load_sae_for
from ..latents import density_chart, latent_stats, save_latent_stats, select_latents
from .common import now, open_store, write_json

log = logging.getLogger(__name__)


def run(ctx: RunContext, args: argparse.Namespace) -> dict[str, Any]:
    """``python -m pipeline sae-latents``: :func:`run_latents` in the step's context."""
    return run_latents(ctx.cfg, out_dir=args.out, progress=not args.no_progress, ctx=ctx)


def run_latents(
    cfg: Config, *, out_dir: Path | None = None, progress: bool = True, device: str | None = None, ctx=None
) -> dict[str, Any]:
    """Latent statistics of ``sae.pt`` over the train store's patch tokens. ``ctx``: the step's
    RunContext (default: one started here on ``device``, else the config's)."""
    sc = require_sae(cfg)
    dev = (ctx or RunContext.start(cfg, device=device)).device
    reader = open_store(cfg, sc.cache, "train")
    block = reader.block(sc.layer)
    files = sae_files(cfg, out_dir)
    ckpt = files.sae_pt
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
    save_latent_stats(ds, files.latents_zarr)
    density_chart(
        ds,
        files.density_chart,
        random_weights=reader.random_weights,
        title=f"Feature density of the chosen SAE ({hcfg.get('member', '')}, block {block}, "
        f"{ds.sizes['latent']} latents, {ds.attrs['n_tokens']} train patch tokens)",
    )
    selected = select_latents(ds, log_freq_range=tuple(sc.log_freq_range), log_value_range=tuple(sc.log_value_range))
    n_fired = ds["n_fired"].values
    max_value = ds["max_value"].values
    summary = {
        "latents": str(files.latents_zarr),
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
        "created": now(),
        "provenance": record(cfg, "sae-latents"),
    }
    write_json(files.latents_json, summary)
    return {k: v for k, v in summary.items() if k != "selected"}
