"""``extract.shard_images``: zarr v3 sharding of every per-image array.

A sharded store holds the same values as an unsharded one, in fewer files; the extraction
writes, resumes and splits parts in whole shards; every chunk inside a shard keeps its CRC32C
and ``verify`` finds (and ``--mark-not-done`` repairs) a damaged one; the default (0) keeps
the config hash of stores made before the key.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import zarr

from helpers import write_config
from pipeline.cache import CacheReader, ChunkCorruptError, finalize, open_cache
from pipeline.cache.checksums import array_info, scan
from pipeline.cache.stream import ChunkDecoder, group_batches, token_index
from pipeline.config import CacheRef, ConfigError, load_config
from pipeline.extract import extract, split_data

SEG = CacheRef("dino", "seg")


def _cfg(project: Path, shard_images: int, compression: str = "lz4", **extract_keys):
    name = f"s{shard_images}-{compression}"
    keys = {"dtype": "float16", "compression": compression, "shard_images": shard_images, **extract_keys}
    return load_config(
        write_config(project, {"paths": {"cache": f"cache-{name}"}, "extract": keys}, name=f"{name}.yaml")
    )


def _files(store: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(store))


@pytest.mark.parametrize("compression", ["lz4", "none"])
def test_sharded_and_unsharded_stores_hold_bit_identical_arrays_in_fewer_files(project, compression):
    stores = {}
    for shard in (0, 8):
        cfg = _cfg(project, shard, compression)
        extract(cfg, SEG, "train", progress=False)  # 24 images: chunks of 4, shards of 8
        stores[shard] = cfg.store(SEG, "train")
    plain, sharded = (zarr.open_group(stores[s], mode="r") for s in (0, 8))
    names = sorted(plain.array_keys())
    assert names == sorted(sharded.array_keys())
    for name in names:
        a, b = plain[name][:], sharded[name][:]
        assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), name
    # the layout: acts in shards of 8 images holding chunks of 4, each chunk with its CRC32C
    meta = json.loads((stores[8] / "acts" / "zarr.json").read_text())
    assert meta["chunk_grid"]["configuration"]["chunk_shape"][0] == 8
    (codec,) = meta["codecs"]
    assert codec["name"] == "sharding_indexed" and codec["configuration"]["chunk_shape"][0] == 4
    assert [c["name"] for c in codec["configuration"]["codecs"]][-1] == "crc32c"
    assert [c["name"] for c in codec["configuration"]["index_codecs"]][-1] == "crc32c"
    # per-image arrays: 6 chunk files each unsharded, 3 shard files sharded (acts: per layer; bad and
    # bad_reason hold only their fill value here, so zarr writes no chunk of them either way)
    written = ("acts", "done", "fingerprint", "patch_label", "patch_purity", "pixel_label")
    for name in written:
        assert array_info(stores[8], name).per_image, name
        files = {s: _files(stores[s] / name / "c") for s in (0, 8)}
        assert files == ({0: 12, 8: 6} if name == "acts" else {0: 6, 8: 3}), name
    assert _files(stores[0]) - _files(stores[8]) == 6 + 3 * 5
    # readers: chunk-granular reads out of the shards, and the training stream (through zarr)
    reader = CacheReader(stores[8])
    assert reader.chunk_images == 4
    assert np.array_equal(reader.read(-1, 4, 8), plain["acts"][4:8, 1])
    decoder = ChunkDecoder(reader)  # the training stream reads each chunk's byte range of its shard file itself
    assert decoder.shard_images == 8 and (decoder.raw if compression == "none" else decoder.direct)
    for start in range(0, 24, 4):
        assert np.array_equal(decoder.read(-1, start, start + 4), plain["acts"][start : start + 4, 1]), start
        assert (decoder.mapped(-1, start) is not None) == (compression == "none")
    tok = token_index(reader, "patches")
    rows = [b for b in group_batches(reader, -1, reader.chunks(), tok, batch_size=16, buffer_size=64, seed=0)]
    plain_reader = CacheReader(stores[0])
    expected = list(group_batches(plain_reader, -1, plain_reader.chunks(), tok, batch_size=16, buffer_size=64, seed=0))
    assert len(rows) == len(expected)
    for got, want in zip(rows, expected):
        assert all(np.array_equal(np.asarray(g), np.asarray(w)) for g, w in zip(got, want))
    assert not scan(stores[8]).bad


def test_a_shard_size_that_is_not_a_multiple_of_the_chunk_is_refused(project, capsys):
    from pipeline.__main__ import main

    write_config(project, {"extract": {"shard_images": 6}})
    rc = main(["extract", "--model", "dino", "--dataset", "seg", "--split", "val", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: ") and "extract/shard_images 6 is not a multiple" in err[-1]
    assert not (project / "cache" / "dino" / "seg" / "val.zarr").exists()


def _hash(cfg, monkeypatch=None, keys=None) -> str:
    import pipeline.extract as ex
    from pipeline.models import load_backbone

    if keys is not None:
        monkeypatch.setattr(ex, "STORE_HASHED_KEYS", keys)
    backbone, provenance = load_backbone(cfg.model("dino").spec)
    _, attrs = ex.layout_and_attrs(cfg, SEG, "val", split_data(cfg, "seg", "val"), backbone, provenance)
    return attrs["config_hash"]


def test_no_shards_and_cpu_decode_keep_the_hash_of_stores_made_before_the_keys(project, monkeypatch):
    from pipeline.stages import STORE_HASHED_KEYS

    default = load_config(write_config(project))
    explicit = load_config(write_config(project, {"extract": {"shard_images": 0, "decode": "cpu"}}, name="x.yaml"))
    auto = load_config(write_config(project, {"extract": {"decode": "auto"}}, name="auto.yaml"))  # CPU here: cpu
    sharded = load_config(write_config(project, {"extract": {"shard_images": 8}}, name="s.yaml"))
    assert (default.extract.shard_images, default.extract.decode) == (0, "cpu")
    hashes = [_hash(c) for c in (default, explicit, auto, sharded)]
    before = {k: v for k, v in STORE_HASHED_KEYS.items() if k not in ("shard_images", "decode")}
    old = _hash(default, monkeypatch, before)
    assert hashes[:3] == [old] * 3
    assert hashes[3] != old


def test_parts_own_whole_shards_and_a_half_written_shard_is_rewritten_on_resume(project):
    cfg = _cfg(project, 8)
    first = extract(cfg, SEG, "train", part=0, of=2, progress=False)  # 3 shards: part 0 owns 2 (rounded)
    store = cfg.store(SEG, "train")
    done = zarr.open_group(store, mode="r")["done"][:]
    assert first.chunks_owned == first.chunks_computed == 2 and done.tolist() == [True] * 16 + [False] * 8
    # a shard killed mid-write: garbage shard files and done unset; the resume rewrites it whole
    group = zarr.open_group(store, mode="r+")
    group["done"][8:16] = False
    for file in (store / "acts" / "c" / "1").rglob("*"):
        if file.is_file():
            file.write_bytes(b"half a shard")
    (store / "patch_label" / "c" / "1" / "0").write_bytes(b"")
    again = extract(cfg, SEG, "train", part=0, of=2, progress=False)
    assert (again.chunks_computed, again.chunks_skipped) == (1, 1)
    extract(cfg, SEG, "train", part=1, of=2, progress=False)
    finalize(store)
    whole = _cfg(project, 0)
    extract(whole, SEG, "train", progress=False)
    assert np.array_equal(open_cache(store).acts.values, open_cache(whole.store(SEG, "train")).acts.values)
    assert np.array_equal(
        zarr.open_group(store, mode="r")["patch_label"][:],
        zarr.open_group(whole.store(SEG, "train"), mode="r")["patch_label"][:],
    )
    assert not scan(store).bad


def _flip(file: Path, offset: int) -> None:
    data = bytearray(file.read_bytes())
    data[offset] ^= 0x10
    file.write_bytes(bytes(data))


def test_a_damaged_chunk_inside_a_shard_is_named_verified_marked_and_repaired(project, capsys):
    from pipeline.__main__ import main

    cfg = _cfg(project, 8, "none")
    extract(cfg, SEG, "val", progress=False)  # 12 images: shards [0, 8) and [8, 12)
    store = cfg.store(SEG, "val")
    original = open_cache(store).acts.values
    assert main(["verify", str(store)]) == 0
    capsys.readouterr()

    shard = store / "acts" / "c" / "0" / "1" / "0" / "0"
    _flip(shard, 100)  # a byte of the first chunk (images 0..3) of layer 1's first shard
    named = "array 'acts' shard 0.1.0.0 (images 0..7) is corrupt"
    with pytest.raises(ChunkCorruptError, match=re.escape(named)):
        CacheReader(store).read(-1, 0, 4)
    with pytest.raises(ChunkCorruptError, match=re.escape(named)):  # the stream's mapped path, too
        ChunkDecoder(CacheReader(store)).mapped(-1, 0)
    assert ChunkDecoder(CacheReader(store)).mapped(-1, 4) is not None  # the shard's other chunk is intact
    assert np.array_equal(CacheReader(store).read(-1, 8, 12), original[8:12, 1])  # another shard still reads
    result = scan(store)
    assert [(b.array, b.index, b.images) for b in result.bad] == [("acts", (0, 1, 0, 0), (0, 8))]
    assert "chunk 0 of the shard" in result.bad[0].why

    assert main(["verify", str(store), "--mark-not-done"]) == 0
    assert "marked 8 images not done (0..7)" in capsys.readouterr().out
    report = extract(cfg, SEG, "val", progress=False)
    assert (report.chunks_computed, report.chunks_skipped) == (1, 1)
    assert np.array_equal(open_cache(store).acts.values, original) and not scan(store).bad

    # the shard's index damaged: named too
    size = shard.stat().st_size
    _flip(shard, size - 10)
    assert "index" in scan(store).bad[0].why
    with pytest.raises(ChunkCorruptError, match=re.escape(named)):
        CacheReader(store).read(-1, 4, 8)
    with pytest.raises(ChunkCorruptError, match=re.escape(named) + ".*index"):
        ChunkDecoder(CacheReader(store)).read(-1, 4, 8)
    # a missing shard of a finalized store is corrupt, not NaN
    shard.unlink()
    with pytest.raises(ChunkCorruptError, match="its chunk file is missing"):
        CacheReader(store).read(-1, 0, 4)


def test_the_shard_layout_is_recorded_in_the_store(project):
    cfg = _cfg(project, 8)
    extract(cfg, SEG, "val", progress=False)
    attrs = zarr.open_group(cfg.store(SEG, "val"), mode="r").attrs
    assert attrs["shard_images"] == 8 and attrs["config"]["shard_images"] == 8 and attrs["decode"] == "cpu"
    with pytest.raises(ConfigError):
        load_config(write_config(project, {"extract": {"shard_images": -8}}, name="neg.yaml"))


def test_an_orphan_writer_of_a_replaced_sharded_store_touches_nothing_of_its_successor(project):
    import shutil

    from pipeline.cache import ForeignWriterError, StoreWriter, write_chunk

    old = _cfg(project, 8)
    extract(old, SEG, "train", part=1, of=2, progress=False)  # the last shard only
    store = old.store(SEG, "train")
    group = zarr.open_group(store, mode="r+")
    writer = StoreWriter.of(store, group)
    shard = {
        k: group[k][16:24]
        for k in ("acts", "bad", "bad_reason", "fingerprint", "patch_label", "patch_purity", "pixel_label")
    }
    shutil.rmtree(store)  # the user deletes it and extracts another config (float32) into the same path
    new = load_config(
        write_config(project, {"paths": {"cache": "cache-s8-lz4"}, "extract": {"shard_images": 8}}, name="new.yaml")
    )
    extract(new, SEG, "train", part=1, of=2, progress=False)
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    with pytest.raises(ForeignWriterError, match="was replaced while this process was writing it"):
        write_chunk(group, 0, {k: v[:8] for k, v in shard.items()}, writer)
    assert {p: p.read_bytes() for p in store.rglob("*") if p.is_file()} == before


def test_a_step_reading_a_store_of_another_shard_size_or_decode_names_the_key(project):
    from pipeline.provenance import StaleInputError, check_store

    cfg = _cfg(project, 8)
    extract(cfg, SEG, "val", progress=False)
    check_store(cfg, SEG, "val")  # as extracted
    unsharded = load_config(
        write_config(project, {"paths": {"cache": "cache-s8-lz4"}, "extract": {"dtype": "float16"}}, name="u.yaml")
    )
    with pytest.raises(StaleInputError, match=r"extract\.shard_images \(8 -> 0\)"):
        check_store(unsharded, SEG, "val")
    auto = load_config(
        write_config(
            project,
            {"paths": {"cache": "cache-s8-lz4"}, "extract": {"dtype": "float16", "shard_images": 8, "decode": "auto"}},
            name="auto.yaml",
        )
    )
    check_store(auto, SEG, "val")  # auto accepts the store whatever it resolved to
    cuda = load_config(
        write_config(
            project,
            {"paths": {"cache": "cache-s8-lz4"}, "extract": {"dtype": "float16", "shard_images": 8, "decode": "cuda"}},
            name="cuda.yaml",
        )
    )
    with pytest.raises(StaleInputError, match=r'extract\.decode \("cpu" -> "cuda"\)'):
        check_store(cuda, SEG, "val")
