"""Activation statistics of a store, computed out-of-core with dask (step ``stats``).

Reads ``acts[N, L, T, D]`` of one store with :func:`dask.array.from_zarr` (one dask
block = one zarr chunk of ``chunk_images`` images of one layer) and reduces it chunk by
chunk: every block becomes a small vector of partial sums, and only those are summed.
Nothing ever holds more than a few chunks, so a store far larger than memory is fine, and
the same graph runs on a dask distributed cluster (``scheduler=`` / ``--scheduler``).

Per cached layer (keyed by its non-negative block number) and per token kind
(``patches``: the patch tokens, registers excluded; ``cls``: the CLS token), over the
valid images only (``done & ~bad``):

- ``n_tokens``               tokens reduced over
- ``mean``                   mean vector [D]
- ``var``                    per-dimension variance [D] (population, ddof 0)
- ``mean_norm``              E‖x‖ (mean L2 norm)
- ``mean_sq_norm``           E‖x‖²
- ``mean_sq_centred_norm``   E‖x − mean‖² = Σ_d var_d (what :meth:`InputScaling.from_stats` needs)

Sums are float64 and shifted by a reference token vector (the first valid image's mean
token of that kind), so E‖x − mean‖² does not suffer from cancellation when activations
have a large mean (ViT residual streams do).

Output: ``<results>/stats/<model>/<dataset>/<split>.json`` (readable JSON) with the store's
path and ``config_hash``; :func:`pipeline.sae.scaling.scaling_from_stats` turns it into the
SAE's :class:`~pipeline.sae.scaling.InputScaling` (``patches``, or ``patches+cls`` pooled by
:func:`pooled`). This module knows nothing of SAEs.

Dimension key: N images, L cached layers, T tokens, D width, K packed partial sums.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np

from pipeline import atomic
from pipeline.cache.store import CacheError, CacheIncompleteError, group_array, open_group
from pipeline.config import CacheRef
from pipeline.layout import stats_path
from pipeline.progress import dask_progress
from pipeline.provenance import record

log = logging.getLogger(__name__)

KINDS = ("patches", "cls")
STATS_FORMAT = 1
# Token rows converted to float64 at once inside a chunk (bounds temporaries per dask task).
_SUB_ROWS = 1 << 12


class StatsError(CacheError):
    """A stats file that does not fit the store or the layer asked for (names the file)."""


# --------------------------------------------------------------------------- the reduction


def _kind_slices(n_prefix: int, n_cls: int = 1) -> tuple[slice, slice]:
    """Token slices of KINDS; a model without a CLS token has an empty ``cls`` slice."""
    return slice(n_prefix, None), slice(0, n_cls)


def _block_sums(
    block: np.ndarray, *, valid: np.ndarray, shift_LKD: np.ndarray, n_prefix: int, n_cls: int = 1, block_info=None
) -> np.ndarray:
    """Partial sums of one zarr chunk ``[b, 1, T, D]`` → ``[1, 1, 1, 2 · (2D + 2)]``.

    Per kind: ``[n, Σ(x − shift) (D), Σ(x − shift)² (D), Σ‖x‖]``. Works on a few images at
    a time, so the float64 temporaries stay small whatever the chunk size.
    """
    loc = block_info[0]["array-location"]
    (start, stop), (li, _) = loc[0], loc[1]
    _, _, t, d = block.shape
    keep = np.flatnonzero(valid[start:stop])
    out = np.zeros((2, 2 * d + 2), dtype=np.float64)
    step = max(1, _SUB_ROWS // t)
    for s in range(0, keep.size, step):
        x_bTD = block[keep[s : s + step], 0]
        for k, tok in enumerate(_kind_slices(n_prefix, n_cls)):
            r = x_bTD[:, tok].astype(np.float64).reshape(-1, d)
            out[k, 0] += r.shape[0]
            out[k, 2 * d + 1] += np.sqrt(np.einsum("nd,nd->n", r, r)).sum()
            r -= shift_LKD[li, k]
            out[k, 1 : 1 + d] += r.sum(0)
            out[k, 1 + d : 1 + 2 * d] += np.einsum("nd,nd->d", r, r)
    return out.reshape(1, 1, 1, -1)


def _finish(sums: np.ndarray, shift_D: np.ndarray) -> dict[str, Any]:
    d = shift_D.shape[0]
    n = int(round(sums[0]))
    if n == 0:
        raise StatsError("no valid tokens to compute statistics from")
    m1 = sums[1 : 1 + d] / n  # mean of x − shift
    var = np.maximum(sums[1 + d : 1 + 2 * d] / n - m1 * m1, 0.0)
    mean = shift_D + m1
    centred = float(var.sum())
    return {
        "n_tokens": n,
        "mean": mean.tolist(),
        "var": var.tolist(),
        "mean_norm": float(sums[1 + 2 * d] / n),
        "mean_sq_norm": centred + float(mean @ mean),
        "mean_sq_centred_norm": centred,
    }


@contextmanager
def _dask_scheduler(scheduler: str | None, threads: int | None):
    """Local threads (``threads`` workers), or a distributed scheduler at ``scheduler``."""
    if not scheduler:
        with dask.config.set(scheduler="threads", num_workers=threads):
            yield "local threads" + (f" ({threads})" if threads else "")
        return
    try:
        from distributed import Client  # optional package: only for --scheduler
    except ImportError as err:
        raise RuntimeError(
            f"--scheduler {scheduler}: connecting to a dask cluster needs the 'distributed' package, "
            "which is not installed (pip install 'dask[distributed]'), or leave --scheduler out to "
            "compute with local threads"
        ) from err
    client = Client(scheduler)
    try:
        yield f"dask distributed {scheduler} ({len(client.scheduler_info().get('workers', {}))} workers)"
    finally:
        client.close()


def compute_stats(
    store: str | Path,
    *,
    layers: list[int] | None = None,
    scheduler: str | None = None,
    threads: int | None = None,
    require_complete: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Statistics of every cached layer (or ``layers``, block numbers) of ``store``.

    Reads the store once, chunk-wise. ``scheduler``: a dask distributed scheduler address
    (``tcp://host:8786``); the workers must see ``store`` at the same path. Without it,
    local threads (``threads`` of them; None = dask's default) do the work. If a
    ``distributed.Client`` is already active in this process, dask uses it anyway.
    """
    store = Path(store)
    group = open_group(store)
    attrs: dict[str, Any] = dict(group.attrs)
    if require_complete and not attrs.get("complete", False):
        raise CacheIncompleteError(f"{store}: store is not finalized; statistics need a complete store")
    valid = np.asarray(group_array(group, "done")[:], dtype=bool) & ~np.asarray(
        group_array(group, "bad")[:], dtype=bool
    )
    if not valid.any():
        raise StatsError(f"{store}: no valid image (every image is bad or not done)")
    cached = [int(b) for b in np.asarray(group_array(group, "layer")[:])]
    wanted = cached if layers is None else [int(b) for b in layers]
    for b in wanted:
        if b not in cached:
            raise StatsError(f"{store}: block {b} is not cached; cached blocks: {cached}")
    n_prefix = int(attrs["n_prefix_tokens"])
    n_cls = int(attrs.get("n_cls_tokens", 1))  # 0 for a model without a CLS token (SigLIP)
    acts = group_array(group, "acts")
    n, n_layers, t, d = acts.shape

    # Shift: the first valid image's mean token of each kind (reads one chunk per layer).
    first = int(np.flatnonzero(valid)[0])
    shift = np.zeros((n_layers, 2, d), dtype=np.float64)
    for li in range(n_layers):
        row_TD = np.asarray(acts[first, li], dtype=np.float64)
        for k, tok in enumerate(_kind_slices(n_prefix, n_cls)):
            if tok.stop != tok.start:
                shift[li, k] = row_TD[tok].mean(0)

    x = da.from_zarr(acts)  # the zarr array itself (LocalStore; picklable for distributed workers)
    func = functools.partial(_block_sums, valid=valid, shift_LKD=shift, n_prefix=n_prefix, n_cls=n_cls)
    k_sums = 2 * (2 * d + 2)
    parts = x.map_blocks(func, dtype=np.float64, chunks=((1,) * len(x.chunks[0]), (1,) * n_layers, (1,), (k_sums,)))
    with _dask_scheduler(scheduler, threads) as how, dask_progress(f"stats {store.name}", enabled=progress):
        (sums_LK,) = dask.compute(parts.sum(axis=0)[:, 0])
    layers_out: dict[str, Any] = {}
    for li, block in enumerate(cached):
        if block not in wanted:
            continue
        per_kind = {}
        for k, kind in enumerate(KINDS):
            if kind == "cls" and not n_cls:
                continue
            part = sums_LK[li, k * (2 * d + 2) : (k + 1) * (2 * d + 2)]
            per_kind[kind] = _finish(part, shift[li, k])
        layers_out[str(block)] = per_kind
    return {
        "stats_format": STATS_FORMAT,
        "store": str(store),
        "config_hash": attrs.get("config_hash"),
        "model": attrs.get("model_name"),
        "dataset": attrs.get("dataset_name"),
        "split": attrs.get("split"),
        "dtype": str(acts.dtype),
        "d_model": int(d),
        "n_images": int(n),
        "n_valid_images": int(valid.sum()),
        "n_prefix_tokens": n_prefix,
        "kinds": {"patches": "patch tokens (registers excluded)", "cls": "CLS token"}
        if n_cls
        else {"patches": "patch tokens (the model has no CLS token)"},
        "note": "float64 sums over valid images (done & ~bad); var is per dimension, ddof 0; "
        "mean_sq_centred_norm = E||x - mean||^2 = sum(var)",
        "random_weights": bool(attrs.get("model", {}).get("random_weights", False)),
        "computed_with": how,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "layers": layers_out,
    }


