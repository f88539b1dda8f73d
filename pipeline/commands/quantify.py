"""``class-f1``, ``propose`` and ``quantify`` steps (SAE feature interventions)."""

from __future__ import annotations

import argparse

from pipeline.commands import add_config_arg


def add_parser(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser(
        "class-f1",
        help="F1 of every SAE latent firing vs every class, on the train split",
        description="Reads the chosen SAE (sae.pt) and the train store; writes <results>/quantitative/class_f1.zarr and its .json summary.",
    )
    add_config_arg(f)

    p = sub.add_parser(
        "propose",
        help="per class, the top candidate latents by train F1, with gallery links (to pick manual features)",
        description="Reads class_f1.zarr, latents.json and the train store; writes <results>/quantitative/proposals.csv and proposals.html.",
    )
    add_config_arg(p)

    q = sub.add_parser(
        "quantify",
        help="SAE interventions re-forwarded from the cache → per-class change tables, results/quantitative.csv",
        description="Reads the val store, the chosen SAE and its latent stats, class_f1.zarr, the seg probe and the model; writes <results>/quantitative/<method>.csv, chart.{html,png,svg} and <results>/quantitative.csv.",
    )
    add_config_arg(q)
    q.add_argument("--no-progress", action="store_true", help="no progress bar and no progress lines in the log")
