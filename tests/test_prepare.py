"""pipeline.prepare: official archives -> image-folder layout (tiny fake archives built here)."""

from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from pipeline import prepare as prep

# --------------------------------------------------------------------------- helpers


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# Caltech-101: 101_ObjectCategories/<class>/image_NNNN.jpg, with BACKGROUND_Google
CALTECH = {"Faces": 3, "accordion": 2, "yin_yang": 1, "BACKGROUND_Google": 2}


def _caltech_files() -> dict[str, bytes]:
    files = {}
    seed = 0
    for cls, n in CALTECH.items():
        for i in range(1, n + 1):
            files[f"101_ObjectCategories/{cls}/image_{i:04d}.jpg"] = _jpeg(seed)
            seed += 1
    files["101_ObjectCategories/BACKGROUND_Google/tmp"] = b"not an image"
    return files


def _caltech_zip(tmp: Path) -> Path:
    """The official caltech-101.zip: caltech-101/101_ObjectCategories.tar.gz inside."""
    inner = _tar(tmp / "inner.tar.gz", _caltech_files())
    z = tmp / "caltech-101.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(inner, "caltech-101/101_ObjectCategories.tar.gz")
        zf.writestr("caltech-101/show_annotation.m", "% unused")
        zf.writestr("__MACOSX/caltech-101/._101_ObjectCategories.tar.gz", b"junk")
    inner.unlink()
    return z


# CUB-200-2011: 3 classes, 7 images
CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
CUB_IMAGES = [  # (class id, file name, is_train)
    (1, "Black_Footed_Albatross_0046_18.jpg", 1),
    (1, "Black_Footed_Albatross_0009_34.jpg", 0),
    (1, "Black_Footed_Albatross_0002_55.jpg", 1),
    (2, "Laysan_Albatross_0002_1027.jpg", 0),
    (2, "Laysan_Albatross_0003_1033.jpg", 1),
    (3, "Sooty_Albatross_0001_1071.jpg", 0),
    (3, "Sooty_Albatross_0002_796339.jpg", 0),
]


def _cub_files() -> dict[str, bytes]:
    r = "CUB_200_2011/"
    files = {
        r + "classes.txt": "".join(f"{i} {c}\n" for i, c in enumerate(CUB_CLASSES, 1)).encode(),
        r + "images.txt": "".join(
            f"{i} {CUB_CLASSES[c - 1]}/{f}\n" for i, (c, f, _) in enumerate(CUB_IMAGES, 1)
        ).encode(),
        r + "image_class_labels.txt": "".join(f"{i} {c}\n" for i, (c, _, _) in enumerate(CUB_IMAGES, 1)).encode(),
        r + "train_test_split.txt": "".join(f"{i} {t}\n" for i, (_, _, t) in enumerate(CUB_IMAGES, 1)).encode(),
        r + "README": b"readme",
        "attributes.txt": b"1 has_bill_shape::curved\n",
    }
    for i, (c, f, _) in enumerate(CUB_IMAGES, 1):
        files[f"{r}images/{CUB_CLASSES[c - 1]}/{f}"] = _jpeg(100 + i)
    return files


# Flowers-102: 10 images, labels 1-based, three official id sets
FLOWER_LABELS = [3, 1, 1, 2, 3, 2, 1, 3, 2, 1]  # image i (1-based) -> class
FLOWER_SETS = {"trnid": [2, 4], "valid": [1, 6], "tstid": [3, 5, 7, 8, 9, 10]}


def _flowers_src(tmp: Path) -> Path:
    src = tmp / "flowers_src"
    src.mkdir()
    _tar(src / "102flowers.tgz", {f"jpg/image_{i:05d}.jpg": _jpeg(200 + i) for i in range(1, len(FLOWER_LABELS) + 1)})
    savemat(src / "imagelabels.mat", {"labels": np.array([FLOWER_LABELS], dtype=np.uint8)})
    savemat(src / "setid.mat", {k: np.array([v], dtype=np.uint16) for k, v in FLOWER_SETS.items()})
    return src


# --------------------------------------------------------------------------- Caltech-101


def test_caltech_zip_drops_background_and_is_idempotent(tmp_path):
    z = _caltech_zip(tmp_path)
    out = tmp_path / "out"
    counts = prep.prepare("caltech101", z, out)
    assert counts == {"all": {"Faces": 3, "accordion": 2, "yin_yang": 1}}
    assert not (out / "BACKGROUND_Google").exists()
    assert sorted(p.name for p in out.iterdir()) == ["Faces", "PREPARED.json", "accordion", "yin_yang"]
    src_files = _caltech_files()
    assert (out / "accordion" / "image_0002.jpg").read_bytes() == src_files[
        "101_ObjectCategories/accordion/image_0002.jpg"
    ]
    rec = json.loads((out / "PREPARED.json").read_text())
    assert rec["dataset"] == "caltech101"
    assert rec["source"] == str(z)
    assert rec["split"] is None
    assert rec["totals"] == {"all": 6}
    assert rec["counts"] == counts
    # no extraction leftovers next to out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["caltech-101.zip", "out"]

    before = _tree(out)
    (out / "split_seed0.json").write_text("{}")  # e.g. the loader's saved split: kept
    assert prep.prepare("caltech101", z, out) == counts
    after = _tree(out)
    assert after.pop("split_seed0.json") == b"{}"
    assert after == before


