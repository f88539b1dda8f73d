"""``demo-data`` and ``demo-model`` steps: the offline demo's synthetic datasets and random-init models."""

from __future__ import annotations

import argparse

from pipeline.commands import add_config_arg


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser(
        "demo-data",
        help="generate a synthetic dataset named under demo.datasets",
        description="Reads the config's demo.datasets.<name> entry; writes synthetic images (and masks or class folders) under datasets.<name>.root, then a .complete sentinel there.",
    )
    add_config_arg(d)
    d.add_argument(
        "--name", required=True, help="a name under demo.datasets (its root comes from datasets.<name>.root)"
    )

    m = sub.add_parser(
        "demo-model",
        help="build a random-init model named under demo.models",
        description="Reads the config's demo.models.<name> entry; writes a random-init Hugging Face model (save_pretrained) to models.<name>.source, then a .complete sentinel there.",
    )
    add_config_arg(m)
    m.add_argument("--name", required=True, help="a name under demo.models (saved to models.<name>.source)")
