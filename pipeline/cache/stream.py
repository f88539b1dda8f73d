"""Token streams from a store, for training: flattened rows, shuffled without random row reads.

Dimension key: B images in a chunk, T tokens read per image, D width, N rows.

Random single-row reads from a compressed zarr store are slow (each decodes a
whole chunk), so shuffling is two-level: chunks are visited in a seeded random
order (``CacheReader.iter_chunks(shuffle=True)``) and rows are mixed in a
bounded shuffle buffer spanning several chunks. Everything is seeded: the same
seed and epoch give the same batches.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import numpy as np
import torch

from pipeline.cache.reader import CacheReader

T = TypeVar("T")


def token_rows(
    reader: CacheReader,
    layer: int,
    *,
    tokens: str = "patches",
    shuffle: bool = False,
    seed: int = 0,
    images: np.ndarray | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(acts_ND, image_N, token_N)`` per chunk: every selected token as a row.

    ``token_N`` is the index within the selection (for ``patches``: the patch
    index, row-major on the grid), so labels are ``patch_label[image_N, token_N]``.
    """
    for image_B, acts_BTD in reader.iter_chunks(layer, tokens=tokens, shuffle=shuffle, seed=seed, images=images):
        b, t, d = acts_BTD.shape
        yield acts_BTD.reshape(b * t, d), np.repeat(image_B, t), np.tile(np.arange(t), b)


