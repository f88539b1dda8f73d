"""Issue 24, files: truncated and oversized images are refused naming the file, and every result
is written atomically (disk full leaves no temp and no truncated file, and says so in one line)."""

from __future__ import annotations

import errno
import struct
import time
import zlib
from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from helpers import write_config
from pipeline import atomic
from pipeline.config import CacheRef, load_config
from pipeline.data import BadImageError, Fingerprint, load_mask, load_rgb
from pipeline.extract import extract, split_data
from pipeline.plots import save_chart
from pipeline.sae.checkpoint import save_checkpoint
from pipeline.sae.model import SparseAutoencoder

SEG = CacheRef("dino", "seg")


def _png(width: int, height: int, rows: int, *, interlace: int = 0) -> bytes:
    """An RGB PNG whose chunks are all intact but whose image data holds only ``rows`` rows
    (a complete zlib stream that ends early: the case Pillow decodes without an error)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    raw = b"".join(b"\x00" + bytes(width * 3) for _ in range(rows))  # filter byte + a black row
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, interlace)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


# ---- 3. images ----------------------------------------------------------------------------------
def test_pillow_alone_accepts_the_short_png_this_refuses(tmp_path):
    path = tmp_path / "short.png"
    path.write_bytes(_png(100, 100, 4))  # 96 of 100 rows missing
    with Image.open(path) as img:
        img.load()  # Pillow: no error, the missing rows are zeros
        assert np.asarray(img).shape == (100, 100, 3)
    with pytest.raises(
        BadImageError, match=r"short.png: truncated: its image data ends early \(1,204 of the 30,100 bytes"
    ):
        load_rgb(path)


def test_a_png_cut_short_and_a_jpeg_cut_short_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    for ext in ("png", "jpg"):
        path = tmp_path / f"whole.{ext}"
        Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(path)
        data = path.read_bytes()
        assert load_rgb(path).size == (80, 64)
        cut = tmp_path / f"cut.{ext}"
        cut.write_bytes(data[: len(data) * 2 // 3])
        with pytest.raises(BadImageError, match=rf"cut.{ext}: (cannot decode|truncated)"):
            load_rgb(cut)


def test_complete_pngs_of_every_layout_pass_the_length_check(tmp_path):
    rng = np.random.default_rng(1)
    cases = {
        "rgb": Image.fromarray(rng.integers(0, 256, (33, 17, 3), dtype=np.uint8)),
        "grey": Image.fromarray(rng.integers(0, 256, (9, 31), dtype=np.uint8)),
        "rgba": Image.fromarray(rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)),
        "palette": Image.fromarray(rng.integers(0, 256, (12, 13, 3), dtype=np.uint8)).convert("P"),
        "bits": Image.fromarray(rng.integers(0, 2, (11, 13), dtype=np.uint8) * 255).convert("1"),
        "sixteen": Image.fromarray(rng.integers(0, 65535, (6, 10), dtype=np.uint16)),
    }
    for name, img in cases.items():
        for interlace in (0, 1):
            path = tmp_path / f"{name}-{interlace}.png"
            img.save(path, interlace=interlace) if interlace else img.save(path)
            assert load_rgb(path).size == img.size, name
    short = tmp_path / "interlaced-short.png"
    short.write_bytes(_png(40, 40, 3, interlace=1))
    with pytest.raises(BadImageError, match="truncated"):
        load_rgb(short)


def test_a_header_over_the_pixel_budget_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png(13000, 13000, 4))  # 169 megapixels declared in a few hundred bytes
    assert path.stat().st_size < 1000
    t0 = time.perf_counter()
    with pytest.raises(
        BadImageError, match=r"bomb.png: 13000x13000 \(WxH\) is 169,000,000 pixels, over the budget of 40,000,000"
    ):
        load_rgb(path, max_pixels=40_000_000)
    assert time.perf_counter() - t0 < 1.0  # nothing was decoded (decoding takes seconds and 0.5 GB)
    mask = tmp_path / "mask.png"
    Image.fromarray(np.zeros((30, 30), dtype=np.uint8)).save(mask)
    with pytest.raises(Exception, match=r"unreadable mask .*mask.png .*over the budget of 100"):
        load_mask(mask, image_path=path, image_size=(30, 30), max_pixels=100)


def test_the_fingerprint_hashes_the_bytes_it_decoded(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.full((4, 5, 3), 9, dtype=np.uint8)).save(path)
    fp = Fingerprint()
    load_rgb(path, fingerprint=fp)
    import hashlib

    digest = hashlib.blake2b(path.read_bytes(), digest_size=16).digest()
    row = fp.row()
    assert row.dtype == np.uint64 and int(row[0]) == path.stat().st_size and int(row[1]) == path.stat().st_mtime_ns
    assert int(row[2]).to_bytes(8, "big") + int(row[3]).to_bytes(8, "big") == digest


@pytest.mark.parametrize("on_bad_image", ["error", "skip"])
def test_extraction_refuses_a_short_png_by_name(project, on_bad_image):
    cfg = load_config(write_config(project, {"extract": {"on_bad_image": on_bad_image}}))
    victim = split_data(cfg, "seg", "val").samples[6].image
    victim.write_bytes(_png(56, 56, 3))  # a .jpg name, PNG bytes: Pillow reads the content
    if on_bad_image == "error":
        with pytest.raises(BadImageError, match=rf"{victim.name}.*truncated"):
            extract(cfg, SEG, "val", progress=False)
        return
    report = extract(cfg, SEG, "val", progress=False)
    assert [b["index"] for b in report.bad_images] == [6] and "truncated" in report.bad_images[0]["reason"]


def test_extraction_applies_the_pixel_budget(project):
    cfg = load_config(write_config(project, {"extract": {"max_image_pixels": 56 * 56 - 1}}))
    with pytest.raises(BadImageError, match=r"56x56 \(WxH\) is 3,136 pixels, over the budget of 3,135"):
        extract(cfg, SEG, "val", progress=False)


# ---- 5. atomic writes ---------------------------------------------------------------------------
def _no_temp_left(folder: Path) -> None:
    assert not [p.name for p in folder.rglob("*") if ".tmp" in p.name], list(folder.rglob("*"))


def test_replacing_keeps_the_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "sweep.csv"
    target.write_text("old\n")

    def disk_full_halfway(path, **kwargs):
        Path(path).write_text("new, trunc")
        raise OSError(errno.ENOSPC, "No space left on device")

    table = pd.DataFrame({"a": [1]})
    table.to_csv = disk_full_halfway  # type: ignore[method-assign]
    with pytest.raises(OSError) as info:
        atomic.write_csv(table, target)
    assert info.value.errno == errno.ENOSPC
    assert target.read_text() == "old\n"
    _no_temp_left(tmp_path)
    atomic.write_json(tmp_path / "x.json", {"a": 1})
    assert (tmp_path / "x.json").read_text() == '{"a": 1}\n'


def test_a_chart_is_never_left_half_written(tmp_path, monkeypatch):
    chart = alt.Chart(pd.DataFrame({"x": [1, 2], "y": [3, 4]})).mark_line().encode(x="x", y="y")
    paths = save_chart(chart, tmp_path / "sweep")
    assert [p.name for p in paths] == ["sweep.html", "sweep.png", "sweep.svg"] and all(p.stat().st_size for p in paths)
    before = paths[0].read_bytes()
    real = alt.Chart.save

    def full_disk(self, fp, *args, **kwargs):
        real(self, fp, *args, **kwargs)
        with open(fp, "r+b") as f:
            f.truncate(10)  # the bytes that fitted
        raise OSError(errno.ENOSPC, "No space left on device", str(fp))

    monkeypatch.setattr(alt.Chart, "save", full_disk)
    with pytest.raises(OSError):
        save_chart(chart, tmp_path / "sweep")
    assert paths[0].read_bytes() == before  # the old chart, whole
    with pytest.raises(OSError):
        save_chart(chart, tmp_path / "history")
    assert not (tmp_path / "history.html").exists()
    _no_temp_left(tmp_path)


def test_torch_disk_full_in_a_checkpoint_is_disk_full(tmp_path, monkeypatch):
    sae = SparseAutoencoder(8, 16)
    target = tmp_path / "members" / "m.pt"
    save_checkpoint(target, sae, cfg={"a": 1}, scaling=None)
    good = target.read_bytes()

    def torch_full(obj, f, *args, **kwargs):
        f.write(b"\x00" * 100)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4416 vs 4304")

    monkeypatch.setattr(torch, "save", torch_full)
    with pytest.raises(OSError) as info:
        save_checkpoint(target, sae, cfg={"a": 2}, scaling=None)
    assert info.value.errno == errno.ENOSPC and str(target) in str(info.value)
    assert target.read_bytes() == good
    _no_temp_left(tmp_path)


def test_safetensors_disk_full_is_disk_full_too(tmp_path, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    from pipeline.probes import linear

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 10)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OSError) as info:
        linear.save_probe(tmp_path / "best", {"weight": torch.zeros(2, 3), "bias": torch.zeros(2)}, meta={})
    assert info.value.errno == errno.ENOSPC and "best.safetensors" in str(info.value)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # neither the tensors nor a temp file


def test_the_cli_reports_torch_disk_full_in_one_line(project, capsys, monkeypatch):
    from pipeline.__main__ import main
    from pipeline.stages import STAGES

    def train(ctx, args):
        save_checkpoint(project / "sae.pt", SparseAutoencoder(4, 8), cfg={}, scaling=None)

    monkeypatch.setattr(
        torch,
        "save",
        lambda *a, **k: (_ for _ in ()).throw(
            RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1 vs 2")
        ),
    )
    monkeypatch.setattr(type(STAGES["finalize"]), "run", lambda self, ctx, args: train(ctx, args))
    rc = main(["finalize", "--model", "dino", "--dataset", "seg", "--split", "val"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: disk full") and "sae.pt" in err[0], err
    _no_temp_left(project)


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs (where this machine lets the tests mount one: root, Linux), else skip."""
    import shutil
    import subprocess

    folder = tmp_path / "small"
    folder.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_a_real_full_disk_leaves_no_partial_result(small_disk):
    sae = SparseAutoencoder(64, 512)  # ~260 KB of weights: more than the disk holds
    with pytest.raises(OSError) as info:
        save_checkpoint(small_disk / "sae.pt", sae, cfg={}, scaling=None)
    assert info.value.errno == errno.ENOSPC
    assert list(small_disk.iterdir()) == []  # no sae.pt, no temp file

    (small_disk / "ballast").write_bytes(b"\0" * 60_000)  # a few KB left: the chart's PNG does not fit
    chart = alt.Chart(pd.DataFrame({"x": range(200), "y": range(200)})).mark_point().encode(x="x", y="y")
    with pytest.raises(OSError) as info:
        save_chart(chart, small_disk / "sweep")
    assert info.value.errno == errno.ENOSPC
    left = sorted(p.name for p in small_disk.iterdir())
    assert all(not name.startswith(".") for name in left), left  # no temp files
    for name in left:  # whatever was written whole (the HTML may have fitted) is whole
        if name.endswith(".html"):
            assert (small_disk / name).read_text().rstrip().endswith("</html>")
