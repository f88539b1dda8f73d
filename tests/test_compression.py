"""``extract.compression``: the codec of the ``acts`` array (``pipeline.cache.store.ACTS_CODECS``).

``none`` stores raw chunk files and ``lz4`` Blosc-compressed ones; everything read from them is
bit-identical, the default's config hash is the one stores had before the key existed, and
``none`` is a different store (never reused for an lz4 config, nor the other way round).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from helpers import run_cli, write_config
from pipeline.cache import CacheMismatchError, CacheReader, finalize, open_cache
from pipeline.cache.store import ACTS_CODECS
from pipeline.config import CacheRef, ExtractConfig, load_config, load_schema
from pipeline.extract import extract, split_data

SEG = CacheRef("dino", "seg")
CODECS = {"lz4": ["bytes", "blosc", "crc32c"], "none": ["bytes", "crc32c"]}  # every chunk ends with its CRC32C


def _store(project: Path, compression: str, split: str = "train", **extract_keys) -> Path:
    """Extract ``split`` of dino/seg (float16) with ``compression`` into ``cache-<compression>``."""
    cfg = load_config(
        write_config(
            project,
            {"paths": {"cache": f"cache-{compression}"}, "extract": {"dtype": "float16", "compression": compression}},
            name=f"{compression}.yaml",
        )
    )
    extract(cfg, SEG, split, progress=False, **extract_keys)
    return cfg.store(SEG, split)


def _codecs(store: Path, name: str = "acts") -> list[str]:
    return [c["name"] for c in json.loads((store / name / "zarr.json").read_text())["codecs"]]


def test_the_schema_offers_exactly_the_registered_codecs_and_defaults_to_lz4():
    node = load_schema()["properties"]["extract"]["properties"]["compression"]
    assert node["enum"] == list(ACTS_CODECS) == ["lz4", "none"]
    assert node["default"] == ExtractConfig().compression == "lz4"
    assert [len(make()) for make in ACTS_CODECS.values()] == [1, 0]


def test_none_and_lz4_stores_hold_bit_identical_arrays(project):
    stores = {c: _store(project, c) for c in CODECS}
    groups = {c: zarr.open_group(s, mode="r") for c, s in stores.items()}
    names = sorted(groups["lz4"].array_keys())
    assert names == sorted(groups["none"].array_keys()) and {"acts", "patch_label", "pixel_label"} <= set(names)
    for name in names:
        a, b = groups["lz4"][name][:], groups["none"][name][:]
        assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), name
    acts = groups["none"]["acts"][:]
    assert acts.dtype == np.float16 and np.isfinite(acts).all()  # every image written

    # the codec chain zarr wrote: the labels stay Blosc either way
    for c, chain in CODECS.items():
        assert _codecs(stores[c]) == chain, c
        assert _codecs(stores[c], "pixel_label") == ["bytes", "blosc", "crc32c"]
        attrs = dict(groups[c].attrs)
        assert attrs["compression"] == c and attrs["complete"] is True

    # raw chunk files: N·L·T·D·2 bytes for float16 and a 4-byte CRC32C each, one file per (chunk, layer)
    n, n_layers, t, d = acts.shape
    files = [f for f in (stores["none"] / "acts" / "c").rglob("*") if f.is_file()]
    assert len(files) == -(-n // 4) * n_layers  # chunks of 4 images
    assert sum(f.stat().st_size for f in files) == n * n_layers * t * d * 2 + 4 * len(files)
    first = np.frombuffer((stores["none"] / "acts/c/0/0/0/0").read_bytes()[:-4], dtype="<f2").reshape(4, t, d)
    assert np.array_equal(first, acts[:4, 0])  # the file is the rows themselves
    lz4_bytes = sum(f.stat().st_size for f in (stores["lz4"] / "acts" / "c").rglob("*") if f.is_file())
    assert lz4_bytes < n * n_layers * t * d * 2

    # the readers: open_cache (xarray), CacheReader's chunk stream (probes, quantify, class-f1)
    assert np.array_equal(open_cache(stores["none"]).acts.values, acts)
    readers = {c: CacheReader(s) for c, s in stores.items()}
    for layer in (-2, -1):
        lz4, raw = (list(readers[c].iter_chunks(layer, tokens="patches", shuffle=True, seed=1)) for c in CODECS)
        assert len(lz4) == len(raw) == 6
        for (i_a, x_a), (i_b, x_b) in zip(lz4, raw):
            assert np.array_equal(i_a, i_b) and np.array_equal(x_a, x_b)


def test_stats_of_a_raw_store_equal_those_of_the_lz4_store(project):
    from pipeline.stats import compute_stats

    found = {c: compute_stats(_store(project, c, "val"), threads=1, progress=False) for c in CODECS}
    assert found["lz4"]["layers"] == found["none"]["layers"]
    assert found["lz4"]["n_valid_images"] == found["none"]["n_valid_images"] == 12


def test_parts_and_resume_fill_a_raw_store_like_one_run(project):
    whole = zarr.open_group(_store(project, "none", "val"), mode="r")["acts"][:]
    cfg = load_config(
        write_config(
            project, {"paths": {"cache": "cache-parts"}, "extract": {"dtype": "float16", "compression": "none"}}
        )
    )
    first = extract(cfg, SEG, "val", part=0, of=2, progress=False)
    store = cfg.store(SEG, "val")
    # a chunk whose write never finished (done unset): the re-run recomputes only that one
    group = zarr.open_group(store, mode="r+")
    group["done"][4:8] = False
    again = extract(cfg, SEG, "val", part=0, of=2, progress=False)
    assert (first.chunks_computed, again.chunks_computed, again.chunks_skipped) == (2, 1, 1)
    extract(cfg, SEG, "val", part=1, of=2, progress=False)
    finalize(store)
    assert _codecs(store) == CODECS["none"]
    assert np.array_equal(open_cache(store).acts.values, whole)


def _hash(cfg, monkeypatch=None, keys=None) -> str:
    import pipeline.extract as ex
    from pipeline.models import load_backbone

    if keys is not None:
        assert monkeypatch is not None
        monkeypatch.setattr(ex, "STORE_HASHED_KEYS", keys)
    backbone, provenance = load_backbone(cfg.model("dino").spec)
    _, attrs = ex.layout_and_attrs(cfg, SEG, "val", split_data(cfg, "seg", "val"), backbone, provenance)
    return attrs["config_hash"]


def test_the_default_keeps_the_hash_of_stores_made_before_the_key_and_none_changes_it(project, monkeypatch):
    from pipeline.stages import STORE_HASHED_KEYS

    default = load_config(write_config(project))  # no compression key: lz4
    explicit = load_config(write_config(project, {"extract": {"compression": "lz4"}}, name="lz4.yaml"))
    raw = load_config(write_config(project, {"extract": {"compression": "none"}}, name="none.yaml"))
    assert default.extract.compression == "lz4"
    hashes = {"default": _hash(default), "lz4": _hash(explicit), "none": _hash(raw)}
    before_the_key = {k: v for k, v in STORE_HASHED_KEYS.items() if k != "compression"}
    old = _hash(default, monkeypatch, before_the_key)
    assert hashes["default"] == hashes["lz4"] == old
    assert hashes["none"] != old


def test_a_store_of_the_other_codec_is_never_reused(project):
    from pipeline.provenance import StaleInputError, check_store

    lz4 = load_config("config.yaml")
    extract(lz4, SEG, "val", progress=False)
    store = lz4.store(SEG, "val")
    raw = load_config(write_config(project, {"extract": {"compression": "none"}}, name="none.yaml"))
    with pytest.raises(CacheMismatchError, match=r"val\.zarr.*differing keys: compression"):
        extract(raw, SEG, "val", progress=False)
    # a hand-run step reading the store under the edited config is refused, naming the key
    with pytest.raises(StaleInputError, match=r'extract\.compression \("lz4" -> "none"\)'):
        check_store(raw, SEG, "val")
    check_store(lz4, SEG, "val")  # the store's own config passes
    # nothing computed was lost
    assert _codecs(store) == CODECS["lz4"] and open_cache(store).attrs["complete"] is True


def test_an_unknown_codec_is_one_error_line_naming_the_key(project):
    write_config(project, {"extract": {"compression": "zstd"}})
    proc = run_cli(["extract", "--model", "dino", "--dataset", "seg", "--split", "val"], project, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert (
        lines[0].startswith("error: ") and "key extract/compression: 'zstd' is not one of ['lz4', 'none']" in lines[0]
    )
    assert not (project / "cache").exists()
