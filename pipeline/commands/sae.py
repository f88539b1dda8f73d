"""``stats``, ``sae-train``, ``sae-latents``, ``sae-gallery`` and ``export-sae`` steps."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands import add_config_arg, add_store_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "stats",
        help="activation statistics of one store (dask, out-of-core) → <results>/stats/<model>/<dataset>/<split>.json",
        description="Reads one finalized store; writes per-block mean, variance and norms of its patch and CLS tokens to <results>/stats/<model>/<dataset>/<split>.json (or --out).",
    )
    add_config_arg(s)
    add_store_args(s)
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

    e = sub.add_parser(
        "export-sae",
        help="write an SAE checkpoint as a saev schema-5 file (saev's own load reads it)",
        description="Reads SAE_PT (our sae.pt, a member, or any checkpoint the pipeline loads); writes OUT in saev's "
        "format (JSON header line + torch.save, schema 5). Our encoder convention and input scaling are folded into "
        "the weights, so OUT maps raw activations to the same latents; the header's 'pipeline' record lists every "
        "difference (docs/saev-checkpoints.md). No config.",
    )
    e.add_argument("sae_pt", type=Path, metavar="SAE_PT", help="the checkpoint to export")
    e.add_argument("out", type=Path, metavar="OUT", help="the saev file to write")
    e.add_argument(
        "--no-fold-scaling",
        action="store_true",
        help="keep the weights in our scaled input space (the header records the scaling; saev ignores it)",
    )
    e.add_argument(
        "--allow-topk-negatives",
        action="store_true",
        help="write a TopK SAE whose negatives we zero although saev's TopK keeps them (the difference is recorded)",
    )
