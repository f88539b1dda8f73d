"""``demo-model NAME``: build the random-init model ``demo.models.NAME`` (:func:`pipeline.models.build_demo_model`).

Reads the config's ``demo`` table; writes the model folder at ``models.NAME.source`` in its
family's real hub layout (config.json + safetensors), then its sentinel.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.stages.demo_data import demo_entry, mark_complete

if TYPE_CHECKING:  # the context module imports torch
    from pipeline.context import RunContext


def run(ctx: RunContext, args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.models import build_demo_model

    cfg = ctx.cfg
    spec = demo_entry(cfg, "models", args.name)
    family = spec.pop("family")
    out = build_demo_model(family, Path(cfg.model(args.name).spec.source), seed=cfg.demo.get("seed", 0), **spec)
    result = {"model": args.name, "written": str(out), "note": "RANDOM-INIT weights", "family": family, **spec}
    mark_complete(Path(out), result)
    return result
