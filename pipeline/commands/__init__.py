"""Command-line front ends of the stages (argparse only; the work is in the stage modules)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cache import CacheError
from pipeline.config import ConfigError, load_config


def _user_errors() -> tuple[type[BaseException], ...]:
    from pipeline.data import BadImageError, DatasetError, MaskError
    from pipeline.models.load import ModelSourceError
    from pipeline.models.spec import ModelLoadError
    from pipeline.prepare import PrepareError
    from pipeline.runtime import DeviceError
    from pipeline.sae.checkpoint import CheckpointError
    from pipeline.sae.scaling import NonFiniteInputError

    return (
        ConfigError, CacheError, BadImageError, MaskError, DatasetError, CheckpointError, NonFiniteInputError, DeviceError,
        ModelSourceError, ModelLoadError, PrepareError, FileNotFoundError, FileExistsError,
    )


USER_ERRORS = _user_errors()


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=Path("config.yaml"), help="config file (default: config.yaml)")


def config_from_args(args: argparse.Namespace):
    return load_config(args.config)
