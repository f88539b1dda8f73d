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
import os
import concurrent.futures as cf
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

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

    def read(self, layer: int, start: int, stop: int, out: np.ndarray | None = None,
             raw: bytearray | None = None) -> np.ndarray:
        """``acts[start:stop, layer]`` as stored (``[B, T, D]``); ``start`` on a chunk boundary.

        ``out`` (flat, at least ``chunk_elements``) and ``raw`` (the compressed bytes): reusable
        buffers for the direct path, so a chunk read allocates nothing (fresh multi-MB arrays cost
        a page fault per 4 KiB on first touch).
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
                with open(path, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    if raw is None or len(raw) < size:
                        data = f.read()
                    else:
                        got = f.readinto(memoryview(raw)[:size])
                        data = memoryview(raw)[:got]
                blosc.decompress(data, out[:n])
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
    """``[B', T', D]`` (stored dtype) per chunk of ``order``: the valid images' ``tok_T`` tokens.

    Chunks are decoded ``workers`` at a time (several in flight) into a small pool of reused
    buffers; each item is a view that stays valid only until the next one is requested (copy
    what you keep). Flattened, the rows come image-major then token, as ``token_parts`` gives them.
    """
    decoder = ChunkDecoder(reader)
    contiguous = tok_T.size > 0 and np.array_equal(tok_T, np.arange(tok_T[0], tok_T[0] + tok_T.size))
    pool: queue.Queue = queue.Queue()
    for _ in range(workers + 3):  # > the results read_ahead can hold at once: no task waits forever
        pool.put(None)  # buffers are made on first use

    def task(s: int, e: int) -> Callable[[], tuple[int, int, Any, np.ndarray]]:
        def run() -> tuple[int, int, Any, np.ndarray]:
            bufs = pool.get()
            if bufs is None and decoder.direct:
                bufs = (np.empty(decoder.chunk_elements, dtype=decoder.dtype),
                        bytearray(decoder.chunk_elements * decoder.dtype.itemsize + 4096))
            out, raw = bufs if bufs is not None else (None, None)
            return s, e, bufs, decoder.read(layer, s, e, out=out, raw=raw)

        return run

    for s, e, bufs, acts_BTD in read_ahead((task(s, e) for s, e in order), workers=workers):
        rows_B = np.flatnonzero(reader.valid[s:e])
        if contiguous:
            sel = acts_BTD[:, tok_T[0]:tok_T[0] + tok_T.size]
            yield sel if rows_B.size == e - s else sel[rows_B]
        else:
            yield acts_BTD[np.ix_(rows_B, tok_T)]
        pool.put(bufs)


class RowShuffler:
    """``shuffle_buffer`` for one row array, in a preallocated buffer of the stored dtype: the same
    batches in the same order for the same seed (the same generator calls on the same row order),
    without re-concatenating the held rows for every part. Rows are gathered with ``np.take`` and
    handed over as torch tensors of ``out_dtype`` (pinned when ``pin_memory``).
    """

    def __init__(self, *, d: int, dtype: np.dtype, batch_size: int, buffer_size: int, seed: int,
                 out_dtype: torch.dtype = torch.float32, pin_memory: bool = False) -> None:
        self.rng = np.random.default_rng(seed)
        self.mixing = buffer_size > batch_size
        self.threshold = max(buffer_size, batch_size)
        self.batch_size, self.buffer_size = batch_size, buffer_size
        self.out_dtype, self.pin = out_dtype, pin_memory
        self.buf = np.empty((0, d), dtype=dtype)
        self.spare = self.buf
        self.n = 0

    def _reserve(self, rows: int) -> None:
        if rows > len(self.buf):
            grown = np.empty((rows, self.buf.shape[1]), dtype=self.buf.dtype)
            grown[: self.n] = self.buf[: self.n]
            self.buf, self.spare = grown, np.empty_like(grown)

    def _batch(self, idx: np.ndarray) -> torch.Tensor:
        rows = torch.from_numpy(np.take(self.buf, idx, axis=0))
        if rows.dtype == self.out_dtype and not self.pin:
            return rows
        out = torch.empty(rows.shape, dtype=self.out_dtype, pin_memory=self.pin)
        return out.copy_(rows)

    def _order(self, n: int) -> np.ndarray:
        return self.rng.permutation(n) if self.mixing else np.arange(n)

    def add(self, rows: np.ndarray) -> Iterator[torch.Tensor]:
        """Copy ``rows`` (``[N, D]``, or ``[B, T, D]`` = B·T rows) in; yield the batches now due."""
        k = int(np.prod(rows.shape[:-1]))
        self._reserve(self.threshold + k)
        self.buf[self.n : self.n + k].reshape(rows.shape)[...] = rows
        self.n += k
        if self.n < self.threshold:
            return
        perm = self._order(self.n)
        keep = min(self.n // 2, self.buffer_size // 2)
        out_n = (self.n - keep) // self.batch_size * self.batch_size
        for s in range(0, out_n, self.batch_size):
            yield self._batch(perm[s : s + self.batch_size])
        kept = perm[out_n:]
        np.take(self.buf, kept, axis=0, out=self.spare[: kept.size], mode="clip")  # "raise" would buffer the copy
        self.buf, self.spare = self.spare, self.buf
        self.n = kept.size

    def flush(self) -> Iterator[torch.Tensor]:
        if self.n:
            perm = self._order(self.n)
            for s in range(0, self.n, self.batch_size):
                yield self._batch(perm[s : s + self.batch_size])
            self.n = 0


def in_background(items: Iterator[T], *, depth: int = 4) -> Iterator[T]:
    """Run the generator ``items`` on a thread, up to ``depth`` results ahead; yield them in order.

    The consumer's thread then only takes finished batches. (Torch operations on a helper thread
    also run on one intra-op thread, which on a busy machine is far faster than the main thread's
    team.) Exceptions are re-raised here; closing this generator stops the thread.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def run() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((done, None))
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            q.put((done, err))

    thread = threading.Thread(target=run, name="token-stream", daemon=True)
    thread.start()
    try:
        while True:
            item, err = q.get()
            if item is done:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.1)
        if hasattr(items, "close"):
            items.close()


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
    for rows in chunk_rows(reader, layer, chunk_order(reader, shuffle=False, seed=0), tok_T, workers=workers):
        k = int(np.prod(rows.shape[:-1]))
        out[at : at + k].copy_(torch.from_numpy(np.ascontiguousarray(rows).reshape(k, -1)))
        at += k
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
