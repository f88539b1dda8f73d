"""Command-line front ends of the stages (argparse only; the work is in the stage modules)."""

from __future__ import annotations

import argparse
from pathlib import Path

from typing import Any

from pipeline.config import ConfigError, load_config


def _user_errors() -> tuple[type[BaseException], ...]:
    from pipeline.cache import CacheError
    from pipeline.data import BadImageError, DatasetError, MaskError
    from pipeline.models.load import ModelSourceError
    from pipeline.models.spec import ModelLoadError
    from pipeline.prepare import PrepareError
    from pipeline.runtime import DeviceError
    from pipeline.sae.checkpoint import CheckpointError

    return (
        ConfigError, CacheError, BadImageError, MaskError, DatasetError, CheckpointError, DeviceError,
        ModelSourceError, ModelLoadError, PrepareError, FileNotFoundError, FileExistsError,
    )


def __getattr__(name: str) -> Any:
    # USER_ERRORS is built on first use: the cache's classes import zarr / xarray / dask, which
    # `python -m pipeline --help` and a config error need not pay for.
    if name == "USER_ERRORS":
        return _user_errors()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=Path("config.yaml"), help="config file (default: config.yaml)")


def config_from_args(args: argparse.Namespace):
    return load_config(args.config)
