"""Bad input gets a clear error naming the file, key or value, and loses nothing computed."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from helpers import run_cli, write_config
from pipeline.cache import open_cache
from pipeline.config import CacheRef, ConfigError, load_config
from pipeline.data import BadImageError, MaskError
from pipeline.extract import extract

CLS = CacheRef("clip", "cls")
SEG = CacheRef("dino", "seg")


# ---- config ---------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides,expected",
    [
        (
            {"extract": {"bogus_key": 1}},
            r"key extract: Additional properties are not allowed \('bogus_key' was unexpected\)",
        ),
        ({"extract": {"batch_size": "sixteen"}}, r"key extract/batch_size: 'sixteen' is not of type 'integer'"),
        ({"extract": {"dtype": "bfloat16"}}, r"key extract/dtype: 'bfloat16' is not one of"),
        ({"models": {"dino": {"family": "resnet"}}}, r"key models/dino/family: 'resnet' is not one of"),
        ({"caches": [{"model": "nope", "dataset": "seg"}]}, r"key caches/0/model: 'nope' is not in models"),
    ],
)
def test_config_errors_name_the_key(tmp_path, overrides, expected):
    path = write_config(tmp_path, overrides)
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_cli_reports_config_error_in_one_line(tmp_path):
    write_config(tmp_path, {"extract": {"bogus_key": 1}})
    proc = run_cli(["extract", "--model", "dino", "--dataset", "seg", "--split", "val"], tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and "bogus_key" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---- images of every mode ---------------------------------------------------
def _image_folder(root, images: dict[str, Image.Image]):
    """A pre-split image folder: train/<class>/<name>.png (class = the name's first letter) and one val image."""
    for name, img in images.items():
        (root / "train" / name[0]).mkdir(parents=True, exist_ok=True)
        img.save(root / "train" / name[0] / f"{name}.png")
    (root / "val" / "a").mkdir(parents=True)
    Image.new("RGB", (64, 64), (1, 2, 3)).save(root / "val" / "a" / "v.png")


def test_every_image_mode_is_converted(project):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    rgb = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    palette_img = Image.fromarray(gray, "L").convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    images = {
        "a_gray": Image.fromarray(gray, "L"),
        "a_gray_as_rgb": Image.fromarray(np.stack([gray] * 3, -1), "RGB"),
        "b_rgba": Image.fromarray(np.concatenate([rgb, np.full((64, 64, 1), 7, np.uint8)], -1), "RGBA"),
        "b_rgba_as_rgb": Image.fromarray(rgb, "RGB"),
        "c_palette": palette_img,
        "c_palette_as_rgb": palette_img.convert("RGB"),
        "d_16bit": Image.fromarray(gray.astype("<u2") * 257),
        "d_16bit_as_rgb": Image.fromarray(np.stack([gray] * 3, -1), "RGB"),
    }
    root = project / "modes"
    _image_folder(root, images)
    (root / "train" / "a" / "e_cmyk.jpg").parent.mkdir(exist_ok=True)
    Image.fromarray(rgb, "RGB").convert("CMYK").save(root / "train" / "a" / "e_cmyk.tif")
    write_config(project, {"datasets": {"cls": {"root": "modes"}}})
    cfg = load_config("config.yaml")
    extract(cfg, CLS, "train", progress=False)
    ds = open_cache(cfg.store(CLS, "train"))
    acts = {i.split("/")[-1].split(".")[0]: ds.acts.sel(image=i).values for i in ds.image.values}
    for mode in ("a_gray", "b_rgba", "c_palette", "d_16bit"):
        np.testing.assert_array_equal(acts[mode], acts[f"{mode}_as_rgb"], err_msg=mode)
    assert np.isfinite(acts["e_cmyk"]).all() and ds.done.values.all()


# ---- unreadable files ------------------------------------------------------
def _folder_with_a_bad_file(project, bad_bytes: bytes):
    good = {f"{c}_{i:02d}": Image.new("RGB", (64, 64), (i * 20, 0, 0)) for c in "ab" for i in range(5)}
    root = project / "bad"
    _image_folder(root, good)
    (root / "train" / "b" / "b_99.png").write_bytes(bad_bytes)  # last image: its chunk is the last one
    return root


def _truncated_png() -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()[:300]


@pytest.mark.parametrize("bad_bytes", [_truncated_png(), b"this is not an image\n"], ids=["truncated", "not-an-image"])
def test_bad_image_stops_the_run_naming_the_file_and_keeps_finished_chunks(project, bad_bytes):
    root = _folder_with_a_bad_file(project, bad_bytes)
    write_config(project, {"datasets": {"cls": {"root": "bad"}}})
    cfg = load_config("config.yaml")
    with pytest.raises(BadImageError, match=r"bad/train/b/b_99\.png"):
        extract(cfg, CLS, "train", progress=False)
    partial = open_cache(cfg.store(CLS, "train"), require_complete=False)
    assert partial.done.values.tolist() == [True] * 8 + [False] * 3  # 11 images, chunks of 4: two chunks kept

    # the CLI says it in one line
    proc = run_cli(["extract", "--model", "clip", "--dataset", "cls", "--split", "train"], project, check=False)
    assert proc.returncode == 2 and "b_99.png" in proc.stderr and "Traceback" not in proc.stderr
    assert "skipped" not in proc.stdout

    # fix the file: the re-run computes only the unfinished chunk
    Image.new("RGB", (64, 64)).save(root / "train" / "b" / "b_99.png")
    report = extract(cfg, CLS, "train", progress=False)
    assert report.chunks_skipped == 2 and report.chunks_computed == 1


def test_skip_mode_records_and_marks_the_bad_image(project):
    _folder_with_a_bad_file(project, b"garbage")
    write_config(project, {"datasets": {"cls": {"root": "bad"}}, "extract": {"on_bad_image": "skip"}})
    cfg = load_config("config.yaml")
    report = extract(cfg, CLS, "train", progress=False)
    ds = open_cache(cfg.store(CLS, "train"))
    bad_id = "train/b/b_99.png"
    assert [r["id"] for r in ds.attrs["bad_images"]] == [bad_id] and ds.attrs["n_bad"] == 1
    assert "b_99.png" in ds.attrs["bad_images"][0]["reason"] or ds.attrs["bad_images"][0]["reason"]
    assert bool(ds.bad.sel(image=bad_id)) and bool(ds.done.sel(image=bad_id))
    assert int(ds.label.sel(image=bad_id)) == -1  # never silently given a class
    assert ds.sizes["image"] == 11  # the row is kept, not dropped
    assert [r["id"] for r in report.bad_images] == [bad_id]


def test_mask_size_mismatch_names_both_files(project):
    cfg = load_config("config.yaml")
    from pipeline.extract import split_data

    sample = split_data(cfg, "seg", "val").samples[2]
    Image.new("L", (30, 20)).save(sample.mask)
    with pytest.raises(MaskError) as info:
        extract(cfg, SEG, "val", progress=False)
    assert str(sample.mask) in str(info.value) and str(sample.image) in str(info.value)
