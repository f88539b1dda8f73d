"""``manipulate`` step: set SAE latents on one cached image, re-forward the later blocks, compare the probe's prediction."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands import add_config_arg, config_from_args
from pipeline.config import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "manipulate",
        help="top SAE latents of an image's class and another class, probe predictions before/after setting latents "
        "(configured examples in manipulate.examples, or one given on the command line)",
        description="Reads the chosen SAE, its latent stats, the train and example stores, the seg probe and the model; writes probabilities, maps and an index.html per example under <results>/manipulate/<name>/.",
    )
    add_config_arg(p)
    p.add_argument("--example", action="append", default=[], metavar="NAME",
                   help="a configured example (repeatable; default: every example in manipulate.examples)")
    p.add_argument("--image", help="ad hoc example: image id or index (instead of configured examples)")
    p.add_argument("--split", default="val", choices=("train", "val"))
    p.add_argument("--class", dest="target_class", help="class name or id (default: the image's most frequent class)")
    p.add_argument("--other-class", help="the other class (default: chosen from the image)")
    p.add_argument("--latents", type=int, nargs="+", default=[], help="latents to set")
    p.add_argument("--values", type=float, nargs="+", default=[], help="one per latent in [-1, 1] (x the latent's max on train)")
    p.add_argument("--name", default="adhoc", help="ad hoc example name (output folder)")
    p.add_argument("--out", type=Path, help="output folder (default: <results>/manipulate/<name>)")
    p.set_defaults(func=run_manipulate)


def run_manipulate(args: argparse.Namespace) -> dict:
    from pipeline.config import ManipulateConfig, ManipulateExample
    from pipeline.context import RunContext
    from pipeline.manipulate import Manipulator, run_example

    cfg = config_from_args(args)
    settings = cfg.manipulate or ManipulateConfig()
    if args.image is not None:
        if args.example:
            raise ConfigError("give either --example or --image, not both")
        if args.latents and len(args.values) != len(args.latents):
            raise ConfigError(f"--values: {len(args.values)} values for {len(args.latents)} latents")
        image = int(args.image) if args.image.isdigit() else args.image
        examples = [ManipulateExample(args.name, image, args.split, args.target_class, args.other_class,
                                      tuple(args.latents), tuple(args.values))]
    else:
        known = {e.name: e for e in settings.examples}
        missing = [n for n in args.example if n not in known]
        if missing:
            raise ConfigError(f"{cfg.source}: key manipulate/examples: no example named {', '.join(missing)} (known: {', '.join(known) or 'none'})")
        examples = [known[n] for n in args.example] if args.example else list(settings.examples)
        if not examples:
            raise ConfigError(f"{cfg.source}: key manipulate/examples: no example configured; add one or pass --image")
    if args.out is not None and len(examples) > 1:
        raise ConfigError("--out names one folder: give one --example with it")
    ctx = RunContext.start(cfg)
    m = Manipulator(cfg, device=ctx.device)
    return {"examples": [run_example(m, ex, args.out) for ex in examples]}
