"""``demo-data`` and ``demo-model`` steps: the offline demo's synthetic datasets and random-init models."""

from __future__ import annotations

import argparse

from pipeline.commands import add_config_arg, config_from_args
from pipeline.config import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo-data", help="generate a synthetic dataset named under demo.datasets",
                       description="Reads the config's demo.datasets.<name> entry; writes synthetic images (and masks or class folders) under datasets.<name>.root, then a .complete sentinel there.")
    add_config_arg(d)
    d.add_argument("--name", required=True, help="a name under demo.datasets (its root comes from datasets.<name>.root)")
    d.set_defaults(func=run_demo_data)

    m = sub.add_parser("demo-model", help="build a random-init model named under demo.models",
                       description="Reads the config's demo.models.<name> entry; writes a random-init Hugging Face model (save_pretrained) to models.<name>.source, then a .complete sentinel there.")
    add_config_arg(m)
    m.add_argument("--name", required=True, help="a name under demo.models (saved to models.<name>.source)")
    m.set_defaults(func=run_demo_model)


def _demo_entry(cfg, section: str, name: str) -> dict:
    table = cfg.demo.get(section, {})
    if name not in table:
        raise ConfigError(f"{cfg.source}: key demo/{section}/{name}: not defined (known: {', '.join(table) or 'none'})")
    return dict(table[name])


def run_demo_data(args: argparse.Namespace) -> dict:
    from pipeline.data.demo import make_classification_demo, make_segmentation_demo

    cfg = config_from_args(args)
    spec = _demo_entry(cfg, "datasets", args.name)
    root = cfg.dataset(args.name).root
    seed = cfg.demo.get("seed", 0)
    kind = spec.pop("kind")
    if kind == "segmentation":
        out = make_segmentation_demo(root, seed=seed, **spec)
    else:
        out = make_classification_demo(root, seed=seed, **spec)
    result = {"dataset": args.name, "written": str(out), "note": "synthetic data", "seed": seed, **spec}
    _mark_complete(root, result)
    return result


def run_demo_model(args: argparse.Namespace) -> dict:
    from pathlib import Path

    from pipeline.models import build_demo_model

    cfg = config_from_args(args)
    spec = _demo_entry(cfg, "models", args.name)
    family = spec.pop("family")
    out = build_demo_model(family, Path(cfg.model(args.name).spec.source), seed=cfg.demo.get("seed", 0), **spec)
    result = {"model": args.name, "written": str(out), "note": "RANDOM-INIT weights", "family": family, **spec}
    _mark_complete(Path(out), result)
    return result


def _mark_complete(folder, result: dict) -> None:
    """The sentinel the demo rules declare; written last, so a killed run is redone."""
    import json
    from pathlib import Path

    (Path(folder) / ".complete").write_text(json.dumps(result, indent=1) + "\n")
