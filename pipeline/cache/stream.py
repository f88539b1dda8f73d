"""Token streams from a store, for training: flattened rows, shuffled without random row reads.

Dimension key: B images in a chunk, T tokens read per image, D width, N rows.

Random single-row reads from a compressed zarr store are slow (each decodes a
whole chunk), so shuffling is two-level: chunks are visited in a seeded random
order (``CacheReader.iter_chunks(shuffle=True)``) and rows are mixed across
several chunks: in a bounded shuffle buffer (:func:`shuffle_buffer`, the probes),
or, for SAE training, by permuting groups of decoded chunks and gathering each
batch straight from them (:func:`group_batches`). Everything is seeded: the same
seed and epoch give the same batches.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import itertools
import math
import mmap
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import psutil
import torch
import zarr
from numcodecs import blosc

from pipeline.cache.checksums import CRC_BYTES, array_info, check_chunk_bytes, corrupt, crc_ok
from pipeline.cache.chunk_files import acts_format
from pipeline.cache.reader import CacheReader
from pipeline.cache.store import CacheError

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
    """Whole ``acts`` chunks read straight from their files: Blosc-decoded, or mapped when uncompressed.

    zarr's codec pipeline hands each chunk through its event loop and copies it into a fresh
    output array; on this store layout (regular chunks ``(c, 1, T, D)``, one file per chunk in a
    local folder) that measured ~2.7× slower than a Blosc decode of the same bytes into a reused
    buffer, so training streams read the files themselves. Two layouts are read directly:

    - ``blosc`` (``extract.compression: lz4``, codecs bytes + Blosc): ``numcodecs.blosc.decompress``
      into a caller's buffer; it releases the GIL, so several chunks decode at once on threads.
    - ``raw`` (``extract.compression: none``, codec bytes only, then the checksum): the chunk
      file *is* the array (followed by its 4-byte CRC32C on a store made since checksums),
      so :meth:`mapped` returns a read-only view of the file mapped into memory, with no copy
      and no decode; a batch gathers its rows straight out of the page cache.

    In a sharded store (``extract.shard_images``) each chunk is a byte range of its shard file,
    found through the shard's index (whose CRC32C is checked first), and read the same two ways.

    Any other layout (or a missing or short chunk file) falls back to ``CacheReader.read``,
    which gives the same values (tested) or raises ``ChunkCorruptError``. On a store with chunk
    checksums (codec ``crc32c`` last: each file ends with a 4-byte CRC32C), both paths check the
    file's CRC before using it (the mapped path over the mapping, so no copy either) and raise
    ``ChunkCorruptError`` naming the chunk on a mismatch: never wrong numbers.
    """

    def __init__(self, reader: CacheReader) -> None:
        self.reader = reader
        acts = reader.group["acts"]
        if not isinstance(acts, zarr.Array):
            raise TypeError(f"{reader.path}: acts is not an array")
        meta = acts.metadata
        fmt = acts_format(acts, reader.n_tokens, reader.d_model)
        self.shard_images = fmt.shard_images  # images per shard file; 0: one file per chunk
        self.crc = fmt.crc  # each chunk ends with its CRC32C
        self.chunk_shape = fmt.chunk_shape
        self.dtype = fmt.dtype
        self.direct = fmt.kind == "blosc"
        self.raw = fmt.kind == "raw"
        self.chunk_elements = int(np.prod(self.chunk_shape))
        self._meta = meta
        self._root = reader.path / "acts"
        self._info = array_info(reader.path, "acts")

    def _check(self, layer: int, start: int, data: np.ndarray) -> None:
        """Raise ChunkCorruptError unless the chunk's bytes ``data`` end with their CRC32C."""
        if self.crc and self._info is not None:
            index = (start // (self.shard_images or self.chunk_shape[0]), self.reader.layer_index(layer), 0, 0)
            if self.shard_images and not crc_ok(data):
                raise corrupt(self.reader.path, self._info, index, "a chunk in its shard fails its CRC32C")
            if not self.shard_images:
                check_chunk_bytes(self.reader.path, self._info, index, data)

    def _file(self, layer: int, start: int) -> Path | None:
        c = self.chunk_shape[0]
        if start % c:
            return None
        outer = start // (self.shard_images or c)
        path = self._root / self._meta.encode_chunk_key((outer, self.reader.layer_index(layer), 0, 0))
        return path if path.is_file() else None

    def _piece(self, layer: int, start: int) -> tuple[Path, int, int] | None:
        """(file, byte offset, byte length) of the chunk at ``start``: the whole chunk file, or its
        range in its shard file (from the shard's index, checked against its CRC32C first); None
        where the file is missing or the shard lists no such chunk."""
        path = self._file(layer, start)
        if path is None:
            return None
        size = path.stat().st_size
        if not self.shard_images:
            return path, 0, size
        n_inner = self.shard_images // self.chunk_shape[0]
        n_index = 16 * n_inner + CRC_BYTES
        if size < n_index:
            return None  # CacheReader.read names it
        with open(path, "rb") as f:
            f.seek(size - n_index)
            index = np.frombuffer(f.read(n_index), dtype=np.uint8)
        shard = (start // self.shard_images, self.reader.layer_index(layer), 0, 0)
        if not crc_ok(index) and self._info is not None:
            raise corrupt(self.reader.path, self._info, shard, "its index's CRC32C does not match")
        offset, length = (
            int(v)
            for v in index[:-CRC_BYTES].view("<u8")[2 * ((start % self.shard_images) // self.chunk_shape[0]) :][:2]
        )
        if offset + length > size - n_index:
            return None  # an empty entry (2**64 - 1) or a range past the chunks: CacheReader.read decides
        return path, offset, length

    def mapped(self, layer: int, start: int) -> np.ndarray | None:
        """The chunk at ``start`` of an uncompressed store as a read-only ``[c·T, D]`` view of its
        mapped file (rows image-major, then token), or None where the store is not ``raw`` or
        the file is missing or short. The view keeps the mapping alive; the kernel is asked to
        read the file ahead (``MADV_WILLNEED``), so a cold page cache fills while earlier rows
        are gathered."""
        piece = self._piece(layer, start) if self.raw else None
        n_bytes = self.chunk_elements * self.dtype.itemsize
        n_file = n_bytes + (CRC_BYTES if self.crc else 0)
        if piece is None or piece[2] != n_file:
            return None  # CacheReader.read: the same values, or ChunkCorruptError for a short file
        path, offset, _ = piece
        with open(path, "rb") as f:
            m = mmap.mmap(f.fileno(), offset + n_file, access=mmap.ACCESS_READ)
        if hasattr(mmap, "MADV_WILLNEED"):  # Linux, macOS
            m.madvise(mmap.MADV_WILLNEED)
        self._check(layer, start, np.frombuffer(m, dtype=np.uint8, count=n_file, offset=offset))
        rows = np.frombuffer(m, dtype=self.dtype, count=self.chunk_elements, offset=offset)
        return rows.reshape(-1, self.chunk_shape[-1])

    def read(self, layer: int, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """``acts[start:stop, layer]`` as stored (``[B, T, D]``); ``start`` on a chunk boundary.

        ``out`` (flat, at least ``chunk_elements``): a reusable buffer for the Blosc path, so a
        chunk read allocates nothing (fresh multi-MB arrays cost a page fault per 4 KiB on first
        touch). The compressed bytes are decoded from a read-only ``mmap`` of the chunk file: no
        copy of them into the process (measured ~1.5× faster than ``read`` + decode here). On a
        ``raw`` store the result is the mapped file itself (``out`` unused).
        """
        c = self.chunk_shape[0]
        rows = self.mapped(layer, start)
        if rows is not None:
            return rows.reshape(c, *self.chunk_shape[2:])[: stop - start]
        piece = self._piece(layer, start) if self.direct else None
        if piece is not None:
            path, offset, length = piece
            n = self.chunk_elements
            if out is None or out.size < n or out.dtype != self.dtype:
                out = np.empty(n, dtype=self.dtype)
            failure = None  # raised after the mapping is closed (a live view would block closing it)
            with (
                open(path, "rb") as f,
                mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m,
                memoryview(m) as whole,
                whole[offset : offset + length] as data,
            ):
                if self.crc and not crc_ok(np.frombuffer(data, dtype=np.uint8)):
                    failure = "its CRC32C does not match its bytes"
                else:
                    with data[: len(data) - (CRC_BYTES if self.crc else 0)] as payload:
                        try:
                            blosc.decompress(payload, out[:n])
                        except (RuntimeError, ValueError) as err:
                            failure = f"cannot decode ({err})"
            if failure is not None:
                if self._info is None:
                    raise CacheError(f"{path}: {failure}")
                index = (start // (self.shard_images or c), self.reader.layer_index(layer), 0, 0)
                raise corrupt(self.reader.path, self._info, index, failure)
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


def chunk_order(
    reader: CacheReader, *, shuffle: bool, seed: int, images: np.ndarray | None = None
) -> list[tuple[int, int]]:
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
    reader: CacheReader,
    layer: int,
    order: Iterable[tuple[int, int]],
    tok_T: np.ndarray,
    *,
    workers: int = 2,
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
                bufs = np.empty(decoder.chunk_elements, dtype=decoder.dtype)
            return s, e, bufs, decoder.read(layer, s, e, out=bufs)

        return run

    for s, e, bufs, acts_BTD in read_ahead((task(s, e) for s, e in order), workers=workers):
        rows_B = np.flatnonzero(reader.valid[s:e])
        if contiguous:
            sel = acts_BTD[:, tok_T[0] : tok_T[0] + tok_T.size]
            yield sel if rows_B.size == e - s else sel[rows_B]
        else:
            yield acts_BTD[np.ix_(rows_B, tok_T)]
        pool.put(bufs)


CAST_ELEMENTS = 32768
"""torch's ``at::internal::GRAIN_SIZE``: an elementwise op on fewer elements runs on the calling thread."""


def group_batches(
    reader: CacheReader,
    layer: int,
    order: Iterable[tuple[int, int]],
    tok_T: np.ndarray,
    *,
    batch_size: int,
    buffer_size: int,
    seed: int,
    workers: int = 2,
    out_dtype: torch.dtype | None = None,
    pin_memory: bool = False,
) -> Iterator[torch.Tensor]:
    """Shuffled ``[batch, D]`` batches of the valid images' ``tok_T`` tokens of the chunks in ``order``.

    Seed contract: ``order`` is cut into groups of ``W = ceil(buffer_size / (chunk images × T'))``
    consecutive chunks (W = 1 when ``buffer_size <= batch_size``: no mixing). A group's rows are the
    rows carried over from the previous group (fewer than ``batch_size``), then each chunk's valid
    images' tokens (image-major, then token). ``np.random.default_rng(seed)`` permutes them (one
    ``permutation`` call per group; the identity when not mixing); the permutation is cut into
    ``batch_size`` slices, each batch holding its slice's rows in group order (sorted positions);
    what is left over is carried. Only the very last batch may be short, and every row of
    ``order`` comes out exactly once. The batches depend on ``order``, ``batch_size``,
    ``buffer_size``, the seed and the store's chunking, never on ``workers`` or on the store's
    compression (tested).

    How: a group's chunks are its *sources*, ``[c·T, D]`` row arrays made on ``workers`` threads
    while the previous group is gathered: on an uncompressed store the chunk files mapped into
    memory (:meth:`ChunkDecoder.mapped`: no copy, no decode), else chunks Blosc-decoded into one
    of two preallocated sets of ``W`` chunk buffers. The carried rows are one more source. A
    batch is one ``np.take`` per source it draws from, straight into the batch (rows are copied
    once, with no per-row Python work), on the calling thread: handing each batch over from a
    worker thread cost more than the gather itself here (thread wake-ups). Batches are fresh
    tensors of ``out_dtype`` (default: the stored dtype), pinned when ``pin_memory``; a cast runs
    as pieces of fewer than ``CAST_ELEMENTS`` elements (one ``torch._foreach_copy_`` call), which
    torch runs on the calling thread: torch's intra-op thread count is process-wide, and a gather
    or cast split across that team spent most of its time in the team's barrier on a busy
    machine (py-spy), where the consumer's own ops need the team.
    """
    decoder = ChunkDecoder(reader)
    c, t, d = decoder.chunk_shape[0], reader.n_tokens, reader.d_model
    mixing = buffer_size > batch_size
    w = max(1, math.ceil(buffer_size / (c * tok_T.size))) if mixing else 1
    slot = c * t  # rows of one chunk
    buffers = None if decoder.raw else np.empty((2, w, slot, d), dtype=decoder.dtype)
    rng = np.random.default_rng(seed)
    chunks = iter(order)
    out_dtype = torch.from_numpy(np.zeros(0, decoder.dtype)).dtype if out_dtype is None else out_dtype
    staging: list[np.ndarray] = []  # the stored-dtype rows of a batch before its cast, made on first use
    piece = max(1, (CAST_ELEMENTS - 1) // d)  # rows per cast call

    def source(k: int, j: int, s: int, e: int) -> np.ndarray:
        """Chunk ``j`` of group ``k`` (images ``s:e``) as ``[slot, D]`` rows: mapped, else decoded
        into its buffer (a fresh one for a raw store's missing chunk file)."""
        rows = decoder.mapped(layer, s)
        if rows is not None:
            return rows
        buf = buffers[k % 2, j] if buffers is not None else np.empty((slot, d), dtype=decoder.dtype)
        acts_BTD = decoder.read(layer, s, e, out=buf.reshape(-1))
        if not np.may_share_memory(acts_BTD, buf):  # CacheReader.read (another layout): copy in
            buf.reshape(-1)[: acts_BTD.size] = acts_BTD.reshape(-1)
        return buf

    def selected(s: int, e: int) -> np.ndarray:
        """Row numbers within a chunk's source of its valid images' ``tok_T`` tokens, in group order."""
        image_B = np.flatnonzero(reader.valid[s:e])
        return (image_B[:, None] * t + tok_T[None, :]).reshape(-1)

    def take(sources: list[np.ndarray], bounds: np.ndarray, local: np.ndarray, pos: np.ndarray, out: np.ndarray):
        """Rows at sorted group positions ``pos`` into ``out``: one ``np.take`` per source."""
        cut = np.searchsorted(pos, bounds)
        for j, src in enumerate(sources):
            a, b = cut[j], cut[j + 1]
            if b > a:  # mode="clip": "raise" would buffer the copy
                np.take(src, local[pos[a:b]], axis=0, out=out[a:b], mode="clip")
        return out

    def gather(sources: list[np.ndarray], bounds: np.ndarray, local: np.ndarray, pos: np.ndarray) -> torch.Tensor:
        out = torch.empty((pos.size, d), dtype=out_dtype, pin_memory=pin_memory)
        if out.numpy().dtype == decoder.dtype:
            take(sources, bounds, local, pos, out.numpy())
            return out
        if not staging:
            staging.append(np.empty((batch_size, d), dtype=decoder.dtype))
        rows_ND = torch.from_numpy(take(sources, bounds, local, pos, staging[0][: pos.size]))
        # one call for all pieces: a copy_ per piece costs a Python call and a GIL hand-off each
        torch._foreach_copy_(out.split(piece), rows_ND.split(piece))  # pyright: ignore[reportPrivateImportUsage]
        return out

    with cf.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:

        def submit(k: int) -> tuple[list[tuple[int, int]], list[cf.Future]]:
            group = list(itertools.islice(chunks, w))
            return group, [pool.submit(source, k, j, s, e) for j, (s, e) in enumerate(group)]

        carry = np.zeros((0, d), dtype=decoder.dtype)  # rows carried into group k, in group order
        k = 0
        group, pending = submit(0)
        while group:
            sources = [carry, *(f.result() for f in pending)]
            nxt, nxt_pending = submit(k + 1)  # made while this group is gathered
            picks = [selected(s, e) for s, e in group]
            local = np.concatenate([np.arange(len(carry)), *picks])  # group position → row in its source
            bounds = np.cumsum([0, len(carry), *(p.size for p in picks)])  # sources' first positions, then the end
            perm = rng.permutation(local.size) if mixing else np.arange(local.size)
            n_out = local.size if not nxt else local.size // batch_size * batch_size
            for s in range(0, n_out, batch_size):
                yield gather(sources, bounds, local, np.sort(perm[s : s + batch_size]))
            left = np.sort(perm[n_out:])
            carry = take(sources, bounds, local, left, np.empty((left.size, d), dtype=decoder.dtype))
            group, pending, k = nxt, nxt_pending, k + 1


def in_background(items: Iterator[T], *, depth: int = 2, bundle: int = 4) -> Iterator[T]:
    """Run the generator ``items`` on a thread, up to ``depth`` bundles of ``bundle`` results
    ahead; yield them in order.

    The consumer's thread then only takes finished batches. Results travel in bundles because
    each hand-over wakes the other thread, which cost about as much as gathering a 1024-row
    batch on this 2-core VM (perf: futex wake-ups and GIL hand-offs). Exceptions are re-raised
    here; closing this generator stops the thread.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def hand_over(part: list[T]) -> bool:
        while not stop.is_set():
            try:
                q.put((part, None), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        part: list[T] = []
        try:
            for item in items:
                part.append(item)
                if len(part) == bundle:
                    if not hand_over(part):
                        return
                    part = []
            if part and not hand_over(part):
                return
            q.put((done, None))
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, after what came before it
            if not part or hand_over(part):
                q.put((done, err))

    thread = threading.Thread(target=run, name="token-stream", daemon=True)
    thread.start()
    try:
        while True:
            part, err = q.get()
            if part is done:
                if err is not None:
                    raise err
                return
            yield from part
            del part  # the consumer holds only the batch it is on
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
    return int(psutil.virtual_memory().available)


def fits_on_device(n_bytes: int, device: torch.device) -> bool:
    """The size rule: ``n_bytes <= DEVICE_MEMORY_FRACTION × free_memory(device)``."""
    return n_bytes <= DEVICE_MEMORY_FRACTION * free_memory(device)


def load_tokens(
    reader: CacheReader, layer: int, tok_T: np.ndarray, *, device: torch.device, workers: int = 2
) -> torch.Tensor:
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


def resident_batches(
    tokens_ND: torch.Tensor, *, n_tokens: int, batch_size: int, seed: int, out_dtype: torch.dtype = torch.float32
) -> Iterator[torch.Tensor]:
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
