"""What the SAE stage modules share: opening a store of the config, and writing JSON records.

Reads stores; writes the JSON files it is given (atomically: :mod:`pipeline.atomic`).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import atomic
from pipeline.config import CacheRef, Config

if TYPE_CHECKING:
    from pipeline.cache.reader import CacheReader


def open_store(cfg: Config, ref: CacheRef, split: str) -> CacheReader:
    """The store of ``(ref, split)`` as configured (no provenance check: the CLI made it)."""
    from pipeline.cache.reader import CacheReader  # dask, zarr, xarray

    return CacheReader(cfg.store(ref, split))


def now() -> str:
    """The current UTC time, ISO 8601 to the second (the ``created`` field of every record)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` (:func:`pipeline.atomic.write_json`: a temporary
    file and a rename; disk full is one clear error)."""
    atomic.write_json(path, obj, indent=1, default=json_default)


def json_default(obj: Any) -> Any:
    """numpy scalars and paths as JSON values (``json.dumps(default=...)``)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
