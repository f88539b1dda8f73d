"""``propose``: per class, the top candidate SAE latents by F1 on TRAIN, with gallery pages.

saev's semseg ``visuals`` step, done from the cache: reads the class–latent F1 table and the
latent statistics, renders a gallery page for every proposed latent (its top train images
with patch heat-maps), and writes ``<results>/quantitative/proposals.csv`` and
``proposals.html`` (one section per class, thumbnails linking to the pages) so a user can
pick the latents to name under ``quantify.manual``. The pages and the same overview, as
``index.html``, live in ``proposals/``: the folder the Snakemake report bundles.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from pipeline import atomic, units
from pipeline.cache import CacheReader
from pipeline.config import Config, QuantifyConfig
from pipeline.data import store_image_loader
from pipeline.feature_selection import load_f1
from pipeline.layout import quantify_files, sae_files
from pipeline.methods import allowed_latents, ranked_latents
from pipeline.sae import load_latent_stats
from pipeline.sae.gallery import write_gallery


def proposal_table(f1, freq_S: np.ndarray, max_value_S: np.ndarray, class_names, q: QuantifyConfig) -> pd.DataFrame:
    """One row per (class, rank): latent, its train F1 (``train_f1_pct``) and threshold, firing
    frequency on train (``freq_pct``), max value; percent as every table (:mod:`pipeline.units`)."""
    allowed = allowed_latents(freq_S, q.max_firing_fraction)
    rows = []
    for c in range(1, len(class_names)):
        for rank, (s, t, score) in enumerate(ranked_latents(f1, c, allowed, q.n_proposals), start=1):
            rows.append(
                {
                    "class_id": c,
                    "class_name": class_names[c],
                    "rank": rank,
                    "latent": s,
                    "train_f1": score,
                    "threshold": t,
                    "freq": float(freq_S[s]),
                    "max_value": float(max_value_S[s]),
                    "gallery": f"proposals/latent_{s}.png",
                }
            )
    columns = ["class_id", "class_name", "rank", "latent", "train_f1", "threshold", "freq", "max_value", "gallery"]
    return units.to_pct(pd.DataFrame(rows, columns=columns), ["train_f1", "freq"])


def proposals_html(table: pd.DataFrame, *, random_weights: bool, folder: str = "proposals/") -> str:
    """The overview page; ``folder`` is where the latent pages are, relative to the page."""
    banner = (
        "<p class='warn'>Random-init weights (demo): these latents say nothing about a real model.</p>"
        if random_weights
        else ""
    )
    parts = [
        "<!doctype html><meta charset='utf-8'><title>Latent proposals per class</title>",
        "<style>body{font-family:sans-serif;margin:2em}img{width:240px;border:1px solid #ccc}"
        "figure{display:inline-block;margin:.5em}.warn{background:#fde;padding:.5em}</style>",
        "<h1>Candidate latents per class (by F1 on the train split)</h1>",
        banner,
        "<p>Name the ones you choose under <code>quantify.manual</code>, e.g. <code>manual: {sky: [12]}</code>.</p>",
    ]
    if table.empty:
        parts.append(
            "<p>No latent qualifies: none fires on a class while firing on at most "
            "<code>quantify.max_firing_fraction</code> of train patches.</p>"
        )
        return "\n".join(parts) + "\n"
    for (c, name), group in table.groupby(["class_id", "class_name"], sort=True):
        parts.append(f"<h2>{html.escape(str(name))} (class {c})</h2>")
        for row in group.itertuples():
            caption = f"latent {row.latent} · F1 {row.train_f1_pct:.1f} % at f&gt;{row.threshold:g} · freq {row.freq_pct:.2g} % · max {row.max_value:.3g}"
            page = folder + row.gallery.removeprefix("proposals/")
            parts.append(
                f"<figure><a href='{page}'><img src='{page}' alt='latent {row.latent}'></a><figcaption>{caption}</figcaption></figure>"
            )
    return "\n".join(parts) + "\n"


def write_proposals(cfg: Config, q: QuantifyConfig) -> dict:
    train = CacheReader(cfg.store(cfg.sae.cache, "train"))
    sae = sae_files(cfg)
    latents = load_latent_stats(sae.latents_zarr)
    f1 = load_f1(sae.class_f1_zarr)
    freq, max_value = latents["freq"].values, latents["max_value"].values
    table = proposal_table(f1, freq, max_value, train.class_names, q)
    files = quantify_files(cfg)
    files.proposals.mkdir(parents=True, exist_ok=True)
    ids = sorted(set(table["latent"].tolist())) if len(table) else []
    if ids:
        write_gallery(
            latents,
            ids,
            image_loader=store_image_loader(train),
            grid=train.grid,
            out_dir=files.proposals,
            image_ids=[str(i) for i in train.image_ids],
            random_weights=train.random_weights,
            n_images=min(9, cfg.sae.top_k),  # the latent stats keep top_k images per latent
        )
    atomic.write_csv(table, files.proposals_csv, index=False, float_format="%.4f")
    page = files.proposals_html
    atomic.write_text(page, proposals_html(table, random_weights=train.random_weights))
    atomic.write_text(
        files.proposals / "index.html", proposals_html(table, random_weights=train.random_weights, folder="")
    )
    return {
        "written": str(page),
        "n_classes": int(table["class_id"].nunique()) if len(table) else 0,
        "n_latents": len(ids),
    }