def test_caltech_keep_background_from_extracted_folder_hardlinks(tmp_path):
    src = _write_tree(tmp_path / "caltech-101", _caltech_files())  # holds 101_ObjectCategories/
    out = tmp_path / "out"
    counts = prep.prepare("caltech101", src, out, keep_background=True)
    assert counts["all"]["BACKGROUND_Google"] == 2  # the 'tmp' file is skipped
    assert sum(counts["all"].values()) == 8
    a = out / "Faces" / "image_0003.jpg"
    b = src / "101_ObjectCategories" / "Faces" / "image_0003.jpg"
    assert os.stat(a).st_ino == os.stat(b).st_ino  # hard link
    rec = json.loads((out / "PREPARED.json").read_text())
    assert rec["skipped_non_images"] == 1
    # re-run without the flag drops the background folder again
    counts2 = prep.prepare("caltech101", src, out)
    assert "BACKGROUND_Google" not in counts2["all"]
    assert not (out / "BACKGROUND_Google").exists()


def test_copy_fallback_when_links_fail(tmp_path, monkeypatch):
    src = _write_tree(tmp_path / "src", _caltech_files())

    def no_link(*a, **k):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(prep.os, "link", no_link)
    out = tmp_path / "out"
    prep.prepare("caltech101", src / "101_ObjectCategories", out)
    a = out / "Faces" / "image_0001.jpg"
    b = src / "101_ObjectCategories" / "Faces" / "image_0001.jpg"
    assert a.read_bytes() == b.read_bytes()
    assert os.stat(a).st_ino != os.stat(b).st_ino


def test_inner_caltech_tarball_directly(tmp_path):
    t = _tar(tmp_path / "101_ObjectCategories.tar.gz", _caltech_files())
    counts = prep.prepare("caltech101", t, tmp_path / "out")
    assert sum(counts["all"].values()) == 6


# --------------------------------------------------------------------------- CUB


def test_cub_official_split(tmp_path):
    tgz = _tar(tmp_path / "CUB_200_2011.tgz", _cub_files())
    out = tmp_path / "out"
    counts = prep.prepare("cub", tgz, out)
    assert counts == {
        "train": {"001.Black_footed_Albatross": 2, "002.Laysan_Albatross": 1},
        "test": {"001.Black_footed_Albatross": 1, "002.Laysan_Albatross": 1, "003.Sooty_Albatross": 2},
    }
    assert (out / "train/001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg").is_file()
    assert (out / "test/001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg").is_file()
    assert (out / "test/003.Sooty_Albatross/Sooty_Albatross_0002_796339.jpg").read_bytes() == _cub_files()[
        "CUB_200_2011/images/003.Sooty_Albatross/Sooty_Albatross_0002_796339.jpg"
    ]
    assert not (out / "train/003.Sooty_Albatross").exists()
    assert sorted(p.name for p in out.iterdir()) == ["PREPARED.json", "test", "train"]
    rec = json.loads((out / "PREPARED.json").read_text())
    assert rec["totals"] == {"train": 3, "test": 4}
    before = _tree(out)
    prep.prepare("cub", tgz, out)
    assert _tree(out) == before


def test_cub_extracted_folder_and_missing_file(tmp_path):
    files = _cub_files()
    src = _write_tree(tmp_path / "dl", files)
    counts = prep.prepare("cub", src, tmp_path / "out")  # folder holding CUB_200_2011/
    assert sum(map(sum, (c.values() for c in counts.values()))) == 7
    (src / "CUB_200_2011/train_test_split.txt").unlink()
    with pytest.raises(FileNotFoundError, match="train_test_split.txt"):
        prep.prepare("cub", src / "CUB_200_2011", tmp_path / "out2")
    with pytest.raises(FileNotFoundError) as e:
        prep.prepare("cub", src / "CUB_200_2011", tmp_path / "out2")
    assert str(src / "CUB_200_2011" / "train_test_split.txt") in str(e.value)
    assert not (tmp_path / "out2").exists() or not any((tmp_path / "out2").iterdir())


# --------------------------------------------------------------------------- Flowers-102


