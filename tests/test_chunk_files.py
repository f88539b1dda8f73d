"""``pipeline.cache.chunk_files``: chunk files written without zarr's codec pipeline are the
files zarr writes, byte for byte, and what it cannot write is left to zarr."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

import pipeline.cache.store as store_module
from pipeline.cache import CacheReader, StoreLayout, create_or_open, finalize, write_chunk
from pipeline.cache.chunk_files import chunk_format, write_whole_chunks

N, CHUNK, GRID, D = 10, 4, (2, 3), 8  # 10 images in chunks of 4: the last chunk holds 2


def _layout(compression: str, dtype: str, task: str, shard_images: int = 0) -> StoreLayout:
    return StoreLayout(
        image_ids=tuple(f"img{i}" for i in range(N)),
        layers=(1, 3),
        token_kinds=("cls", *("patch",) * (GRID[0] * GRID[1])),
        grid=GRID,
        d_model=D,
        dtype=dtype,
        chunk_images=CHUNK,
        task=task,
        mask_size=4 if task == "segmentation" else None,
        compression=compression,
        shard_images=shard_images,
    )


def _chunks(layout: StoreLayout, seed: int, *, bad_at: int | None) -> list[tuple[int, dict[str, np.ndarray]]]:
    """Every chunk's arrays, as the extraction passes them (random values; ``bad`` all False,
    the fill value, except image ``bad_at``)."""
    rng = np.random.default_rng(seed)
    out = []
    for s in range(0, N, CHUNK):
        b = min(N, s + CHUNK) - s
        bad = np.zeros(b, bool)
        if bad_at is not None and s <= bad_at < s + b:
            bad[bad_at - s] = True
        arrays = {
            "acts": rng.standard_normal((b, len(layout.layers), layout.n_tokens, D)).astype(layout.dtype),
            "fingerprint": rng.integers(0, 2**63, (b, 4), dtype=np.uint64),
            "bad": bad,
            "bad_reason": np.array(["unreadable" if x else "" for x in bad], dtype=object),
        }
        if layout.task == "segmentation":
            p = layout.n_patches
            arrays |= {
                "patch_label": rng.integers(0, 5, (b, p)).astype(np.uint16),
                "patch_purity": rng.uniform(0, 1, (b, p)).astype(np.float16),
                "pixel_label": rng.integers(0, 5, (b, 4, 4)),  # int64: cast to the array's uint16, as zarr casts
            }
        else:
            arrays["label"] = rng.integers(0, 3, b).astype(np.int32)
        out.append((s, arrays))
    return out


def _write(path: Path, layout: StoreLayout, rounds: list[list[tuple[int, dict]]]) -> zarr.Group:
    attrs = {"config_hash": "h", "task": layout.task, "n_blocks": 4, "n_prefix_tokens": 1, "grid": list(GRID),
             "class_names": ["other", "a", "b", "c", "d"]}  # fmt: skip
    group = create_or_open(path, layout, attrs)
    for chunks in rounds:
        for start, arrays in chunks:
            write_chunk(group, start, arrays)
    return group


def _files(root: Path) -> dict[str, bytes]:
    """Every file of a store but the root ``zarr.json`` (its attrs hold a per-store generation id)."""
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()} | {
        "zarr.json": b""
    }


@pytest.mark.parametrize(
    ("compression", "dtype", "task"),
    [
        ("lz4", "float16", "segmentation"),
        ("none", "float16", "segmentation"),
        ("lz4", "float32", "classification"),
        ("none", "float32", "classification"),
    ],
)
def test_direct_chunk_files_are_the_files_zarr_writes(tmp_path, monkeypatch, compression, dtype, task):
    layout = _layout(compression, dtype, task)
    # two rounds, as a resume rewrites a chunk: image 5 bad, then (second round) no image bad, so
    # the chunk of `bad` that held True becomes all fill value and its file must go
    rounds = [_chunks(layout, 0, bad_at=5), _chunks(layout, 1, bad_at=None)]
    taken: list[tuple[str, bool]] = []

    def recording(array, *args, **kwargs):
        wrote = write_whole_chunks(array, *args, **kwargs)
        taken.append((array.basename, wrote))
        return wrote

    monkeypatch.setattr(store_module, "write_whole_chunks", recording)
    _write(tmp_path / "direct.zarr", layout, rounds)
    monkeypatch.setattr(store_module, "write_whole_chunks", lambda *args, **kwargs: False)
    _write(tmp_path / "zarr.zarr", layout, rounds)

    direct, by_zarr = _files(tmp_path / "direct.zarr"), _files(tmp_path / "zarr.zarr")
    assert sorted(direct) == sorted(by_zarr)
    for name in direct:
        assert direct[name] == by_zarr[name], name
    # every per-image array but the string one was written directly, every time
    per_image = {"acts", "done", "fingerprint", "bad"} | (
        {"patch_label", "patch_purity", "pixel_label"} if task == "segmentation" else {"label"}
    )
    assert {name for name, wrote in taken if wrote} == per_image
    assert {name for name, wrote in taken if not wrote} == {"bad_reason"}
    # the bad chunk's file is gone after the second round (all fill value), as zarr deletes it
    assert not any(name.startswith("bad/c/") for name in direct)
    assert sum(name.startswith("acts/c/") for name in direct) == 3 * 2  # 3 chunks x 2 layers, the last padded
    # and it reads back as written
    finalize(tmp_path / "direct.zarr")
    reader = CacheReader(tmp_path / "direct.zarr")
    last = rounds[-1]
    assert np.array_equal(reader.read(3, 8, 10), last[2][1]["acts"][:, 1])
    if task == "segmentation":
        group = zarr.open_group(tmp_path / "direct.zarr", mode="r")
        assert np.array_equal(group["pixel_label"][4:8], last[1][1]["pixel_label"])


def test_what_zarr_must_write_is_left_to_it(tmp_path):
    sharded = _write(tmp_path / "sharded.zarr", _layout("lz4", "float16", "segmentation", shard_images=8), [])
    plain = _write(tmp_path / "plain.zarr", _layout("lz4", "float16", "segmentation"), [])
    acts = plain["acts"]
    assert isinstance(acts, zarr.Array)
    values = np.ones((CHUNK, 2, 7, D), np.float16)
    folder = tmp_path / "plain.zarr" / "acts"
    fmt = chunk_format(acts)
    assert fmt.kind == "blosc" and fmt.crc and not fmt.shard_images
    # off a chunk boundary, or ending inside a chunk that is not the array's last: zarr's job
    assert not write_whole_chunks(acts, folder, fmt, 2, values, write_empty=True)
    assert not write_whole_chunks(acts, folder, fmt, 0, values[:3], write_empty=True)
    assert not write_whole_chunks(acts, folder, fmt, 0, values[:, :1], write_empty=True)  # another shape
    assert not (folder / "c").exists()
    # a sharded array, and a string array
    sharded_acts = sharded["acts"]
    assert isinstance(sharded_acts, zarr.Array)
    assert chunk_format(sharded_acts).shard_images == 8
    assert not write_whole_chunks(
        sharded_acts, tmp_path / "sharded.zarr" / "acts", chunk_format(sharded_acts), 0, values, write_empty=True
    )
    reasons = plain["bad_reason"]
    assert isinstance(reasons, zarr.Array) and chunk_format(reasons).kind is None


def test_a_write_that_dies_midway_leaves_the_old_chunk_file(tmp_path, monkeypatch):
    """Each chunk file is replaced atomically (as zarr's local store writes): an error (or a
    kill) while the new bytes are written leaves the old file whole, never a short one."""
    import pipeline.cache.chunk_files as chunk_files

    layout = _layout("none", "float16", "segmentation")
    group = _write(tmp_path / "s.zarr", layout, [_chunks(layout, 0, bad_at=None)])
    chunk = tmp_path / "s.zarr" / "acts" / "c" / "1" / "0" / "0" / "0"
    old = chunk.read_bytes()

    def dies(data):
        raise OSError("disk gone")

    monkeypatch.setattr(chunk_files.google_crc32c, "value", dies)  # after the bytes, before the checksum
    with pytest.raises(OSError, match="disk gone"):
        write_chunk(group, 4, _chunks(layout, 1, bad_at=None)[1][1])
    assert chunk.read_bytes() == old
    assert not list((tmp_path / "s.zarr").rglob("*.partial"))
