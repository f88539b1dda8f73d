"""Chunk checksums: every read of a store's chunk is checked, and ``verify`` checks them all.

A store made since checksums exist carries zarr v3's ``crc32c`` codec last in every array's
codec chain: each chunk file ends with the CRC32C (little-endian uint32) of the bytes before
it. zarr checks it on decode, but its error names no file; so every reader opens a store
through :class:`VerifyingStore`, which checks each chunk it hands to zarr and raises
:class:`~pipeline.cache.store.ChunkCorruptError` naming the store, the array, the chunk index
and the images it holds. The training streams read chunk files themselves
(:class:`pipeline.cache.stream.ChunkDecoder`) and check them with :func:`check_chunk_bytes`.
A short chunk (fewer bytes than its CRC) and, in a finalized store, a missing ``acts`` chunk
are corrupt too.

A sharded array (``extract.shard_images``) keeps the CRC32C per chunk, inside its shard file:
each chunk of a shard ends with its own CRC32C, and so does the shard's index (zarr's default
``index_codecs``), so every piece zarr reads out of a shard (the index, or one chunk by byte
range) is checked the same way, and ``verify`` walks each shard's index and checks each chunk
(:func:`shard_problem`).

Stores made before checksums have none: they open and read as before (a log line says so),
and a flipped bit there is not detected; :func:`scan` still finds chunks that fail to decode.

Reads chunk files and ``zarr.json`` metadata; writes nothing (``mark_not_done`` writes ``done``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import zarr
from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import LocalStore, WrapperStore

from pipeline.cache.chunk_files import CRC_BYTES
from pipeline.cache.store import ChunkCorruptError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArrayInfo:
    """What the checks need to know of one array of a store (from its ``zarr.json``)."""

    name: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]  # the chunk grid: of shards when ``inner`` is set
    checksummed: bool  # crc32c is the last codec (of the shard's chunks when sharded)
    per_image: bool  # a data array along ``image`` (written chunk by chunk by the extraction; not the coordinate)
    inner: tuple[int, ...] | None = None  # the chunk shape inside each shard file; None: not sharded

    @property
    def chunks_per_shard(self) -> int:
        """Chunks in one shard file (its index's entries); 1 when not sharded."""
        return int(np.prod([s // c for s, c in zip(self.chunks, self.inner)])) if self.inner else 1

    def images(self, index: tuple[int, ...]) -> tuple[int, int] | None:
        """The [start, stop) images chunk ``index`` holds (None for an array not along images)."""
        if not self.per_image or not self.shape:
            return None
        start = index[0] * self.chunks[0]
        return start, min(start + self.chunks[0], self.shape[0])

    def chunk_indices(self) -> list[tuple[int, ...]]:
        counts = [max(1, -(-n // c)) for n, c in zip(self.shape, self.chunks)] or [1]
        return [tuple(int(v) for v in ix) for ix in np.ndindex(*counts)]

    def chunk_key(self, index: tuple[int, ...]) -> str:
        return f"{self.name}/c/" + "/".join(str(i) for i in index) if index else f"{self.name}/c"


def array_info(store: Path, name: str) -> ArrayInfo | None:
    """The array ``name`` of ``store`` as :class:`ArrayInfo`, or None if it is not an array."""
    meta_path = Path(store) / name / "zarr.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    if meta.get("node_type") != "array":
        return None
    codecs = meta.get("codecs", [])
    inner = None
    if len(codecs) == 1 and codecs[0].get("name") == "sharding_indexed":
        config = codecs[0]["configuration"]
        inner = tuple(config["chunk_shape"])
        index_crc = [c.get("name") for c in config.get("index_codecs", [])][-1:] == ["crc32c"]
        codecs = config.get("codecs", []) if index_crc and config.get("index_location", "end") == "end" else []
    return ArrayInfo(
        name=name,
        shape=tuple(meta["shape"]),
        chunks=tuple(meta["chunk_grid"]["configuration"]["chunk_shape"]),
        checksummed=bool(codecs) and codecs[-1].get("name") == "crc32c",
        per_image=(meta.get("dimension_names") or [None])[0] == "image" and name != "image",
        inner=inner,
    )


def crc_ok(data: Any) -> bool:
    """Whether ``data`` (bytes-like: a chunk file's bytes) ends with the CRC32C of what precedes it."""
    view = data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
    view = view.reshape(-1).view(np.uint8)
    if view.size < CRC_BYTES:
        return False
    stored = int.from_bytes(view[-CRC_BYTES:].tobytes(), "little")
    return google_crc32c.value(view[:-CRC_BYTES]) == stored


_EMPTY = 2**64 - 1  # a shard index entry (offset, length) of a chunk never written


def shard_problem(info: ArrayInfo, data: Any) -> str | None:
    """What is wrong with the bytes of one whole shard file of array ``info`` (None: nothing).

    The file is the shard's chunks, then its index (``chunks_per_shard`` little-endian uint64
    (offset, length) pairs) and the index's CRC32C; every chunk the index lists must lie inside
    the file and end with its own CRC32C.
    """
    view = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    n_index = 16 * info.chunks_per_shard + CRC_BYTES
    if view.size < n_index:
        return f"only {view.size} bytes, shorter than its index ({n_index} bytes)"
    if not crc_ok(view[-n_index:]):
        return "its index's CRC32C does not match"
    entries = view[-n_index:-CRC_BYTES].view("<u8").reshape(-1, 2)
    for k, (offset, length) in enumerate(entries.tolist()):
        if offset == _EMPTY and length == _EMPTY:
            continue
        if offset + length > view.size - n_index:
            return f"chunk {k} of the shard lies past the end of the file"
        if not crc_ok(view[offset : offset + length]):
            return f"chunk {k} of the shard: its CRC32C does not match its bytes"
    return None


def check_chunk_bytes(store: Path, info: ArrayInfo, index: tuple[int, ...], data: Any) -> None:
    """Raise ChunkCorruptError unless ``data`` (chunk ``index`` of array ``info``) has a matching CRC.

    For a sharded array, ``data`` is a whole shard file (see :func:`shard_problem`)."""
    if info.checksummed and info.inner is not None:
        why = shard_problem(info, data)
        if why is not None:
            raise corrupt(store, info, index, why)
        return
    if info.checksummed and not crc_ok(data):
        n = len(memoryview(data).cast("B")) if not isinstance(data, np.ndarray) else data.nbytes
        why = f"only {n} bytes" if n < CRC_BYTES else "its CRC32C does not match its bytes"
        raise corrupt(store, info, index, why)


def corrupt(store: Path, info: ArrayInfo, index: tuple[int, ...], why: str) -> ChunkCorruptError:
    """The error for chunk ``index`` of ``info``: store, array, chunk index and the images it holds."""
    images = info.images(index)
    held = f"images {images[0]}..{images[1] - 1}" if images else "no per-image rows"
    what = "shard" if info.inner is not None else "chunk"
    return ChunkCorruptError(
        f"{store}: array {info.name!r} {what} {'.'.join(map(str, index))} ({held}) is corrupt: {why}; "
        f"`python -m pipeline verify {store}` lists every bad chunk, and with --mark-not-done "
        "lets a re-run re-extract just those images"
    )


@dataclass
class _Known:
    """Per store: the arrays seen so far and whether it is finalized (read once)."""

    arrays: dict[str, ArrayInfo | None] = field(default_factory=dict)
    complete: bool | None = None


class VerifyingStore(WrapperStore[LocalStore]):
    """A local zarr store whose chunk reads are checked (CRC32C; a short chunk; a missing ``acts``
    chunk of a finalized store), raising ChunkCorruptError that names the chunk."""

    def __init__(self, store: LocalStore) -> None:
        super().__init__(store)
        self._known = _Known()

    @property
    def path(self) -> Path:
        return Path(self._store.root)

    def _info(self, name: str) -> ArrayInfo | None:
        if name not in self._known.arrays:
            self._known.arrays[name] = array_info(self.path, name)
        return self._known.arrays[name]

    def _complete(self) -> bool:
        if self._known.complete is None:
            try:
                attrs = json.loads((self.path / "zarr.json").read_text()).get("attributes", {})
            except (FileNotFoundError, ValueError):
                attrs = {}
            self._known.complete = bool(attrs.get("complete", False))
        return self._known.complete

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        value = await self._store.get(key, prototype, byte_range)
        name, sep, rest = key.partition("/c/")
        if not sep:
            return value
        info = self._info(name)
        if info is None or (byte_range is not None and info.inner is None):
            return value
        index = tuple(int(i) for i in rest.split("/"))
        if value is None:
            if name == "acts" and self._complete():  # acts chunks are always written (write_empty_chunks)
                raise corrupt(self.path, info, index, "its chunk file is missing")
            return value
        if byte_range is not None:  # a piece of a shard: its index or one of its chunks, each ending with its CRC32C
            if info.checksummed and not crc_ok(value.as_numpy_array()):
                raise corrupt(self.path, info, index, "a chunk (or the index) in its shard fails its CRC32C")
            return value
        check_chunk_bytes(self.path, info, index, value.as_numpy_array())
        return value


def verifying_store(path: Path, *, read_only: bool) -> VerifyingStore:
    return VerifyingStore(LocalStore(Path(path), read_only=read_only))


def has_checksums(path: Path) -> bool:
    """Whether the store's ``acts`` array carries chunk checksums (stores made before them do not)."""
    info = array_info(Path(path), "acts")
    return bool(info and info.checksummed)


# ---------------------------------------------------------------------------- verify


@dataclass
class BadChunk:
    array: str
    index: tuple[int, ...]
    images: tuple[int, int] | None
    why: str


@dataclass
class ScanResult:
    store: Path
    checksummed: bool
    n_chunks: int = 0
    bad: list[BadChunk] = field(default_factory=list)

    @property
    def bad_images(self) -> np.ndarray:
        """Indices of the images some corrupt chunk holds (sorted, unique)."""
        ranges = [np.arange(*b.images) for b in self.bad if b.images is not None]
        return np.unique(np.concatenate(ranges)) if ranges else np.zeros(0, dtype=np.int64)

    def summary(self) -> dict:
        return {
            "store": str(self.store),
            "checksums": self.checksummed,
            "chunks_checked": self.n_chunks,
            "ok": not self.bad,
            "corrupt_chunks": [
                {"array": b.array, "chunk": ".".join(map(str, b.index)), "images": b.images, "why": b.why}
                for b in self.bad
            ],
            "corrupt_images": [int(i) for i in self.bad_images],
        }


def scan(path: Path) -> ScanResult:
    """Check every chunk of every array of the store at ``path``.

    Checksummed arrays: each chunk file's CRC (no decode). Arrays without checksums (older
    stores): each chunk is decoded through zarr, which finds truncated or undecodable chunks
    but not flipped bits. A missing ``acts`` chunk of a done image is corrupt either way.
    """
    path = Path(path)
    group = zarr.open_group(LocalStore(path, read_only=True), mode="r", zarr_format=3)
    try:
        done = np.asarray(_array(group, "done")[:]) if "done" in group else None
    except Exception:  # noqa: BLE001 - a corrupt ``done`` chunk: reported below with the others
        done = None
    result = ScanResult(path, has_checksums(path))
    for name in sorted(k for k, v in group.arrays()):
        info = array_info(path, name)
        if info is None:
            continue
        array = _array(group, name)
        for index in info.chunk_indices():
            result.n_chunks += 1
            file = path / info.chunk_key(index)
            images = info.images(index)
            if not file.is_file():
                done_here = done is None or images is None or done[slice(*images)].any()
                if name == "acts" and images is not None and done_here:
                    result.bad.append(BadChunk(name, index, images, "chunk file missing"))
                continue
            if info.checksummed and info.inner is not None:
                why = shard_problem(info, file.read_bytes())
                if why is not None:
                    result.bad.append(BadChunk(name, index, images, f"shard: {why}"))
                continue
            if info.checksummed:
                if not crc_ok(file.read_bytes()):
                    result.bad.append(BadChunk(name, index, images, "CRC32C mismatch or short file"))
                continue
            sel = tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, info.chunks))
            try:
                array[sel]
            except Exception as err:  # noqa: BLE001 - any decode failure means the chunk is bad
                result.bad.append(BadChunk(name, index, images, f"cannot decode ({type(err).__name__}: {err})"))
    return result


def _array(group: zarr.Group, name: str) -> zarr.Array:
    array = group[name]
    assert isinstance(array, zarr.Array)  # a store's arrays are arrays, never groups
    return array


def mark_not_done(path: Path, result: ScanResult) -> list[int]:
    """Mark every image of each corrupt per-image chunk not done (whole ``done`` chunks are
    rewritten, so a corrupt ``done`` chunk is replaced too) and the store not complete, so the
    extraction's next run recomputes just those chunks. Returns the images marked.

    Raises ChunkCorruptError when a corrupt chunk holds no images (a coordinate array): a
    re-run cannot rebuild it, only a new extraction.
    """
    fixed = [b for b in result.bad if b.images is None]
    if fixed:
        b = fixed[0]
        raise ChunkCorruptError(
            f"{path}: array {b.array!r} chunk {'.'.join(map(str, b.index))} is corrupt and holds no per-image "
            "rows, so re-extracting images cannot repair it: delete the store and extract it again"
        )
    group = zarr.open_group(LocalStore(Path(path)), mode="r+", zarr_format=3)
    done = _array(group, "done")
    c = done.chunks[0]
    images = result.bad_images
    for start in sorted({int(i) // c * c for i in images}):
        stop = min(start + c, done.shape[0])
        done[start:stop] = False  # the whole chunk: a rerun re-extracts whole chunks anyway
    group.attrs.update({"complete": False})
    marked = sorted({i for s in {int(i) // c * c for i in images} for i in range(s, min(s + c, done.shape[0]))})
    log.info("%s: %d images marked not done (chunks with a corrupt array)", path, len(marked))
    return marked
