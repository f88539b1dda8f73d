"""``probe-<kind>`` steps (``probe-seg``, ``probe-cls``, one per pipeline.probe_kinds entry): linear-probe sweeps fitted on the activation cache."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands import add_config_arg
from pipeline.probe_kinds import PROBE_KINDS


def add_parser(sub: argparse._SubParsersAction) -> None:
    """One ``probe-<kind>`` sub-command per registered probe kind (pipeline.probe_kinds)."""
    for kind, pk in PROBE_KINDS.items():
        p = sub.add_parser(
            pk.step,
            help=f"sweep a linear {pk.help}; prints a JSON summary",
            description=f"Reads the train and val stores of probes.{kind}.cache ({pk.reads}; and the model's final norm); writes "
            f"sweep.csv, best.json/.safetensors, per-class table and charts to <results>/probes/{kind}/<model>/<dataset>/.",
        )
        add_config_arg(p)
        p.add_argument("--out", type=Path, help=f"output folder (default: <results>/probes/{kind}/<model>/<dataset>)")
        p.add_argument("--no-progress", action="store_true", help="no progress bar and no progress lines in the log")
        p.set_defaults(probe=kind)
