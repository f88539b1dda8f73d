"""``probe-seg`` and ``probe-cls`` steps: linear-probe sweeps fitted on the activation cache."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands import add_config_arg, config_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    for step, kind, what in (
        ("probe-seg", "seg", "semantic-segmentation probe on cached patch tokens (config: probes.seg)"),
        ("probe-cls", "cls", "image-classification probe on cached CLS tokens (config: probes.cls)"),
    ):
        p = sub.add_parser(step, help=f"sweep a linear {what}; prints a JSON summary",
                           description=f"Reads the train and val stores of probes.{kind}.cache (and the model's final norm); writes "
                           f"sweep.csv, best.json/.safetensors, per-class table and charts to <results>/probes/{kind}/<model>/<dataset>/.")
        add_config_arg(p)
        p.add_argument("--out", type=Path, help=f"output folder (default: <results>/probes/{kind}/<model>/<dataset>)")
        p.add_argument("--no-progress", action="store_true", help="no progress bar and no progress lines in the log")
        p.set_defaults(func=run_probe, probe=kind)


def run_probe(args: argparse.Namespace) -> dict:
    cfg = config_from_args(args)
    if args.probe == "seg":
        from pipeline.probes.seg import run_seg_probe

        return run_seg_probe(cfg, out_dir=args.out, progress=not args.no_progress)
    from pipeline.probes.cls import run_cls_probe

    return run_cls_probe(cfg, out_dir=args.out, progress=not args.no_progress)
