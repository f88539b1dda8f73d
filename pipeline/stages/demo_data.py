"""``demo-data NAME``: generate the synthetic dataset ``demo.datasets.NAME`` (:mod:`pipeline.data.demo`).

Reads the config's ``demo`` table; writes the dataset under ``datasets.NAME.root`` in its
layout's real on-disk format, then the sentinel its rule declares (``layout.demo_sentinel``).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from pipeline import atomic, layout
from pipeline.config import Config, ConfigError
from pipeline.data.demo import make_classification_demo, make_segmentation_demo

if TYPE_CHECKING:  # the context module imports torch
    from pathlib import Path

    from pipeline.context import RunContext

# demo.datasets.NAME.kind -> the generator (its other keys are the generator's arguments)
GENERATORS = {"segmentation": make_segmentation_demo, "classification": make_classification_demo}


def demo_entry(cfg: Config, section: str, name: str) -> dict[str, Any]:
    """A copy of ``demo.<section>.<name>``, or a ConfigError naming the key."""
    table = cfg.demo.get(section, {})
    if name not in table:
        raise ConfigError(f"{cfg.source}: key demo/{section}/{name}: not defined (known: {', '.join(table) or 'none'})")
    return dict(table[name])


def mark_complete(folder: Path, result: dict[str, Any]) -> None:
    """The sentinel the demo rules declare; written last, so a killed run is redone."""
    atomic.write_json(layout.demo_sentinel(folder), result, indent=1)


def run(ctx: RunContext, args: argparse.Namespace) -> dict[str, Any]:
    cfg = ctx.cfg
    spec = demo_entry(cfg, "datasets", args.name)
    root = cfg.dataset(args.name).root
    seed = cfg.demo.get("seed", 0)
    kind = spec.pop("kind")
    out = GENERATORS[kind](root, seed=seed, **spec)
    result = {"dataset": args.name, "written": str(out), "note": "synthetic data", "seed": seed, **spec}
    mark_complete(root, result)
    return result
