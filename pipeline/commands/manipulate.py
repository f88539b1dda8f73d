"""``manipulate`` step: set SAE latents on one cached image, re-forward the later blocks, compare the probe's prediction."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands import add_config_arg


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "manipulate",
        help="top SAE latents of an image's class and another class, probe predictions before/after setting latents "
        "(configured examples in manipulate.examples, or one given on the command line)",
        description="Reads the chosen SAE, its latent stats, the train and example stores, the seg probe and the model; writes probabilities, maps and an index.html per example under <results>/manipulate/<name>/.",
    )
    add_config_arg(p)
    p.add_argument(
        "--example",
        action="append",
        default=[],
        metavar="NAME",
        help="a configured example (repeatable; default: every example in manipulate.examples)",
    )
    p.add_argument("--image", help="ad hoc example: image id or index (instead of configured examples)")
    p.add_argument("--split", default="val", choices=("train", "val"))
    p.add_argument("--class", dest="target_class", help="class name or id (default: the image's most frequent class)")
    p.add_argument("--other-class", help="the other class (default: chosen from the image)")
    p.add_argument("--latents", type=int, nargs="+", default=[], help="latents to set")
    p.add_argument(
        "--values", type=float, nargs="+", default=[], help="one per latent in [-1, 1] (x the latent's max on train)"
    )
    p.add_argument("--name", default="adhoc", help="ad hoc example name (output folder)")
    p.add_argument("--out", type=Path, help="output folder (default: <results>/manipulate/<name>)")
