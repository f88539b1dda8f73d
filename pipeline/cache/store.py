"""Create, fill and finalize an activation store (zarr v3).

One store per (model, dataset, split): ``<cache>/<model>/<dataset>/<split>.zarr``.

Dimension key: N images, L cached layers, T tokens (CLS, registers, patches
row-major), D width, P patches, H/W pixels of the cropped label mask.

Arrays (every per-image array is chunked by ``chunk_images`` along N, so a
chunk of images is one set of files and a part owns whole chunks):

- ``acts[N, L, T, D]`` float16/float32, chunk (chunk_images, 1, T, D), coded by
  ``ACTS_CODECS[compression]`` (``lz4``: Blosc lz4 + bitshuffle; ``none``: raw chunk files),
  then (every array) the checksum;
- ``done[N]`` set only after every array of that image is on disk;
- ``fingerprint[N, 4]`` uint64: what the image's files (image, then its mask) were when
  extracted: total bytes, newest mtime (ns) and BLAKE2b-128 of their bytes as two words
  (0 = not recorded: an unreadable file, or a store made before fingerprints);
- ``bad[N]`` rows whose image could not be read (``on_bad_image: skip``) and
  ``bad_reason[N]`` (why; "" for good rows), merged into attrs by ``finalize``;
- segmentation: ``patch_label[N, P]`` (0 = other/unlabelled), ``patch_purity[N, P]``,
  ``pixel_label[N, H, W]`` (the cropped mask, for pixel-level metrics);
- classification: ``label[N]`` (-1 for a bad row);
- coords: ``image`` (ids = paths relative to the dataset root), ``layer`` (block
  numbers), ``token``/``token_kind``, ``patch``/``patch_row``/``patch_col``/``patch_token``.

With ``shard_images`` (``extract.shard_images``), every per-image array is stored in zarr v3
shards of ``shard_images`` images (codec ``sharding_indexed``): one file per shard and layer
holds its ``shard_images / chunk_images`` chunks, each still coded as above and ending with its
CRC32C, followed by the shard's index (offset and length of each chunk, with its own CRC32C).
The extraction then writes, resumes and splits parts in whole shards (the write unit,
``StoreLayout.write_images``); readers read single chunks out of a shard.

Every array's chunks end with a CRC32C (zarr's ``crc32c`` codec, last in each codec chain;
``store_format`` 2): readers check it and name a corrupt chunk (``pipeline.cache.checksums``).
Stores of ``store_format`` 1 have no checksums and no ``fingerprint``; they still open.

Creation is atomic (built in a temp folder, then renamed), so concurrent parts
and a part killed mid-creation never leave a half-made store (a temp folder
left by a dead process of this host is removed by the next creation). A store
made with a different config hash is refused, never silently reused.

Every store carries a random ``generation`` id, set at creation. A writer
(``StoreWriter``) re-reads the store's ``zarr.json`` before each array it
writes and stops with ``ForeignWriterError`` when the store at its path is no
longer the one it opened (deleted, or re-created by another config): an orphan
extraction cannot write into its successor's store. No lock is involved, so
this holds on network file systems too.

``finalize`` writes the bad-image summary, consolidates the metadata, and only
then, in one atomic file replace, sets ``complete``: a kill between its writes
leaves a store that is not complete, and re-running finalize (or extract)
repairs it.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import shutil
import socket
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import dask.array as da
import numpy as np
import xarray as xr
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec
from zarr.core.sync import sync
from zarr.storage import LocalStore

from pipeline import atomic
from pipeline.cache.chunk_files import chunk_format, write_whole_chunks

STORE_FORMAT = 2  # 2: chunk checksums (crc32c) and per-image input fingerprints; 1: neither

warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
# zarr-python warns that consolidated metadata is not in the v3 spec yet; xarray reads it fine.
warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")


class CacheError(RuntimeError):
    """A store problem; the message names the store."""


class CacheMismatchError(CacheError):
    """The store on disk was made from a different configuration."""


class CacheIncompleteError(CacheError):
    """The store has images that are not done yet, or was not finalized."""


class ChunkCorruptError(CacheError):
    """A chunk file that fails its checksum, is short, missing or cannot be decoded; the message
    names the store, the array, the chunk index and the images it holds."""


class InputsChangedError(CacheMismatchError):
    """The store was extracted from other dataset files than those on disk now."""


class ForeignWriterError(CacheError):
    """The store at a writer's path is no longer the one it opened (deleted or re-created)."""