def write_stats(stats: dict[str, Any], path: str | Path) -> Path:
    """Write ``stats`` as indented JSON (atomically: temp file + rename)."""
    path = Path(path)
    atomic.write_json(path, stats, indent=1)
    return path


def read_stats(path: str | Path, *, config_hash: str | None = None) -> dict[str, Any]:
    """Read a stats file; with ``config_hash``, refuse one made from another store."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no statistics file (run `python -m pipeline stats` for it first)")
    stats = json.loads(path.read_text())
    if config_hash is not None and stats.get("config_hash") != config_hash:
        raise StatsError(
            f"{path}: made from a store with config hash {str(stats.get('config_hash'))[:12]}, "
            f"the store now has {config_hash[:12]}; re-run the stats step"
        )
    return stats


def pooled(stats: dict[str, Any], block: int, kinds: tuple[str, ...]) -> tuple[np.ndarray, float, int]:
    """(mean [D], E‖x − mean‖², n) over the union of token ``kinds`` of ``block``."""
    layer = stats["layers"].get(str(int(block)))
    if layer is None:
        raise StatsError(f"{stats.get('store')}: stats have no block {block} (have {sorted(stats['layers'])})")
    absent = [k for k in kinds if k not in layer]
    if absent:
        raise StatsError(
            f"{stats.get('store')}: the store has no {'/'.join(absent)} tokens (its model has no CLS token); "
            "use sae.tokens: patches"
        )
    parts = [
        (
            np.asarray(layer[k]["mean"], dtype=np.float64),
            float(layer[k]["mean_sq_centred_norm"]),
            int(layer[k]["n_tokens"]),
        )
        for k in kinds
    ]
    n = sum(p[2] for p in parts)
    mean = sum(p[0] * p[2] for p in parts) / n
    centred = sum(p[2] * (p[1] + float(((p[0] - mean) ** 2).sum())) for p in parts) / n
    return mean, centred, n


def run_stats(
    cfg, model: str, dataset: str, split: str, *, scheduler: str | None = None, out: Path | None = None
) -> dict[str, Any]:
    """The ``stats`` step: compute and write the stats of one store; return a short summary."""
    from pipeline.cpus import available_cpus

    store = cfg.store(CacheRef(model, dataset), split)
    threads = max(1, min(int(cfg.threads), available_cpus()))
    stats = compute_stats(store, scheduler=scheduler, threads=threads)
    stats["provenance"] = record(cfg, "stats", model=model, dataset=dataset, split=split)
    path = write_stats(stats, out or stats_path(cfg, CacheRef(model, dataset), split))
    summary = {
        "stats": str(path),
        "store": str(store),
        "computed_with": stats["computed_with"],
        "n_valid_images": stats["n_valid_images"],
    }
    for block, per_kind in stats["layers"].items():
        p = per_kind["patches"]
        summary[f"block {block} patches"] = {
            "n_tokens": p["n_tokens"],
            "mean_norm": round(p["mean_norm"], 4),
            "mean_sq_centred_norm": round(p["mean_sq_centred_norm"], 4),
        }
    return summary


__all__ = ["KINDS", "StatsError", "compute_stats", "pooled", "read_stats", "run_stats", "write_stats"]
