"""``python -m pipeline STEP …``: every workflow step, runnable by hand.

Each step: parse its arguments (the stage's ``pipeline.commands`` module), read the
config (``--config``, default ``config.yaml``), refuse upstream outputs made from
another config, start the run context (threads, device) and call the stage's
``run`` (pipeline.stages), which writes the outputs the Snakemake rule declares.
``python -m pipeline STEP --help`` lists its options.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import logging
import sys

from pipeline import commands, provenance
from pipeline.config import load_config
from pipeline.stages import STAGES, rule_threads


def build_parser() -> argparse.ArgumentParser:
    """One sub-command per stage: each stage's front-end module (pipeline.stages ``cli``, imported
    now, so --help is fast) adds its steps' parsers."""
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")
    for module_name in dict.fromkeys(stage.cli for stage in STAGES.values()):
        importlib.import_module(module_name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    stage = STAGES[args.step]
    try:
        ctx = None  # prepare takes no config
        if getattr(args, "config", None) is not None:
            cfg = load_config(args.config)
            provenance.check_cli_step(args, cfg)  # an upstream output made from another config: refused here
            from pipeline.context import RunContext  # imports torch: after the config and provenance checks

            ctx = RunContext.start(cfg, device=getattr(args, "device", None), threads=rule_threads(cfg, args.step))
        result = stage.run(ctx, args)
    except commands.USER_ERRORS as err:  # bad input: one clear line naming the file/key/value, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        print(
            f"error: disk full ({err.filename or err}): free some space and re-run the same command; it resumes where it stopped",
            file=sys.stderr,
        )
        return 2
    if isinstance(result, dict):
        print(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
