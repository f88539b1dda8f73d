"""Issue 24, stores: a store knows its inputs (resolved dataset root, per-image fingerprints),
every chunk carries a CRC32C checked by every reader, and ``verify`` finds and repairs."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from helpers import CHAIN_OVERRIDES, write_config
from pipeline.cache import CacheReader, ChunkCorruptError, InputsChangedError, finalize, open_cache
from pipeline.cache import store as store_module
from pipeline.cache.checksums import crc_ok, scan
from pipeline.cache.stream import ChunkDecoder, chunk_rows, group_batches, token_index
from pipeline.config import CacheRef, load_config
from pipeline.extract import extract, split_data
from pipeline.provenance import dataset_files_digest

SEG = CacheRef("dino", "seg")
VAL = Path("resources/data/seg/ADEChallengeData2016/images/validation")


def _one_error_line(capsys, argv: list[str], *, match: str) -> str:
    from pipeline.__main__ import main

    rc = main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert rc == 2, err
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    assert "Traceback" not in err and match in errors[0], err
    return errors[0]


def _repaint(path: Path, seed: int) -> None:
    """Same file name and size class, other pixels."""
    with Image.open(path) as img:
        size, fmt = img.size, img.format
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)


# ---- 1. a store knows its inputs ------------------------------------------------------------------
@pytest.fixture
def two_projects(project, tmp_path):
    """Folders X (the project) and Y (same file names, other pixels) whose configs share one cache
    folder and give the dataset root relative to the folder, as two copies of a project would."""
    shared = tmp_path / "shared-cache"
    y = tmp_path / "Y"
    shutil.copytree(project / "resources", y / "resources")
    for i, image in enumerate(sorted((y / VAL).glob("*.jpg"))):
        _repaint(image, seed=100 + i)
    for folder in (project, y):
        write_config(folder, {"paths": {"cache": str(shared)}})
    return project, y


def test_a_second_project_sharing_the_cache_is_refused_when_the_store_is_complete(two_projects, monkeypatch):
    x, y = two_projects
    extract(load_config(x / "config.yaml"), SEG, "val", progress=False)
    monkeypatch.chdir(y)
    with pytest.raises(InputsChangedError) as info:
        extract(load_config(y / "config.yaml"), SEG, "val", progress=False)
    msg = str(info.value)
    assert f"extracted from the dataset at {(x / 'resources/data/seg').resolve()}" in msg
    assert f"datasets.seg.root resolves to {(y / 'resources/data/seg').resolve()}" in msg


def test_a_second_project_cannot_fill_the_rest_of_a_killed_store(two_projects, monkeypatch):
    x, y = two_projects
    cfg_x = load_config(x / "config.yaml")
    extract(cfg_x, SEG, "val", part=0, of=3, progress=False)  # X stopped at 4 of 12 images
    store = cfg_x.store(SEG, "val")
    assert zarr.open_group(store, mode="r")["done"][:].tolist() == [True] * 4 + [False] * 8
    monkeypatch.chdir(y)
    with pytest.raises(InputsChangedError, match="another project sharing paths.cache"):
        extract(load_config(y / "config.yaml"), SEG, "val", part=1, of=3, progress=False)
    assert zarr.open_group(store, mode="r")["done"][:].sum() == 4  # Y wrote nothing


def test_fingerprints_record_each_images_bytes_and_refuse_an_edited_one(project):
    cfg = load_config(project / "config.yaml")
    extract(cfg, SEG, "val", progress=False)
    store = cfg.store(SEG, "val")
    data = split_data(cfg, "seg", "val")
    fp = zarr.open_group(store, mode="r")["fingerprint"][:]
    sample = data.samples[5]
    image, mask = sample.image.read_bytes(), sample.mask.read_bytes()
    assert fp[5, 0] == len(image) + len(mask)  # the image and its mask
    import hashlib

    digest = hashlib.blake2b(image + mask, digest_size=16).digest()
    assert [int(fp[5, 2]), int(fp[5, 3])] == [int.from_bytes(digest[:8], "big"), int.from_bytes(digest[8:], "big")]

    # a new modification time, same bytes: re-read, found equal, the store is reused as it is
    os.utime(sample.image, ns=(fp[5, 1] + 10**9, fp[5, 1] + 10**9))
    report = extract(cfg, SEG, "val", progress=False)
    assert report.chunks_computed == 0 and report.chunks_skipped == 3

    # other bytes: refused, naming the image
    _repaint(sample.image, seed=7)
    with pytest.raises(InputsChangedError) as info:
        extract(cfg, SEG, "val", progress=False)
    assert f"image 5 ({sample.image})" in str(info.value) and "1 of 12 extracted images differ" in str(info.value)


def test_same_size_other_content_is_found_by_the_hash(project):
    cfg = load_config(project / "config.yaml")
    extract(cfg, SEG, "val", progress=False)
    sample = split_data(cfg, "seg", "val").samples[2]
    data = bytearray(sample.image.read_bytes())
    data[-3] ^= 0xFF  # one byte inside the JPEG, size unchanged
    sample.image.write_bytes(bytes(data))
    with pytest.raises(InputsChangedError, match=r"image 2 .*same size, other content"):
        extract(cfg, SEG, "val", progress=False)


def test_stores_without_fingerprints_or_root_still_open_with_a_note(project, caplog):
    cfg = load_config(project / "config.yaml")
    extract(cfg, SEG, "val", progress=False)
    store = cfg.store(SEG, "val")
    group = zarr.open_group(store, mode="r+")
    group["fingerprint"][:] = 0  # "not recorded", as in a row never fingerprinted
    attrs = dict(group.attrs)
    attrs.pop("inputs")
    group.attrs.clear()
    group.attrs.update(attrs)
    finalize(store)
    with caplog.at_level(logging.INFO):
        report = extract(cfg, SEG, "val", progress=False)
    assert report.chunks_skipped == 3
    assert "made before stores recorded their dataset root" in caplog.text


def test_the_workflow_digest_follows_the_dataset_files(project):
    root = project / "resources/data/seg"
    first = dataset_files_digest(root)
    assert first == dataset_files_digest(root) and len(first) == 64  # stable: nothing read but stats
    image = sorted((project / VAL).glob("*.jpg"))[0]
    _repaint(image, seed=3)
    assert dataset_files_digest(root) != first
    assert dataset_files_digest(project / "nowhere") == ""


# ---- 2. checksummed chunks --------------------------------------------------------------------
def _store(project: Path, compression: str) -> Path:
    cfg = load_config(write_config(project, {"extract": {"dtype": "float16", "compression": compression}}))
    extract(cfg, SEG, "val", progress=False)
    return cfg.store(SEG, "val")


def _damage(file: Path, how: str) -> None:
    data = bytearray(file.read_bytes())
    if how == "bit flip":
        data[len(data) // 2] ^= 0x10
    elif how == "2 KB zeroed":
        data[100 : 100 + 2048] = bytes(min(2048, len(data) - 100))
    elif how == "truncated":
        data = data[: len(data) // 2]
    file.write_bytes(bytes(data))


DAMAGE = [
    ("lz4", "bit flip"),
    ("lz4", "truncated"),
    ("none", "bit flip"),
    ("none", "2 KB zeroed"),
    ("none", "truncated"),
]
NAMED = "array 'acts' chunk 1.0.0.0 (images 4..7) is corrupt"


@pytest.mark.parametrize("compression,how", DAMAGE, ids=[f"{c}-{h}" for c, h in DAMAGE])
def test_a_damaged_chunk_is_named_by_every_reader(project, compression, how):
    store = _store(project, compression)
    reader = CacheReader(store)
    layer = reader.layers[0]
    before = reader.read(layer, 0, 4)  # an intact chunk still reads
    _damage(store / "acts/c/1/0/0/0", how)
    reader = CacheReader(store)
    # CacheReader (probes, quantify, class-F1, statistics)
    with pytest.raises(ChunkCorruptError, match=re.escape(f"{store}: {NAMED}")):
        reader.read(layer, 4, 8)
    assert np.array_equal(reader.read(layer, 0, 4), before)
    # xarray, through open_cache
    with pytest.raises(ChunkCorruptError, match=re.escape(NAMED)):
        open_cache(store).acts.values  # noqa: B018
    # the SAE's streams: mapped (none) or Blosc-decoded from the files (lz4)
    decoder = ChunkDecoder(reader)
    assert decoder.crc and (decoder.raw if compression == "none" else decoder.direct)
    tok = token_index(reader, "patches")
    order = reader.chunks()
    with pytest.raises(ChunkCorruptError, match=re.escape(NAMED)):
        list(group_batches(reader, layer, order, tok, batch_size=16, buffer_size=64, seed=0))
    with pytest.raises(ChunkCorruptError, match=re.escape(NAMED)):
        list(chunk_rows(reader, layer, order, tok))


def test_a_damaged_label_chunk_is_named_too(project):
    store = _store(project, "lz4")
    _damage(store / "pixel_label/c/2/0/0", "bit flip")
    with pytest.raises(ChunkCorruptError, match=r"array 'pixel_label' chunk 2.0.0 \(images 8..11\)"):
        CacheReader(store).pixel_labels(8, 12)


def test_the_cli_says_it_in_one_line(project, capsys):
    cfg = load_config(write_config(project, CHAIN_OVERRIDES | {"caches": [{"model": "dino", "dataset": "seg"}]}))
    for split in ("train", "val"):
        extract(cfg, SEG, split, progress=False)
    _damage(cfg.store(SEG, "val") / "acts/c/0/1/0/0", "bit flip")
    _one_error_line(capsys, ["probe-seg", "--no-progress"], match="array 'acts' chunk 0.1.0.0 (images 0..3) is corrupt")


def test_the_mapped_path_verifies_the_checksum_before_returning_rows(project):
    store = _store(project, "none")
    reader = CacheReader(store)
    layer = reader.layers[1]
    rows = ChunkDecoder(reader).mapped(layer, 8)
    assert rows is not None and np.array_equal(rows, reader.read(layer, 8, 12).reshape(rows.shape))
    file = store / "acts/c/2/1/0/0"
    assert crc_ok(file.read_bytes())
    _damage(file, "2 KB zeroed")
    with pytest.raises(ChunkCorruptError, match=r"chunk 2.1.0.0 \(images 8..11\)"):
        ChunkDecoder(CacheReader(store)).mapped(layer, 8)


def test_a_missing_acts_chunk_of_a_finalized_store_is_corrupt_not_nan(project):
    store = _store(project, "lz4")
    (store / "acts/c/0/0/0/0").unlink()
    with pytest.raises(ChunkCorruptError, match=r"chunk 0.0.0.0 \(images 0..3\) is corrupt: its chunk file is missing"):
        CacheReader(store).read(CacheReader(store).layers[0], 0, 4)


def test_verify_reports_and_marks_only_the_corrupt_images_then_a_rerun_repairs(project, capsys):
    cfg = load_config(write_config(project, {"extract": {"dtype": "float16"}}))
    extract(cfg, SEG, "val", progress=False)
    store = cfg.store(SEG, "val")
    original = open_cache(store).acts.values
    sentinel = store.with_name("val.complete.json")
    sentinel.write_text("{}")

    from pipeline.__main__ import main

    assert main(["verify", str(store)]) == 0
    out = capsys.readouterr().out
    assert "0 corrupt" in out and "chunks checked" in out

    _damage(store / "acts/c/1/1/0/0", "bit flip")
    result = scan(store)
    assert [(b.array, b.index, b.images) for b in result.bad] == [("acts", (1, 1, 0, 0), (4, 8))]
    line = _one_error_line(capsys, ["verify", str(store)], match="1 corrupt chunks (4 images)")
    assert "--mark-not-done" in line

    assert main(["verify", str(store), "--mark-not-done"]) == 0
    out = capsys.readouterr().out
    assert "corrupt: acts chunk 1.1.0.0 (images 4..7)" in out and "marked 4 images not done (4..7)" in out
    group = zarr.open_group(store, mode="r")
    assert group["done"][:].tolist() == [True] * 4 + [False] * 4 + [True] * 4
    assert group.attrs["complete"] is False and not sentinel.exists()

    report = extract(cfg, SEG, "val", progress=False)  # re-extracts just that chunk, then finalizes
    assert (report.chunks_computed, report.chunks_skipped) == (1, 2)
    assert np.array_equal(open_cache(store).acts.values, original) and not scan(store).bad


def test_stores_without_checksums_still_open_and_name_an_undecodable_chunk(project, monkeypatch, caplog):
    monkeypatch.setattr(store_module, "checksummed", lambda codecs: codecs)  # a store as made before
    store = _store(project, "none")
    meta = json.loads((store / "acts/zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"]] == ["bytes"]
    with caplog.at_level(logging.INFO):
        reader = CacheReader(store)
    assert "made before chunk checksums" in caplog.text
    layer = reader.layers[0]
    whole = reader.read(layer, 0, 12)
    assert np.isfinite(whole).all()
    assert ChunkDecoder(reader).raw and not ChunkDecoder(reader).crc
    _damage(store / "acts/c/1/0/0/0", "truncated")
    with pytest.raises(ChunkCorruptError, match=r"chunk 1.0.0.0 \(images 4..7\) is corrupt: cannot decode"):
        CacheReader(store).read(layer, 4, 8)
    assert not scan(store).checksummed and [b.images for b in scan(store).bad] == [(4, 8)]


@pytest.mark.parametrize("compression", ["lz4", "none"])
def test_checksummed_stores_stream_the_stored_numbers(project, compression):
    store = _store(project, compression)
    acts = open_cache(store).acts.values
    reader = CacheReader(store)
    tok = token_index(reader, "patches")
    batches = group_batches(reader, reader.layers[0], reader.chunks(), tok, batch_size=10**6, buffer_size=1, seed=0)
    got = torch.cat(list(batches)).numpy()
    assert np.array_equal(got, acts[:, 0, reader.n_prefix :].reshape(-1, acts.shape[-1]))


def test_an_edited_image_reschedules_the_extraction_in_the_workflow(project):
    """Snakemake's view: the extraction's params carry the dataset files' stat digest."""
    import yaml
    from test_provenance import _planned, _run_planned

    from helpers import TINY_CONFIG

    raw = json.loads(json.dumps(TINY_CONFIG))
    raw["demo"]["datasets"].pop("seg")  # a dataset on disk, as a real one (the demo's own has no digest)
    raw["demo"].pop("models")
    raw["demo"]["datasets"].pop("cls")
    raw["models"].pop("clip")
    raw["datasets"].pop("cls")
    raw["caches"] = [{"model": "dino", "dataset": "seg"}]
    (project / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    _run_planned(project, list(_planned(project)))
    assert _planned(project) == {}
    image = sorted((project / VAL).glob("*.jpg"))[3]
    _repaint(image, seed=11)
    planned = _planned(project)
    planned.pop("all", None)
    assert planned == {"extract_part": 2, "finalize_cache": 2}, planned  # both splits: one digest per dataset