@dataclass(frozen=True)
class StoreLayout:
    """Everything that fixes a store's shape; ``acts`` is [N, L, T, D]."""

    image_ids: tuple[str, ...]
    layers: tuple[int, ...]  # non-negative block numbers, as cached
    token_kinds: tuple[str, ...]  # length T: "cls", "register", "patch"
    grid: tuple[int, int]  # patch rows, patch cols
    d_model: int
    dtype: str
    chunk_images: int
    task: str  # "segmentation" | "classification"
    mask_size: int | None = None  # H = W of pixel_label (segmentation)
    compression: str = "lz4"  # the acts array's codec, an ACTS_CODECS key (extract.compression)
    shard_images: int = 0  # images per shard file (extract.shard_images, a multiple of chunk_images); 0: no shards

    @property
    def write_images(self) -> int:
        """Images per write unit: a shard when sharded (a shard file is written whole), else a chunk."""
        return self.shard_images or self.chunk_images

    @property
    def n_images(self) -> int:
        return len(self.image_ids)

    @property
    def n_tokens(self) -> int:
        return len(self.token_kinds)

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]


def blosc() -> BloscCodec:
    # lz4 + bitshuffle: the fastest codec measured here. The ~2x smaller acts is float16 vs
    # float32, not Blosc: on a random-init model's float16 activations Blosc saves ~3 % more
    # (~0.48 vs 0.5 of the float32 bytes: benchmarks/bench_sae.py, "bytes on disk").
    return BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.bitshuffle)


# extract.compression -> the zarr compressors of the acts array (before the checksum every array
# gets, `checksummed`). "none": no compressor, so zarr writes each chunk as its raw little-endian
# bytes and their CRC32C (codecs [bytes, crc32c]), readable straight from the file; "lz4": Blosc
# (codecs [bytes, blosc, crc32c]). The config schema's enum lists the same names (kept
# there so that importing the config does not import zarr; tests/test_compression.py checks them).
ACTS_CODECS: dict[str, Callable[[], tuple]] = {
    "lz4": lambda: (blosc(),),
    "none": lambda: (),
}


def checksummed(codecs: tuple) -> tuple:
    """``codecs`` (an array's bytes-to-bytes codecs) with zarr's CRC32C appended: every chunk file
    ends with the checksum of the bytes before it (4 bytes; checked on every read)."""
    return (*codecs, Crc32cCodec())


def chunk_ranges(n_images: int, chunk_images: int) -> list[tuple[int, int]]:
    """[start, stop) image ranges of the store's chunks."""
    return [(s, min(s + chunk_images, n_images)) for s in range(0, n_images, chunk_images)]


def part_chunks(n_chunks: int, part: int, of: int) -> range:
    """The contiguous chunk indices that part ``part`` of ``of`` owns (disjoint, covering all)."""
    if not (of >= 1 and 0 <= part < of):
        raise ValueError(f"--part {part} --of {of}: need 0 <= part < of")
    bounds = np.linspace(0, n_chunks, of + 1).round().astype(int)
    return range(bounds[part], bounds[part + 1])


