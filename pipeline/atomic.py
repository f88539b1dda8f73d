"""Atomic writes of results: a temporary file beside the target, renamed over it once complete.

Every result file (JSON, CSV, charts and HTML pages, images, checkpoints, sentinels) is written
through :func:`replacing` or one of its shorthands, so a crash, a full disk or an exception
never leaves a truncated file under a result's name: a reader finds the previous file (or
none) or the whole new one, and a rerun never trusts a partial one. The temporary file is
``.<name>.tmp-<pid>-<thread><suffix>`` in the target's folder (same file system, so the rename
is atomic; the suffix is kept because writers such as Altair and Pillow pick the format from
it); on any error it is removed. Only a kill (-9) can leave one behind: nothing reads those
names. No ``fsync``: this guards against crashes of the process, not against power loss.

torch's serialiser reports a failed write (disk full) as ``RuntimeError: [enforce fail at
inline_container.cc:…] unexpected pos …`` or ``… PytorchStreamWriter failed writing file …``,
safetensors as a ``SafetensorError`` holding the I/O error; :func:`replacing` raises those as
``OSError(ENOSPC)`` naming the target, so the command line prints its one-line disk-full
message for them too.

Reads nothing; writes the target file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Substrings of the errors writers raise, instead of OSError(ENOSPC), when the disk is full:
# torch.save's RuntimeError when the bytes could not all be written, and safetensors'
# SafetensorError, which carries the Rust I/O error (ENOSPC is errno 28, "StorageFull").
DISK_FULL_MESSAGES = (
    "unexpected pos",
    "PytorchStreamWriter failed writing file",
    "No space left on device",
    "StorageFull",
)


def temporary_name(path: Path) -> Path:
    """The temporary file :func:`replacing` writes before renaming it to ``path``."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}{path.suffix}")


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` (not an OSError) is a writer library's report of a write that ran out of space."""
    return not isinstance(err, OSError) and any(s in str(err) for s in DISK_FULL_MESSAGES)


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on leaving the block, rename it over ``path``.

    The parent folder is created. On an exception the temporary file is removed and ``path``
    is left as it was; a writer library's disk-full error (torch, safetensors) is re-raised as ``OSError(ENOSPC)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except Exception as err:
        if is_disk_full(err):
            raise OSError(errno.ENOSPC, f"writing failed ({str(err).splitlines()[0]})", str(path)) from err
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """``path.write_text(text)``, atomically."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """``path.write_bytes(data)``, atomically."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: str | Path, obj: Any, **dumps: Any) -> Path:
    """``obj`` as JSON (``json.dumps(obj, **dumps)``) plus a final newline, atomically."""
    return write_text(path, json.dumps(obj, **dumps) + "\n")


def write_csv(table: Any, path: str | Path, **to_csv: Any) -> Path:
    """A pandas ``DataFrame`` as CSV (``table.to_csv(path, **to_csv)``), atomically."""
    with replacing(path) as tmp:
        table.to_csv(tmp, **to_csv)
    return Path(path)
