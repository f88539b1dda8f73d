"""``sae-gallery``: image galleries of the selected latents.

``gallery_latents`` of the latents ``sae-latents`` selected, spread evenly over log-frequency (so
the gallery shows rare and common latents alike, not only the strongest), drawn with
:func:`~pipeline.sae.gallery.write_gallery` on the images read from the dataset root recorded in
the store with the store's resize / centre-crop geometry (so patch maps line up). Reads
``latents.json`` and ``latents.zarr``; writes ``gallery/index.html``, ``gallery/latent_<id>.png``
and ``gallery/selection.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import Config, require_sae
from pipeline.context import RunContext
from pipeline.data import store_image_loader
from pipeline.layout import sae_files
from pipeline.provenance import record

from ..applies import SAEStageError
from ..latents import load_latent_stats
from .common import now, open_store, write_json

log = logging.getLogger(__name__)


def run(ctx: RunContext, args: argparse.Namespace) -> dict[str, Any]:
    """``python -m pipeline sae-gallery``: :func:`run_gallery`."""
    return run_gallery(ctx.cfg, out_dir=args.out)


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
    from ..gallery import write_gallery  # altair (via pipeline.plots): only for the gallery step

    sc = require_sae(cfg)
    reader = open_store(cfg, sc.cache, "train")
    reader.block(sc.layer)  # fails early, naming the store, when the layer is not cached
    files = sae_files(cfg, out_dir)
    info = json.loads(files.latents_json.read_text())
    if info.get("store_config_hash") != reader.attrs["config_hash"]:
        raise SAEStageError(f"{files.latents_json}: computed on another store than {reader.path}; re-run sae-latents")
    ds = load_latent_stats(files.latents_zarr)
    selected = np.asarray(info["selected"], dtype=np.int64)
    source = "selected by log_freq_range / log_value_range"
    if selected.size == 0:
        selected = np.flatnonzero(ds["n_fired"].values > 0)
        source = "no latent passed the selection ranges: all latents that fired"
        log.warning("gallery: %s", source)
    latent_ids = spread_by_frequency(ds, selected, sc.gallery_latents)
    gallery = files.gallery
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
    write_json(
        files.gallery_selection,
        {
            "latents": [int(i) for i in latent_ids],
            "how": f"{min(sc.gallery_latents, selected.size)} of {selected.size} candidate latents ({source}), "
            "at evenly spaced ranks of their firing frequency; listed most frequent first",
            "random_weights": reader.random_weights,
            "created": now(),
            "provenance": record(cfg, "sae-gallery"),
        },
    )
    return {"index": str(index), "n_latents": int(latent_ids.size), "candidates": int(selected.size), "source": source}