def _skeleton(layout: StoreLayout, attrs: dict) -> tuple[xr.Dataset, dict]:
    n, c, w = layout.n_images, layout.chunk_images, layout.write_images
    t, d, p = layout.n_tokens, layout.d_model, layout.n_patches
    rows, cols = np.divmod(np.arange(p), layout.grid[1])
    n_prefix = t - p
    data = {
        "acts": (
            ("image", "layer", "token", "dim"),
            da.zeros((n, len(layout.layers), t, d), dtype=layout.dtype, chunks=(w, 1, t, d)),
        ),
        "done": (("image",), da.zeros(n, dtype=bool, chunks=w)),
        "fingerprint": (("image", "fingerprint_field"), da.zeros((n, 4), dtype="uint64", chunks=(w, 4))),
        "bad": (("image",), da.zeros(n, dtype=bool, chunks=w)),
        "bad_reason": (("image",), np.full(n, "", dtype=object)),  # small: written at creation
    }
    enc = {
        "acts": {"chunks": (c, 1, t, d), "compressors": ACTS_CODECS[layout.compression](), "fill_value": np.nan},
        "done": {"chunks": (c,), "fill_value": False},
        "fingerprint": {"chunks": (c, 4), "fill_value": 0},
        "bad": {"chunks": (c,), "fill_value": False},
        "bad_reason": {"chunks": (c,)},
    }
    if layout.task == "segmentation":
        h = layout.mask_size
        data["patch_label"] = (("image", "patch"), da.zeros((n, p), dtype="uint16", chunks=(w, p)))
        data["patch_purity"] = (("image", "patch"), da.zeros((n, p), dtype="float16", chunks=(w, p)))
        data["pixel_label"] = (("image", "y", "x"), da.zeros((n, h, h), dtype="uint16", chunks=(w, h, h)))
        enc["patch_label"] = {"chunks": (c, p), "compressors": (blosc(),), "fill_value": 0}
        enc["patch_purity"] = {"chunks": (c, p), "compressors": (blosc(),), "fill_value": 0}
        enc["pixel_label"] = {"chunks": (c, h, h), "compressors": (blosc(),), "fill_value": 0}
    else:
        data["label"] = (("image",), da.full(n, -1, dtype="int32", chunks=w))
        enc["label"] = {"chunks": (c,), "fill_value": -1}
    coords = {
        "fingerprint_field": np.array(["bytes", "mtime_ns", "blake2b_hi", "blake2b_lo"], dtype=object),
        "image": np.array(layout.image_ids, dtype=object),
        "layer": np.array(layout.layers, dtype=np.int64),
        "token": np.arange(t),
        "token_kind": ("token", np.array(layout.token_kinds, dtype=object)),
        "patch": np.arange(p),
        "patch_row": ("patch", rows),
        "patch_col": ("patch", cols),
        "patch_token": ("patch", np.arange(p) + n_prefix),
    }
    if layout.shard_images:  # every per-image array: shards of whole write units
        for name in data:
            enc[name]["shards"] = (w, *enc[name]["chunks"][1:])
    for name in (*data, *coords):  # every array, coordinates too, carries chunk checksums
        enc.setdefault(name, {})
        enc[name]["compressors"] = checksummed(tuple(enc[name].get("compressors", ())))
    return xr.Dataset(data, coords=coords, attrs=attrs), enc


def create_or_open(path: Path, layout: StoreLayout, attrs: dict) -> zarr.Group:
    """Return the store's zarr group, creating it atomically if missing.

    ``attrs["config_hash"]`` must equal the existing store's, else CacheMismatchError.
    Something at ``path`` that is not a store (an empty folder, a stray file) is a
    CacheError that says what to delete.
    """
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_temp_folders(path)
        tmp = path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        meta = {**attrs, "store_format": STORE_FORMAT, "complete": False, "generation": uuid.uuid4().hex}
        try:
            ds, enc = _skeleton(layout, meta)
            ds.to_zarr(tmp, mode="w", compute=False, encoding=enc, zarr_format=3, consolidated=False)
            os.rename(tmp, path)  # atomic; fails if another part created it first
        except OSError:
            if not path.exists():  # not a lost race: creation itself failed (disk full, permissions)
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    group = open_group(path, mode="r+")
    check_hash(path, group, attrs["config_hash"], attrs.get("config"))
    return group


