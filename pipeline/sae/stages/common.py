"""What the SAE stage modules share: opening a store of the config, and writing JSON records.

Reads stores; writes the JSON files it is given (atomically: a temporary name, then a rename).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

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
    """Write ``obj`` as indented JSON to ``path`` via a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=json_default) + "\n")
    os.replace(tmp, path)


def json_default(obj: Any) -> Any:
    """numpy scalars and paths as JSON values (``json.dumps(default=...)``)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
