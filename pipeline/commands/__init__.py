"""Command-line front ends of the stages: argparse only (each module's ``add_parser``). What a
sub-command runs is its stage's ``run`` (the registry :mod:`pipeline.stages` names it)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pipeline.config import SPLITS, ConfigError

# Bad-input errors by (module, class). An exception can only be an instance of a class whose
# module is already imported, so USER_ERRORS holds just those: catching a config error never
# imports torch, zarr or transformers for the other classes.
_USER_ERROR_CLASSES = (
    ("pipeline.cache.store", "CacheError"),
    ("pipeline.data.images", "BadImageError"),
    ("pipeline.data.images", "MaskError"),
    ("pipeline.data.datasets", "DatasetError"),
    ("pipeline.sae.checkpoint", "CheckpointError"),
    ("pipeline.sae.scaling", "NonFiniteInputError"),
    ("pipeline.runtime", "DeviceError"),
    ("pipeline.models.load", "ModelSourceError"),
    ("pipeline.models.spec", "ModelLoadError"),
    ("pipeline.prepare", "PrepareError"),
)


def _user_errors() -> tuple[type[BaseException], ...]:
    loaded = [getattr(sys.modules[m], name) for m, name in _USER_ERROR_CLASSES if m in sys.modules]
    return (ConfigError, *loaded, FileNotFoundError, FileExistsError)


def __getattr__(name: str) -> Any:
    if name == "USER_ERRORS":  # built when an error is caught (see _USER_ERROR_CLASSES)
        return _user_errors()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=Path("config.yaml"), help="config file (default: config.yaml)")


def add_store_args(
    parser: argparse.ArgumentParser,
    *,
    model: str = "a name under `models` in the config",
    dataset: str = "a name under `datasets` in the config",
) -> None:
    """``--model``, ``--dataset``, ``--split``: the store ``<cache>/<model>/<dataset>/<split>.zarr`` a
    step writes or reads (the keys provenance checks the step by)."""
    parser.add_argument("--model", required=True, help=model)
    parser.add_argument("--dataset", required=True, help=dataset)
    parser.add_argument("--split", required=True, choices=SPLITS)