def _remove_dead_temp_folders(path: Path) -> None:
    """Delete ``.<store>.tmp-<this host>-<pid>`` folders whose process is gone (killed mid-creation)."""
    prefix = f".{path.name}.tmp-{socket.gethostname()}-"
    for tmp in path.parent.glob(prefix + "*"):
        pid = tmp.name[len(prefix) :]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def open_group(path: Path, mode: Literal["r", "r+"] = "r") -> zarr.Group:
    path = Path(path)
    if not (path / "zarr.json").exists():
        if path.exists():
            what = "a file" if path.is_file() else ("an empty folder" if not any(path.iterdir()) else "a folder")
            raise CacheError(
                f"{path} is {what}, not an activation store (no zarr.json in it); "
                f"delete it (rm -r '{path}') and run `python -m pipeline extract` for it"
            )
        raise CacheError(f"{path}: no activation store here (run `python -m pipeline extract` for it first)")
    from pipeline.cache.checksums import verifying_store  # it imports this module's errors

    # Every chunk read through the group is checked (checksum, short or missing chunk).
    return zarr.open_group(verifying_store(path, read_only=mode == "r"), mode=mode, zarr_format=3)


def read_root_attrs(path: Path) -> dict | None:
    """The store's attrs read straight from ``<path>/zarr.json`` (no caching); None if it is gone."""
    meta = Path(path) / "zarr.json"
    for attempt in range(5):
        try:
            return json.loads(meta.read_text()).get("attributes", {})
        except FileNotFoundError:
            return None
        except ValueError:  # caught mid-rewrite by another process: read again
            time.sleep(0.05 * (attempt + 1))
    return json.loads(meta.read_text()).get("attributes", {})


def finalize_command(path: Path, attrs: dict) -> str:
    """The command that finalizes (or repairs the finalization of) the store at ``path``."""
    parts = ["python -m pipeline finalize"]
    if attrs.get("config_file"):
        parts.append(f"--config '{attrs['config_file']}'")
    for key, flag in (("model_name", "--model"), ("dataset_name", "--dataset"), ("split", "--split")):
        parts.append(f"{flag} {attrs.get(key, '?')}")
    return " ".join(parts)


def check_hash(path: Path, group: zarr.Group, expected: str, config: dict | None = None) -> None:
    found = group.attrs.get("config_hash")
    if found == expected:
        return
    diff = ""
    old = group.attrs.get("config")
    if isinstance(old, dict) and config is not None:
        keys = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
        diff = f"; differing keys: {', '.join(keys)}"
    raise CacheMismatchError(
        f"{path}: this store was made with a different configuration (config hash {str(found)[:12]} on disk, "
        f"{expected[:12]} now{diff}). It is not reused: delete it, or point paths.cache elsewhere."
    )


def group_array(group: zarr.Group, name: str) -> zarr.Array:
    """The array ``name`` of a store's group (a store's members are arrays, never groups)."""
    array = group[name]
    assert isinstance(array, zarr.Array), f"{name} is a group, not an array"
    return array