def shuffle_buffer(
    parts: Iterable[tuple[np.ndarray, ...]],
    *,
    batch_size: int,
    buffer_size: int,
    seed: int,
    drop_last: bool = False,
) -> Iterator[tuple[np.ndarray, ...]]:
    """Re-batch aligned row arrays through a shuffle buffer of about ``buffer_size`` rows.

    When the buffer holds ``buffer_size`` rows it is permuted and half of it is
    emitted as batches; the other half waits to mix with the next parts. With
    ``buffer_size`` <= ``batch_size`` this is plain in-order batching.
    """
    rng = np.random.default_rng(seed)
    mixing = buffer_size > batch_size

    def order(n: int) -> np.ndarray:
        return rng.permutation(n) if mixing else np.arange(n)

    held: list[tuple[np.ndarray, ...]] = []
    n_held = 0

    def emit(arrays: tuple[np.ndarray, ...], n: int) -> Iterator[tuple[np.ndarray, ...]]:
        for s in range(0, n - n % batch_size if drop_last else n, batch_size):
            yield tuple(a[s : s + batch_size] for a in arrays)

    for part in parts:
        held.append(part)
        n_held += len(part[0])
        if n_held < max(buffer_size, batch_size):
            continue
        merged = tuple(np.concatenate(cols) for cols in zip(*held))
        perm = order(n_held)
        keep = min(n_held // 2, buffer_size // 2)
        out_n = (n_held - keep) // batch_size * batch_size  # emit whole batches only
        out_rows, keep_rows = perm[:out_n], perm[out_n:]
        yield from emit(tuple(a[out_rows] for a in merged), out_n)
        held = [tuple(a[keep_rows] for a in merged)]
        n_held = len(keep_rows)
    if n_held:
        merged = tuple(np.concatenate(cols) for cols in zip(*held))
        perm = order(n_held)
        yield from emit(tuple(a[perm] for a in merged), n_held)


# --------------------------------------------------------------------------- fast training stream


class ChunkDecoder:
    """Whole ``acts`` chunks decoded straight from their files with numcodecs' Blosc.

    zarr's codec pipeline hands each chunk through its event loop and copies it into a fresh
    output array; on this store layout (regular chunks ``(c, 1, T, D)``, bytes + Blosc, one
    file per chunk in a local folder) that measured ~2.7× slower than a Blosc decode of the
    same bytes into a reused buffer, so training streams read the files themselves.
    ``numcodecs.blosc.decompress`` releases the GIL, so several chunks decode at once on
    worker threads. Any other layout (or a missing chunk file) falls back to
    ``CacheReader.read``, which gives the same values (tested).
    """

    def __init__(self, reader: CacheReader) -> None:
        from zarr.codecs import BloscCodec, BytesCodec

        self.reader = reader
        acts = reader.group["acts"]
        meta = acts.metadata
        codecs = getattr(meta, "codecs", ())
        self.chunk_shape = tuple(acts.chunks)
        self.dtype = np.dtype(acts.dtype)
        self.direct = (
            len(codecs) == 2 and isinstance(codecs[0], BytesCodec) and isinstance(codecs[1], BloscCodec)
            and (codecs[0].endian is None or codecs[0].endian.value == sys.byteorder)
            and self.chunk_shape[1:] == (1, reader.n_tokens, reader.d_model)
        )
        self.chunk_elements = int(np.prod(self.chunk_shape))
        self._meta = meta
        self._root = reader.path / "acts"

    def read(self, layer: int, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """``acts[start:stop, layer]`` as stored (``[B, T, D]``); ``start`` on a chunk boundary.

        ``out``: a reusable flat buffer of at least one chunk's elements (direct path only).
        """
        from numcodecs import blosc

        li = self.reader.layer_index(layer)
        c = self.chunk_shape[0]
        if self.direct and start % c == 0:
            path = self._root / self._meta.encode_chunk_key((start // c, li, 0, 0))
            if path.is_file():
                n = self.chunk_elements
                if out is None or out.size < n or out.dtype != self.dtype:
                    out = np.empty(n, dtype=self.dtype)
                blosc.decompress(path.read_bytes(), out[:n])
                return out[:n].reshape(c, *self.chunk_shape[2:])[: stop - start]
        return self.reader.read(layer, start, stop)


def read_ahead(tasks: Iterable[Callable[[], T]], *, workers: int) -> Iterator[T]:
    """Results of ``tasks`` in their order, computed on ``workers`` threads, ``workers + 1`` ahead.

    The order of the results never depends on ``workers``.
    """
    tasks = iter(tasks)
    if workers <= 1:
        with cf.ThreadPoolExecutor(max_workers=1) as pool:  # still overlap one read with the consumer
            yield from _in_order(pool, tasks, ahead=1)
        return
    with cf.ThreadPoolExecutor(max_workers=workers) as pool:
        yield from _in_order(pool, tasks, ahead=workers + 1)


def _in_order(pool: cf.Executor, tasks: Iterator[Callable[[], T]], *, ahead: int) -> Iterator[T]:
    pending: collections.deque[cf.Future] = collections.deque()
    for task in tasks:
        pending.append(pool.submit(task))
        if len(pending) > ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def chunk_order(reader: CacheReader, *, shuffle: bool, seed: int, images: np.ndarray | None = None) -> list[tuple[int, int]]:
    """The chunks ``CacheReader.iter_chunks`` visits (same seeded order), holding a valid image."""
    order = reader.chunks()
    if shuffle:
        order = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]
    keep = reader.valid if images is None else reader.valid & images
    return [(s, e) for s, e in order if keep[s:e].any()]


def token_index(reader: CacheReader, tokens: str) -> np.ndarray:
    """Positions on the store's token axis for ``patches`` or ``patches+cls`` (never registers)."""
    if tokens == "patches":
        return np.arange(reader.n_prefix, reader.n_tokens)
    if tokens == "patches+cls":
        return np.concatenate([[0], np.arange(reader.n_prefix, reader.n_tokens)])
    raise ValueError(f"tokens must be patches or patches+cls, got {tokens!r}")


def chunk_rows(
    reader: CacheReader, layer: int, order: Iterable[tuple[int, int]], tok_T: np.ndarray, *, workers: int = 2,
) -> Iterator[np.ndarray]:
    """``[rows, D]`` (stored dtype) per chunk of ``order``: the valid images' ``tok_T`` tokens.

    Chunks are decoded ``workers`` at a time (several in flight); the rows come in ``order``,
    image-major then token, exactly as ``token_parts`` gives them.
    """
    decoder = ChunkDecoder(reader)
    local = threading.local()
    contiguous = tok_T.size > 0 and np.array_equal(tok_T, np.arange(tok_T[0], tok_T[0] + tok_T.size))

    def task(s: int, e: int) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            if decoder.direct and getattr(local, "buf", None) is None:
                local.buf = np.empty(decoder.chunk_elements, dtype=decoder.dtype)  # one per thread, reused
            acts_BTD = decoder.read(layer, s, e, out=getattr(local, "buf", None))
            rows_B = np.flatnonzero(reader.valid[s:e])
            if contiguous and rows_B.size == e - s:
                # a view of the reused decode buffer: copy it out
                return np.array(acts_BTD[:, tok_T[0]:tok_T[0] + tok_T.size]).reshape(-1, acts_BTD.shape[-1])
            return acts_BTD[np.ix_(rows_B, tok_T)].reshape(-1, acts_BTD.shape[-1])  # fancy index: a copy

        return run

    yield from read_ahead((task(s, e) for s, e in order), workers=workers)


class RowShuffler:
    """``shuffle_buffer`` for one row array, in a preallocated buffer: the same batches in the same
    order for the same seed (the same generator calls on the same row order), without
    re-concatenating the held rows for every part. Batches come out as torch tensors of
    ``dtype`` (pinned when ``pin_memory``), gathered with ``index_select``.
    """

    def __init__(self, *, d: int, dtype: np.dtype, batch_size: int, buffer_size: int, seed: int,
                 out_dtype: torch.dtype = torch.float32, pin_memory: bool = False) -> None:
        self.rng = np.random.default_rng(seed)
        self.mixing = buffer_size > batch_size
        self.threshold = max(buffer_size, batch_size)
        self.batch_size, self.buffer_size = batch_size, buffer_size
        self.out_dtype, self.pin = out_dtype, pin_memory
        self.buf = torch.empty((0, d), dtype=torch.from_numpy(np.zeros(0, dtype)).dtype)
        self.spare = self.buf
        self.n = 0

    def _reserve(self, rows: int) -> None:
        if rows > self.buf.shape[0]:
            grown = torch.empty((rows, self.buf.shape[1]), dtype=self.buf.dtype)
            grown[: self.n] = self.buf[: self.n]
            self.buf, self.spare = grown, torch.empty_like(grown)

    def _batch(self, idx: torch.Tensor) -> torch.Tensor:
        rows = self.buf.index_select(0, idx)
        if rows.dtype == self.out_dtype and not self.pin:
            return rows
        out = torch.empty(rows.shape, dtype=self.out_dtype, pin_memory=self.pin)
        return out.copy_(rows)

    def _order(self, n: int) -> torch.Tensor:
        return torch.from_numpy(self.rng.permutation(n) if self.mixing else np.arange(n))

    def add(self, rows_ND: np.ndarray) -> Iterator[torch.Tensor]:
        k = len(rows_ND)
        self._reserve(self.threshold + k)
        self.buf[self.n : self.n + k] = torch.from_numpy(rows_ND)
        self.n += k
        if self.n < self.threshold:
            return
        perm = self._order(self.n)
        keep = min(self.n // 2, self.buffer_size // 2)
        out_n = (self.n - keep) // self.batch_size * self.batch_size
        for s in range(0, out_n, self.batch_size):
            yield self._batch(perm[s : s + self.batch_size])
        kept = perm[out_n:]
        torch.index_select(self.buf, 0, kept, out=self.spare[: kept.numel()])
        self.buf, self.spare = self.spare, self.buf
        self.n = kept.numel()

    def flush(self) -> Iterator[torch.Tensor]:
        if self.n:
            perm = self._order(self.n)
            for s in range(0, self.n, self.batch_size):
                yield self._batch(perm[s : s + self.batch_size])
            self.n = 0


DEVICE_MEMORY_FRACTION = 0.5
"""A layer's tokens go onto the device only if they take at most this fraction of its free memory."""


def free_memory(device: torch.device) -> int:
    """Free bytes on ``device``: CUDA's ``mem_get_info``, else available host memory (psutil)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def fits_on_device(n_bytes: int, device: torch.device) -> bool:
    """The size rule: ``n_bytes <= DEVICE_MEMORY_FRACTION × free_memory(device)``."""
    return n_bytes <= DEVICE_MEMORY_FRACTION * free_memory(device)


def load_tokens(reader: CacheReader, layer: int, tok_T: np.ndarray, *, device: torch.device,
                workers: int = 2) -> torch.Tensor:
    """Every valid image's ``tok_T`` tokens of ``layer`` as one ``[N, D]`` tensor (stored dtype) on
    ``device``, in store order (image-major, then token); chunks decoded ``workers`` at a time."""
    n = int(reader.valid.sum()) * tok_T.size
    dtype = torch.from_numpy(np.zeros(0, ChunkDecoder(reader).dtype)).dtype
    out = torch.empty((n, reader.d_model), dtype=dtype, device=device)
    at = 0
    for rows_ND in chunk_rows(reader, layer, chunk_order(reader, shuffle=False, seed=0), tok_T, workers=workers):
        out[at : at + len(rows_ND)].copy_(torch.from_numpy(rows_ND), non_blocking=False)
        at += len(rows_ND)
    return out


def resident_batches(tokens_ND: torch.Tensor, *, n_tokens: int, batch_size: int, seed: int,
                     out_dtype: torch.dtype = torch.float32) -> Iterator[torch.Tensor]:
    """``[batch, D]`` batches (``out_dtype``, on the tokens' device) for ``n_tokens`` tokens.

    Pass p is the permutation ``torch.randperm(N)`` of a CPU generator seeded ``seed + p``;
    passes are concatenated, so only the very last batch may be short.
    """
    N = tokens_ND.shape[0]
    if N == 0:
        return
    pending = torch.zeros(0, dtype=torch.int64)
    emitted, p = 0, 0
    while emitted < n_tokens:
        pending = torch.cat([pending, torch.randperm(N, generator=torch.Generator().manual_seed(seed + p))])
        p += 1
        while emitted < n_tokens and len(pending) >= min(batch_size, n_tokens - emitted):
            take, pending = pending[: min(batch_size, n_tokens - emitted)], pending[batch_size:]
            yield tokens_ND.index_select(0, take.to(tokens_ND.device)).to(out_dtype)
            emitted += take.numel()
