"""Read an activation store: as labelled xarray (Jupyter) or as fast chunk streams (training).

Dimension key: N images, L cached layers, T tokens, D width, P patches, B images in a chunk.

``open_cache`` is the one way to open a store for people: lazy dask-backed
``xarray.Dataset`` with dims (image, layer, token, dim), labels and provenance
attrs. ``CacheReader`` is the one way for code: it reads whole zarr chunks
(never single rows), in order or in a seeded random chunk order, and
prefetches the next chunk in a thread so decompression overlaps compute.

Both read through :class:`pipeline.cache.checksums.VerifyingStore`: a chunk that fails its
checksum (or is short, or missing from a finalized store) raises ``ChunkCorruptError`` naming
the store, array, chunk and images. On a store made before checksums, a chunk that fails to
decode raises the same error from ``CacheReader``; a flipped bit there goes unnoticed.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from pipeline.cache.checksums import array_info, corrupt, has_checksums, verifying_store
from pipeline.cache.store import (
    CacheError,
    ChunkCorruptError,
    check_finalized,
    chunk_ranges,
    group_array,
    open_group,
)

log = logging.getLogger(__name__)


def open_cache(path: str | Path, *, require_complete: bool = True) -> xr.Dataset:
    """Open a store lazily as an ``xarray.Dataset``.

    With ``require_complete`` (default) an unfinished store is an error; pass
    False to look inside a store that is still being written (use ``done``).
    """
    path = Path(path)
    group = open_group(path)
    if require_complete:
        check_finalized(path, dict(group.attrs))  # or open with require_complete=False to look inside
    # finalize consolidates the metadata; a store still being written has none yet
    complete = bool(group.attrs.get("complete", False))
    return xr.open_zarr(verifying_store(path, read_only=True), consolidated=complete, zarr_format=3)


@contextlib.contextmanager
def _decoding(path: Path, name: str, start: int, *rest: int) -> Iterator[None]:
    """Name the chunk (of array ``name`` holding image ``start``; ``rest``: its chunk index on the
    other axes) when zarr fails to decode it."""
    try:
        yield
    except ChunkCorruptError:
        raise
    except (ValueError, RuntimeError) as err:  # Blosc's "-1", a reshape of a short chunk
        info = array_info(path, name)
        if info is None or not info.chunks:
            raise
        index = (start // info.chunks[0], *rest) + (0,) * (len(info.chunks) - 1 - len(rest))
        raise corrupt(path, info, index, f"cannot decode ({type(err).__name__}: {err})") from err


class CacheReader:
    """Chunk-wise access to one store for training and evaluation code."""

    def __init__(self, path: str | Path, *, require_complete: bool = True):
        self.path = Path(path)
        self.group = open_group(self.path)
        self.attrs: dict[str, Any] = dict(self.group.attrs)  # JSON values, read as the store wrote them
        if require_complete:
            check_finalized(self.path, self.attrs)
        if not has_checksums(self.path):
            log.info("%s: made before chunk checksums: a corrupt chunk is found only when it fails to decode", path)
        acts = self._array("acts")
        self.n_images, _, self.n_tokens, self.d_model = acts.shape
        self.chunk_images = acts.chunks[0]
        self.layers = tuple(int(x) for x in self._read("layer"))
        self.n_blocks = int(self.attrs["n_blocks"])
        self.n_prefix = int(self.attrs["n_prefix_tokens"])
        # stores written before model families could lack a CLS token had one, read as its image vector
        self.n_cls = int(self.attrs.get("n_cls_tokens", 1))
        self.image_readout = self.attrs.get("image_readout", "cls_token")
        self.grid = tuple(self.attrs["grid"])
        self.n_patches = self.grid[0] * self.grid[1]
        self.task = self.attrs["task"]
        self.class_names = tuple(self.attrs["class_names"])
        self.random_weights = bool(self.attrs.get("model", {}).get("random_weights", False))
        self.valid = self._read("done").astype(bool) & ~self._read("bad").astype(bool)

    # ---- metadata -------------------------------------------------------
    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_ids(self) -> np.ndarray:
        return self._read("image")

    def layer_index(self, layer: int) -> int:
        """Position on the store's layer axis of block ``layer`` (negative counts from the end)."""
        block = layer + self.n_blocks if layer < 0 else layer
        if block not in self.layers:
            raise CacheError(
                f"{self.path}: layer {layer} (block {block}) is not cached; cached blocks: {list(self.layers)}"
            )
        return self.layers.index(block)

    def block(self, layer: int) -> int:
        """Non-negative block number of ``layer``."""
        return self.layers[self.layer_index(layer)]

    def require(self, name: str) -> None:
        if name not in self.group:
            raise CacheError(f"{self.path}: the store has no {name!r} array (task {self.task!r}); this stage needs it")

    def labels(self, name: str) -> np.ndarray:
        """A whole label array (``label``, ``patch_label``, ``patch_purity``) as numpy."""
        self.require(name)
        return self._read(name)

    def _array(self, name: str) -> zarr.Array:
        return group_array(self.group, name)

    def _read(self, name: str) -> np.ndarray:
        """A whole (small, per-image or per-block) array as numpy."""
        return np.asarray(self._array(name)[:])

    def pixel_labels(self, start: int, stop: int) -> np.ndarray:
        self.require("pixel_label")
        with _decoding(self.path, "pixel_label", start):
            return np.asarray(self._array("pixel_label")[start:stop])

    # ---- activations ----------------------------------------------------
    def chunks(self) -> list[tuple[int, int]]:
        return chunk_ranges(self.n_images, self.chunk_images)

    def read(self, layer: int, start: int, stop: int, tokens: slice | None = None) -> np.ndarray:
        """acts[start:stop, layer, tokens] as stored ([B, T', D])."""
        li = self.layer_index(layer)
        sel = (slice(start, stop), li) + ((tokens,) if tokens is not None else ())
        with _decoding(self.path, "acts", start, li):
            return np.asarray(self._array("acts")[sel])

    def token_slice(self, which: str) -> slice:
        """``patches`` → the patch tokens, ``cls`` → CLS only, ``all`` → every token,
        ``image`` → the tokens whose mean is the image vector (``image_readout``: the CLS
        token, or the patches for a model without one)."""
        if which == "image":
            which = "cls" if self.image_readout == "cls_token" else "patches"
        if which == "cls" and not self.n_cls:
            raise CacheError(
                f"{self.path}: the store's model ({self.attrs.get('model', {}).get('family')}) has no CLS token"
            )
        return {"patches": slice(self.n_prefix, None), "cls": slice(0, 1), "all": slice(None)}[which]

    def iter_chunks(
        self,
        layer: int,
        *,
        tokens: str = "all",
        shuffle: bool = False,
        seed: int = 0,
        images: np.ndarray | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(image_idx_B, acts_BTD)`` one zarr chunk at a time, valid images only.

        ``shuffle`` visits chunks in a seeded random order (rows inside a chunk
        stay in order; shuffle buffers downstream mix them). ``images`` restricts
        to a boolean mask over N. The next chunk is read in a background thread.
        """
        order = self.chunks()
        if shuffle:
            order = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]
        keep = self.valid if images is None else self.valid & images
        order = [(s, e) for s, e in order if keep[s:e].any()]
        tok = self.token_slice(tokens)
        with cf.ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(self.read, layer, *order[0], tok) if order else None
            for i, (s, e) in enumerate(order):
                acts = future.result()
                if i + 1 < len(order):
                    future = pool.submit(self.read, layer, *order[i + 1], tok)
                rows = np.flatnonzero(keep[s:e])
                yield s + rows, acts[rows] if rows.size < e - s else acts
