"""``stats``, ``sae-train``, ``sae-latents`` and ``sae-gallery`` steps."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands import add_config_arg
from pipeline.config import SPLITS


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "stats",
        help="activation statistics of one store (dask, out-of-core) → <results>/stats/<model>/<dataset>/<split>.json",
        description="Reads one finalized store; writes per-block mean, variance and norms of its patch and CLS tokens to <results>/stats/<model>/<dataset>/<split>.json (or --out).",
    )
    add_config_arg(s)
    s.add_argument("--model", required=True, help="a name under `models` in the config")
    s.add_argument("--dataset", required=True, help="a name under `datasets` in the config")
    s.add_argument("--split", required=True, choices=SPLITS)
    s.add_argument(
        "--scheduler",
        help="address of a dask distributed scheduler (tcp://host:8786) to compute on; "
        "default: local threads (config `threads`)",
    )
    s.add_argument("--out", type=Path, help="output JSON (default: <results>/stats/<model>/<dataset>/<split>.json)")

    for step, what, io in (
        (
            "sae-train",
            "train the SAE sweep (config: sae) from the cache; choose the member used downstream",
            "Reads the train and val stores of sae.cache and the train stats file; writes members/, sweep.csv, sweep charts, "
            "sae.pt and chosen.json to the SAE folder.",
        ),
        (
            "sae-latents",
            "latent statistics of the chosen SAE over the train store's patch tokens",
            "Reads sae.pt and the train store; writes latents.zarr and latents.json to the SAE folder.",
        ),
        (
            "sae-gallery",
            "static HTML gallery of selected latents with their top images",
            "Reads latents.zarr / latents.json, the train store and the dataset's images; writes gallery/index.html, "
            "gallery/latent_<id>.png and gallery/selection.json in the SAE folder.",
        ),
    ):
        p = sub.add_parser(step, help=what, description=io)
        add_config_arg(p)
        p.add_argument("--out", type=Path, help="the SAE folder (default: <results>/sae/<model>/<dataset>/layer<L>)")
        if step != "sae-gallery":
            p.add_argument("--device", help="override the config's device (cpu, cuda, auto)")
            p.add_argument(
                "--no-progress", action="store_true", help="no progress bar and no progress lines in the log"
            )
