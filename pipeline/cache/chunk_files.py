"""Chunk files of a store's arrays, read and written without zarr's codec pipeline.

Dimension key: c images a chunk, B images written, T tokens, D width.

zarr hands every chunk through its event loop, copies it into fresh buffers on the way (the
bytes codec, then the checksum codec concatenates) and runs the codecs on its own thread pool.
For a store's whole-chunk reads and writes (regular chunks of ``c`` images, one file per chunk
in a local folder) that overhead is as large as the codec itself, in both directions:

- :class:`pipeline.cache.stream.ChunkDecoder` reads ``acts`` chunk files itself (~2.7x a zarr
  read; it recognises the layout with :func:`acts_format`);
- :func:`write_whole_chunks` writes the chunks of every per-image array that
  :func:`pipeline.cache.store.write_chunk` fills (``benchmarks/bench_saev_import.py
  --zarr-writes`` prints the import rate both ways).

Both recognise the layout from the array's own metadata (:func:`chunk_format`); anything else
(sharded arrays, string arrays, another codec chain, a foreign byte order) is left to zarr.

What :func:`write_whole_chunks` writes is what zarr writes, byte for byte
(``tests/test_chunk_files.py`` compares the files): each chunk is the array's bytes, coded by the
library zarr calls (``numcodecs``' Blosc with the codec's own ``cname``, ``clevel``, ``shuffle``,
``blocksize`` and ``typesize``) or left raw, padded with the fill value past the array's last
image, then its CRC32C (4 bytes, little-endian), at the path zarr's chunk-key encoding gives. Like zarr's
local store (3.1.6) it writes each file atomically (a temp file beside it, then a rename): a
kill mid-write leaves the old chunk file or none, and at most a stray ``*.partial`` temp file,
as zarr does; the chunk stays not ``done`` (written after every other array) and the resume
rewrites it.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google_crc32c
import numcodecs.blosc as blosc
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec

CRC_BYTES = 4  # zarr's crc32c codec: a uint32 after the chunk's bytes

# zarr's BloscShuffle names -> Blosc's shuffle numbers (numcodecs.blosc.NOSHUFFLE, SHUFFLE, BITSHUFFLE)
_SHUFFLE = {"noshuffle": blosc.NOSHUFFLE, "shuffle": blosc.SHUFFLE, "bitshuffle": blosc.BITSHUFFLE}


@dataclass(frozen=True)
class ChunkFormat:
    """How an array's chunks are laid out in its files (from its ``zarr.json``).

    ``kind``: ``blosc`` (bytes + Blosc), ``raw`` (bytes only) or None (anything else, or bytes
    in a foreign byte order: zarr reads and writes it); ``crc``: each chunk ends with its
    CRC32C; ``shard_images``: images a shard file (0: one file per chunk); ``codec``: the Blosc
    codec of a ``blosc`` array.
    """

    kind: str | None
    crc: bool
    shard_images: int
    chunk_shape: tuple[int, ...]
    dtype: np.dtype
    codec: BloscCodec | None

    @property
    def chunk_elements(self) -> int:
        return int(np.prod(self.chunk_shape))


def chunk_format(array: zarr.Array) -> ChunkFormat:
    """The chunk layout of ``array`` (see :class:`ChunkFormat`)."""
    meta = array.metadata
    codecs: tuple[Any, ...] = tuple(getattr(meta, "codecs", ()))
    shard_images = 0
    first: Any = codecs[0] if codecs else None  # (zarr's metadata type does not list the sharding codec)
    if len(codecs) == 1 and isinstance(first, ShardingCodec):
        index_crc = [type(c) for c in first.index_codecs][-1:] == [Crc32cCodec]
        at_end = getattr(first.index_location, "value", first.index_location) == "end"
        shard_images = int(array.shards[0]) if array.shards and index_crc and at_end else 0
        codecs = tuple(first.codecs) if shard_images else ()
    crc = bool(codecs) and isinstance(codecs[-1], Crc32cCodec)
    codecs = codecs[:-1] if crc else codecs
    native = (
        bool(codecs)
        and isinstance(codecs[0], BytesCodec)
        and (codecs[0].endian is None or codecs[0].endian.value == sys.byteorder)
    )
    kind = None
    if native and len(codecs) == 2 and isinstance(codecs[1], BloscCodec):
        kind = "blosc"
    elif native and len(codecs) == 1:
        kind = "raw"
    codec = next((c for c in codecs if isinstance(c, BloscCodec)), None) if kind == "blosc" else None
    return ChunkFormat(kind, crc, shard_images, tuple(int(x) for x in array.chunks), np.dtype(array.dtype), codec)


def acts_format(acts: zarr.Array, n_tokens: int, d_model: int) -> ChunkFormat:
    """:func:`chunk_format` of an ``acts`` array, whose chunk files are read directly only in
    the layout ``(c, 1, n_tokens, d_model)`` (``kind`` None otherwise)."""
    fmt = chunk_format(acts)
    if fmt.chunk_shape[1:] != (1, n_tokens, d_model):
        return dataclasses.replace(fmt, kind=None)
    return fmt


def write_whole_chunks(
    array: zarr.Array, folder: Path, fmt: ChunkFormat, start: int, values: np.ndarray, *, write_empty: bool
) -> bool:
    """Write ``values`` as ``array[start:start + B]`` straight to its chunk files under
    ``folder`` (the array's folder); False (nothing written) where zarr must write it: a
    sharded or other layout, a ``start`` off a chunk boundary, a write that ends inside a
    chunk before the array's last image, or values of another shape. ``values`` of another
    dtype are cast as zarr casts them (``astype``).

    ``write_empty`` is zarr's ``write_empty_chunks``: when False, a chunk holding only the
    fill value is not written, and a file left from an earlier write is deleted (zarr's
    default: an unwritten chunk reads as the fill value)."""
    c = fmt.chunk_shape[0]
    shape = tuple(int(x) for x in array.shape)
    stop = start + values.shape[0]
    if fmt.kind is None or fmt.shard_images or start % c or (stop % c and stop != shape[0]) or stop > shape[0]:
        return False
    inner = fmt.chunk_shape[1:]  # the chunks across the other axes must tile them exactly
    if values.shape[1:] != shape[1:] or any(n % k for n, k in zip(shape[1:], inner, strict=True)):
        return False
    values = values.astype(fmt.dtype, copy=False)
    meta: Any = array.metadata
    fill = np.asarray(meta.fill_value, dtype=fmt.dtype)
    for s in range(start, stop, c):
        for index in itertools.product(*(range(n // k) for n, k in zip(shape[1:], inner, strict=True))):
            where = tuple(slice(i * k, (i + 1) * k) for i, k in zip(index, inner, strict=True))
            chunk = np.ascontiguousarray(values[(slice(s - start, s - start + c), *where)])
            if chunk.shape[0] < c:  # the array's last chunk: zarr stores it whole, padded with the fill value
                chunk = np.concatenate([chunk, np.full((c - chunk.shape[0], *chunk.shape[1:]), fill)])
            path = folder / meta.encode_chunk_key((s // c, *index))
            if not write_empty and _all_fill(chunk, fill):
                path.unlink(missing_ok=True)
            else:
                _write_file(path, _encode(fmt, chunk), fmt.crc)
    return True


def _all_fill(chunk: np.ndarray, fill: np.ndarray) -> bool:
    """Whether every value of ``chunk`` is ``fill`` (NaN equal to NaN, as zarr compares)."""
    if fill.dtype.kind in "fc" and np.isnan(fill):
        return bool(np.isnan(chunk).all())
    return bool((chunk == fill).all())


def _encode(fmt: ChunkFormat, chunk: np.ndarray) -> Any:
    """The chunk's bytes as the array's codecs (before the checksum) code them."""
    if fmt.codec is None:
        return chunk.reshape(-1).view(np.uint8)
    codec = fmt.codec
    assert codec.shuffle is not None  # set in every stored array's metadata
    typesize = codec.typesize or chunk.dtype.itemsize
    # releases the GIL, single-threaded off the main thread: writer threads encode side by side
    return blosc.compress(
        chunk, codec.cname.value.encode(), codec.clevel, _SHUFFLE[codec.shuffle.value], codec.blocksize, typesize
    )


def _write_file(path: Path, data: Any, crc: bool) -> None:
    """``data`` and (``crc``) its CRC32C, little-endian, as the file at ``path`` (folders made),
    atomically as zarr's local store writes: into ``<name>.<random hex>.partial`` beside it,
    then renamed over it, so a kill mid-write leaves the old file or none, never a short one."""
    tmp = path.with_suffix(f".{uuid.uuid4().hex}.partial")  # zarr's temp name (storage/_local.py)
    try:
        fd = open(tmp, "wb")  # noqa: SIM115 (closed below; one open for the common case)
    except FileNotFoundError:
        os.makedirs(path.parent, exist_ok=True)
        fd = open(tmp, "wb")  # noqa: SIM115
    try:
        with fd:
            fd.write(data)
            if crc:
                fd.write(google_crc32c.value(data).to_bytes(CRC_BYTES, "little"))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