def pending_chunks(group: zarr.Group, chunks: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The chunks (from ``chunks``) with at least one image not done."""
    done = np.asarray(group_array(group, "done")[:], dtype=bool)
    return [(s, e) for s, e in chunks if not done[s:e].all()]


@dataclass(frozen=True)
class StoreWriter:
    """The identity of the store a process opened; ``check`` proves it is still the one on disk."""

    path: Path
    generation: str
    config_hash: str
    config_file: str
    pinned: Path | None = None  # /proc/self/fd/<n>: the store's directory as opened (Linux), else None

    @classmethod
    def of(cls, path: Path, group: zarr.Group) -> StoreWriter:
        attrs = group.attrs
        # Writes go through a handle on the directory this process opened, not through the path:
        # if the store is deleted (and re-created) between a check and a write, the write fails
        # in the deleted directory instead of landing in its successor.
        pinned = None
        if Path("/proc/self/fd").is_dir():
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)  # kept open for the process's life
            pinned = Path(f"/proc/self/fd/{fd}")
        # stores made before generation ids existed: their creation time identifies them
        return cls(
            Path(path),
            str(attrs.get("generation", attrs.get("created"))),
            str(attrs["config_hash"]),
            str(attrs.get("config_file", "?")),
            pinned,
        )

    @functools.cached_property
    def pinned_group(self) -> zarr.Group | None:
        """The store opened through ``pinned`` (once per writer, shared by its writer threads), or None."""
        return None if self.pinned is None else zarr.open_group(self.pinned, mode="r+")

    @functools.cached_property
    def _arrays(self) -> dict[str, zarr.Array]:
        return {}

    def array(self, name: str) -> zarr.Array:
        """The array ``name`` of ``pinned_group``, opened once per writer (a store's array
        metadata never changes while it is written; ``check`` guards against a new store)."""
        assert self.pinned_group is not None
        if name not in self._arrays:
            self._arrays[name] = group_array(self.pinned_group, name)
        return self._arrays[name]

    def check(self) -> None:
        """Raise ForeignWriterError if the store at ``path`` was deleted or re-created since it was opened."""
        found = read_root_attrs(self.path)
        if found is not None and str(found.get("generation", found.get("created"))) == self.generation:
            return
        mine = f"config hash {self.config_hash[:12]} from {self.config_file}"
        if found is None:
            now = "no store at all (it was deleted)"
        else:
            now = f"a new store with config hash {str(found.get('config_hash'))[:12]} from {found.get('config_file', '?')}"
        raise ForeignWriterError(
            f"{self.path} was replaced while this process was writing it: this process writes {mine}, "
            f"the path now holds {now}. This process stops without writing; the new store's own "
            "extraction fills it (re-run extract with the config you want if that is not running)."
        )


def _whole_chunk_writer(array: zarr.Array) -> zarr.Array:
    """``array`` with zarr's ``write_empty_chunks`` on.

    Activations are written in whole chunks of computed values, so zarr's default check of
    each chunk against the fill value only costs time: an ``array_equal`` with NaN over the
    whole chunk, on zarr's one event-loop thread, so it serialises the writer threads (it
    took longer than the Blosc encode itself: ``benchmarks/bench_extract.py``, stage (c)).
    """
    if hasattr(array, "with_config"):  # zarr >= 3.1.1
        return array.with_config({"write_empty_chunks": True})
    a = array._async_array  # zarr 3.1.0: the same array object, built with the runtime config
    return zarr.Array(
        type(a)(metadata=a.metadata, store_path=a.store_path, config={"order": a.order, "write_empty_chunks": True})
    )


def _local_folder(array: zarr.Array) -> Path | None:
    """The folder of ``array``'s files where it lives in a local store (chunk files are then
    written by :func:`pipeline.cache.chunk_files.write_whole_chunks`), else None."""
    from pipeline.cache.checksums import VerifyingStore  # it imports this module's errors

    store = array.store
    if isinstance(store, VerifyingStore):  # open_group's store: a LocalStore whose reads are checked
        return store.path / array.path
    return Path(store.root) / array.path if isinstance(store, LocalStore) else None


def _drop_shards(arrays: dict[str, zarr.Array], start: int) -> None:
    """Delete the shard files the write unit at ``start`` is about to replace (sharded arrays only).

    zarr merges a write into an existing shard file (it reads it first), so a shard left
    half-written by a killed extraction would fail its checksum and block the resume; the
    unit is rewritten whole anyway, so its old files go first. ``done`` is not among them:
    it stays false until the unit's last write.
    """
    for name, array in arrays.items():
        if name == "done" or array.shards is None:
            continue
        index = (start // array.shards[0],) + (0,) * (array.ndim - 1)
        keys = (
            [array.metadata.encode_chunk_key((index[0], li) + index[2:]) for li in range(array.shape[1])]
            if name == "acts"
            else [array.metadata.encode_chunk_key(index)]
        )
        for key in keys:
            sync(array.store_path.store.delete(f"{array.store_path.path}/{key}"))


def write_chunk(
    group: zarr.Group, start: int, arrays: dict[str, np.ndarray], writer: StoreWriter | None = None
) -> None:
    """Write one whole chunk of images starting at ``start``, then mark it done.

    ``arrays["acts"]`` is [B, L, T, D]: L whole chunks (one per layer), written straight to
    their files (:func:`pipeline.cache.chunk_files.write_whole_chunks`: the bytes zarr would
    write), as is every other array; a layout that function leaves to zarr (shards, strings) is
    written by zarr, acts in one call so that zarr encodes its L chunks concurrently. ``done``
    goes last, so a kill leaves the chunk pending. With ``writer``, the store's identity is re-checked before every array write,
    and the writes go through the directory the writer opened (``StoreWriter.pinned``), so a
    store that replaced it between a check and a write never receives the chunk.
    """
    check = writer.check if writer is not None else (lambda: None)
    try:
        stop = start + arrays["acts"].shape[0]
        if writer is not None and writer.pinned_group is not None:  # the directory this process opened
            opened = {name: writer.array(name) for name in [*arrays, "done"]}
        else:
            opened = {name: group_array(group, name) for name in [*arrays, "done"]}
        check()
        _drop_shards(opened, start)
        for i, (name, value) in enumerate([*arrays.items(), ("done", np.ones(stop - start, dtype=bool))]):
            if i:
                check()
            array = opened[name]
            folder = _local_folder(array)
            write_empty = name == "acts" or bool(zarr.config.get("array.write_empty_chunks"))  # as zarr would
            if folder is None or not write_whole_chunks(
                array, folder, chunk_format(array), start, value, write_empty=write_empty
            ):
                # zarr's write (shards, strings): L whole chunks of acts in one call, encoded concurrently
                (_whole_chunk_writer(array) if name == "acts" else array)[start:stop] = value
    except Exception:
        check()  # the directory was deleted under this write: say so (ForeignWriterError)
        raise


def finalize(path: Path) -> dict:
    """Check that every image is done, record bad images in attrs, consolidate metadata, mark complete.

    ``complete: true`` is the last write, an atomic replace of the root ``zarr.json``
    (which then also holds the consolidated metadata): until it lands, readers see an
    unfinished store and the error tells them to run finalize, which is idempotent.
    """
    path = Path(path)
    group = open_group(path, mode="r+")
    done = np.asarray(group_array(group, "done")[:], dtype=bool)
    if not done.all():
        missing = np.flatnonzero(~done)
        raise CacheIncompleteError(
            f"{path}: {missing.size} of {done.size} images are not done (first: image index {missing[0]}); "
            "re-run the extraction parts that own them (they resume where they stopped)"
        )
    bad = np.asarray(group_array(group, "bad")[:], dtype=bool)
    ids, reasons = np.asarray(group_array(group, "image")[:]), np.asarray(group_array(group, "bad_reason")[:])
    bad_records = [{"index": int(i), "id": str(ids[i]), "reason": str(reasons[i])} for i in np.flatnonzero(bad)]
    summary = {
        "n_images": int(done.size),
        "n_bad": len(bad_records),
        "bad_images": bad_records,
        "finalized": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    group.attrs.update({**summary, "complete": False})
    zarr.consolidate_metadata(path, zarr_format=3)
    _declare_complete(path)
    return {"complete": True, **summary}


def _declare_complete(path: Path) -> None:
    """Set ``complete: true`` in the root zarr.json with one atomic replace.

    Written by hand (not through zarr's attrs) because zarr rewrites the file in
    place, and the flag must appear together with the consolidated metadata, or not at all.
    """
    meta = Path(path) / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["complete"] = True
    atomic.write_text(meta, json.dumps(doc, indent=2))


def check_finalized(path: Path, attrs: dict) -> None:
    """Raise CacheIncompleteError, with the command that fixes it, unless the store is finalized."""
    if attrs.get("complete", False) and "consolidated_metadata" in json.loads((Path(path) / "zarr.json").read_text()):
        return
    raise CacheIncompleteError(
        f"{path}: store is not finalized (its extraction is unfinished, or finalize was interrupted); "
        f"run `{finalize_command(path, attrs)}` (it says which parts still need extracting, if any)"
    )
