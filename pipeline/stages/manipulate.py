"""``manipulate [--example NAME | --image ID ...]``: set SAE latents on one cached image, see the probe's prediction change (:mod:`pipeline.manipulate`).

Reads the config's ``manipulate`` examples (or one given on the command line), the stores, the
SAE, its latent statistics, the probe and the model; writes ``<results>/manipulate/<example>/``
(``pipeline.layout`` lists the files).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from pipeline.config import ConfigError, ManipulateConfig, ManipulateExample

if TYPE_CHECKING:  # the context module imports torch
    from pipeline.context import RunContext


def run(ctx: RunContext, args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.manipulate import Manipulator, run_example

    cfg = ctx.cfg
    settings = cfg.manipulate or ManipulateConfig()
    if args.image is not None:
        if args.example:
            raise ConfigError("give either --example or --image, not both")
        if args.latents and len(args.values) != len(args.latents):
            raise ConfigError(f"--values: {len(args.values)} values for {len(args.latents)} latents")
        image = int(args.image) if args.image.isdigit() else args.image
        examples = [
            ManipulateExample(
                args.name,
                image,
                args.split,
                args.target_class,
                args.other_class,
                tuple(args.latents),
                tuple(args.values),
            )
        ]
    else:
        known = {e.name: e for e in settings.examples}
        missing = [n for n in args.example if n not in known]
        if missing:
            raise ConfigError(
                f"{cfg.source}: key manipulate/examples: no example named {', '.join(missing)} (known: {', '.join(known) or 'none'})"
            )
        examples = [known[n] for n in args.example] if args.example else list(settings.examples)
        if not examples:
            raise ConfigError(f"{cfg.source}: key manipulate/examples: no example configured; add one or pass --image")
    if args.out is not None and len(examples) > 1:
        raise ConfigError("--out names one folder: give one --example with it")
    m = Manipulator(ctx)  # its device, checked stores, model and SAE
    return {"examples": [run_example(m, ex, args.out) for ex in examples]}
