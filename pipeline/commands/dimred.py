"""``dimred`` step: the STEGO study (segmentation left after projecting cached features to few dims)."""

from __future__ import annotations

import argparse

from pipeline.commands import add_config_arg


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dimred",
        help="fit PCA / random projections once on cached train patch features, score linear and cluster "
        "probes per dim on val (config: dimred); writes <results>/dimred.csv and <results>/dimred/",
        description="Reads the train and val stores of dimred.cache (and the model's final norm); writes <results>/dimred.csv, charts, projections and PCA variance under <results>/dimred/.",
    )
    add_config_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar and no progress lines in the log")