def test_flowers_official_split(tmp_path):
    src = _flowers_src(tmp_path)
    out = tmp_path / "out"
    counts = prep.prepare("flowers102", src, out)
    # train = trnid + valid = images 2, 4, 1, 6; test = tstid = 3, 5, 7, 8, 9, 10
    train = sorted(p.relative_to(out).as_posix() for p in (out / "train").rglob("*.jpg"))
    test = sorted(p.relative_to(out).as_posix() for p in (out / "test").rglob("*.jpg"))
    assert train == [
        "train/class_001/image_00002.jpg",
        "train/class_002/image_00004.jpg",
        "train/class_002/image_00006.jpg",
        "train/class_003/image_00001.jpg",
    ]
    assert test == [
        "test/class_001/image_00003.jpg",
        "test/class_001/image_00007.jpg",
        "test/class_001/image_00010.jpg",
        "test/class_002/image_00009.jpg",
        "test/class_003/image_00005.jpg",
        "test/class_003/image_00008.jpg",
    ]
    assert counts == {
        "train": {"class_001": 1, "class_002": 2, "class_003": 1},
        "test": {"class_001": 3, "class_002": 1, "class_003": 2},
    }
    rec = json.loads((out / "PREPARED.json").read_text())
    assert rec["split_rule"] == "setid.mat: trnid + valid -> train, tstid -> test"
    before = _tree(out)
    prep.prepare("flowers102", src / "102flowers.tgz", out)  # the tgz path, .mat files beside it
    rec2 = json.loads((out / "PREPARED.json").read_text())
    assert rec2["source"] == str(src / "102flowers.tgz")
    after = _tree(out)
    assert {k: v for k, v in after.items() if k != "PREPARED.json"} == {
        k: v for k, v in before.items() if k != "PREPARED.json"
    }


def test_flowers_missing_setid_names_path(tmp_path):
    src = _flowers_src(tmp_path)
    (src / "setid.mat").unlink()
    with pytest.raises(FileNotFoundError) as e:
        prep.prepare("flowers102", src, tmp_path / "out")
    assert str(src / "setid.mat") in str(e.value)


# --------------------------------------------------------------------------- safety / errors


@pytest.mark.parametrize("bad", ["../evil.jpg", "/tmp/evil.jpg", "101_ObjectCategories/../../evil.jpg"])
def test_path_traversal_member_refused(tmp_path, bad):
    files = _caltech_files()
    files[bad] = b"x"
    t = _tar(tmp_path / "101_ObjectCategories.tar.gz", files)
    out = tmp_path / "sub" / "out"
    with pytest.raises(prep.UnsafeArchiveError, match="refusing"):
        prep.prepare("caltech101", t, out)
    assert not (tmp_path / "evil.jpg").exists()
    assert not (tmp_path / "sub" / "evil.jpg").exists()
    assert not out.exists() or not any(out.iterdir())
    assert [p.name for p in (tmp_path / "sub").iterdir()] == []  # staging removed


def test_zip_traversal_member_refused(tmp_path):
    z = tmp_path / "caltech-101.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("caltech-101/ok.txt", "ok")
        zf.writestr("..\\..\\evil.txt", "x")
    with pytest.raises(prep.UnsafeArchiveError):
        prep.prepare("caltech101", z, tmp_path / "out")


def test_foreign_nonempty_out_is_refused(tmp_path):
    src = _write_tree(tmp_path / "src", _caltech_files())
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("precious")
    with pytest.raises(FileExistsError, match=str(out)):
        prep.prepare("caltech101", src, out)
    assert (out / "mine.txt").read_text() == "precious"
    # a prepared folder of another dataset is refused too
    out2 = tmp_path / "out2"
    prep.prepare("flowers102", _flowers_src(tmp_path), out2)
    with pytest.raises(FileExistsError, match="flowers102"):
        prep.prepare("caltech101", src, out2)


def test_cli_add_parser(tmp_path, capsys):
    src = _write_tree(tmp_path / "src", _caltech_files())
    parser = argparse.ArgumentParser(prog="pipeline")
    prep.add_parser(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "out"
    args = parser.parse_args(["prepare", "caltech101", "--src", str(src), "--out", str(out), "--keep-background"])
    assert args.func(args) == 0
    assert "4 classes" in capsys.readouterr().out
    assert (out / "BACKGROUND_Google").is_dir()
    args = parser.parse_args(["prepare", "flowers102", "--src", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    with pytest.raises(prep.PrepareError, match="nope"):  # one `error:` line via USER_ERRORS (was SystemExit)
        args.func(args)


def test_outputs_read_by_image_folder_loader(tmp_path):
    datasets = pytest.importorskip("pipeline.data.datasets")
    cub = tmp_path / "cub"
    prep.prepare("cub", _tar(tmp_path / "CUB_200_2011.tgz", _cub_files()), cub)
    train = datasets.image_folder(cub, "train", split_file=tmp_path / "unused.json")
    test = datasets.image_folder(cub, "test", split_file=tmp_path / "unused.json")
    assert train.class_names == tuple(CUB_CLASSES)  # official class-id order
    assert (len(train.samples), len(test.samples)) == (3, 4)
    cal = tmp_path / "cal"
    prep.prepare("caltech101", _write_tree(tmp_path / "csrc", _caltech_files()), cal)
    split_file = cal / "split.json"
    tr = datasets.image_folder(cal, "train", split_file=split_file, val_fraction=0.5)
    assert tr.class_names == ("Faces", "accordion", "yin_yang")
    prep.prepare("caltech101", tmp_path / "csrc", cal)  # re-run keeps the saved split valid
    assert datasets.image_folder(cal, "train", split_file=split_file, val_fraction=0.5) == tr
