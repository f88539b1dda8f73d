"""Tests for pipeline.data: image/mask reading, preprocessing geometry, patch labels,
dataset loaders and the synthetic demo generators.  All expected numbers are
computed by hand in the comments next to them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data import (
    BadImageError,
    DatasetError,
    MaskError,
    Preprocess,
    StaleSplitError,
    ade20k,
    crop_geometry,
    image_folder,
    load_mask,
    load_rgb,
    load_split,
    make_classification_demo,
    make_segmentation_demo,
    patch_labels,
    patch_labels_batch,
    preprocess_image,
    preprocess_mask,
    segmentation_folder,
)


def _rgb_of(path: Path) -> np.ndarray:
    img = load_rgb(path)
    assert img.mode == "RGB"
    pixels = np.asarray(img)
    assert pixels.dtype == np.uint8
    return pixels


# --------------------------------------------------------------------------- load_rgb


def test_load_rgb_grey_alpha_and_bilevel_modes(tmp_path):
    Image.new("L", (2, 1), 77).save(tmp_path / "l.png")
    assert _rgb_of(tmp_path / "l.png").tolist() == [[[77, 77, 77]] * 2]

    # Alpha is dropped: the stored colour survives even at alpha 0.
    Image.new("LA", (1, 1), (77, 0)).save(tmp_path / "la.png")
    assert _rgb_of(tmp_path / "la.png").tolist() == [[[77, 77, 77]]]
    Image.new("RGBA", (1, 1), (10, 20, 30, 0)).save(tmp_path / "rgba.png")
    assert _rgb_of(tmp_path / "rgba.png").tolist() == [[[10, 20, 30]]]

    bilevel = Image.new("1", (2, 1), 0)
    bilevel.putpixel((1, 0), 1)
    bilevel.save(tmp_path / "one.png")
    assert _rgb_of(tmp_path / "one.png").tolist() == [[[0, 0, 0], [255, 255, 255]]]


def test_load_rgb_palette_gives_colours_with_and_without_transparency(tmp_path):
    pal = Image.new("P", (3, 1), 0)
    pal.putpalette([0, 0, 0, 10, 200, 30, 250, 5, 6])
    pal.putpixel((1, 0), 1)
    pal.putpixel((2, 0), 2)
    pal.save(tmp_path / "p.png")
    assert _rgb_of(tmp_path / "p.png").tolist() == [[[0, 0, 0], [10, 200, 30], [250, 5, 6]]]
    pal.info["transparency"] = 1  # index 1 transparent -> via RGBA, alpha dropped
    pal.save(tmp_path / "p_transparent.png")
    assert Image.open(tmp_path / "p_transparent.png").info["transparency"] == 1
    assert _rgb_of(tmp_path / "p_transparent.png").tolist() == [[[0, 0, 0], [10, 200, 30], [250, 5, 6]]]


def test_load_rgb_cmyk(tmp_path):
    cmyk = Image.new("CMYK", (3, 1), (0, 0, 0, 0))
    cmyk.putpixel((1, 0), (0, 0, 0, 255))  # full black ink
    cmyk.putpixel((2, 0), (255, 0, 0, 0))  # full cyan: no red
    cmyk.save(tmp_path / "cmyk.tif")
    assert _rgb_of(tmp_path / "cmyk.tif").tolist() == [[[255, 255, 255], [0, 0, 0], [0, 255, 255]]]


def test_load_rgb_sixteen_bit_and_int_scale_to_8_bit(tmp_path):
    # round(v / 257): 65535 -> 255, 257 -> 1, 1000 -> 3.89 -> 4, 128 -> 0.498 -> 0
    values = np.array([[65535, 257, 1000, 128]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "i16.png")
    assert Image.open(tmp_path / "i16.png").mode == "I;16"
    assert _rgb_of(tmp_path / "i16.png")[0, :, 0].tolist() == [255, 1, 4, 0]

    big_endian = Image.new("I;16B", (2, 1))
    big_endian.putpixel((0, 0), 65535)
    big_endian.putpixel((1, 0), 514)  # 514 / 257 = 2
    big_endian.save(tmp_path / "i16b.tif")
    assert Image.open(tmp_path / "i16b.tif").mode == "I;16B"
    assert _rgb_of(tmp_path / "i16b.tif").tolist() == [[[255, 255, 255], [2, 2, 2]]]

    # mode I: clipped to 0..65535 first: 70000 -> 255, -5 -> 0, 514 -> 2
    Image.fromarray(np.array([[70000, -5, 514]], dtype=np.int32)).save(tmp_path / "i32.tif")
    assert Image.open(tmp_path / "i32.tif").mode == "I"
    assert _rgb_of(tmp_path / "i32.tif")[0, :, 0].tolist() == [255, 0, 2]


def test_load_rgb_float_in_unit_range_and_rejects_other_ranges(tmp_path):
    # 0.2 * 255 = 51, 1.0 -> 255, 0.0 -> 0
    Image.fromarray(np.array([[0.2, 1.0, 0.0]], dtype=np.float32)).save(tmp_path / "f.tif")
    assert _rgb_of(tmp_path / "f.tif")[0].tolist() == [[51] * 3, [255] * 3, [0] * 3]
    Image.fromarray(np.array([[0.5, 200.0]], dtype=np.float32)).save(tmp_path / "f255.tif")
    with pytest.raises(BadImageError, match=r"\[0.5, 200\]"):
        load_rgb(tmp_path / "f255.tif")


def test_load_rgb_truncated_text_and_missing_files_raise_naming_the_file(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "whole.jpg", quality=90)
    data = (tmp_path / "whole.jpg").read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImageError) as info:
        load_rgb(truncated)
    assert str(truncated) in str(info.value)
    assert info.value.path == truncated and "truncated" in info.value.reason

    text = tmp_path / "notes.jpg"
    text.write_text("this is not a jpeg\n")
    with pytest.raises(BadImageError) as info:
        load_rgb(text)
    assert str(text) in str(info.value) and "not an image" in str(info.value)

    with pytest.raises(BadImageError, match="no such file"):
        load_rgb(tmp_path / "absent.png")


# --------------------------------------------------------------------------- load_mask


def test_load_mask_palette_returns_indices_not_colours(tmp_path):
    mask = Image.new("P", (3, 2), 0)
    mask.putpalette([0, 0, 0, 128, 64, 0, 0, 0, 0, 200, 0, 0])
    mask.putpixel((1, 0), 3)
    mask.putpixel((2, 1), 1)
    mask.save(tmp_path / "m.png")
    got = load_mask(tmp_path / "m.png", image_path=tmp_path / "img.jpg", image_size=(3, 2))
    assert got.dtype == np.int64 and got.shape == (2, 3)
    assert got.tolist() == [[0, 3, 0], [0, 0, 1]]


def test_load_mask_l_and_sixteen_bit(tmp_path):
    Image.fromarray(np.array([[0, 7], [150, 255]], dtype=np.uint8)).save(tmp_path / "l.png")
    got = load_mask(tmp_path / "l.png", image_path=tmp_path / "i.jpg", image_size=(2, 2))
    assert got.tolist() == [[0, 7], [150, 255]]
    Image.fromarray(np.array([[300, 0, 65535]], dtype=np.uint16)).save(tmp_path / "w.png")
    got = load_mask(tmp_path / "w.png", image_path=tmp_path / "i.jpg", image_size=(3, 1))
    assert got.tolist() == [[300, 0, 65535]] and got.dtype == np.int64


def test_load_mask_size_mismatch_names_both_files_and_sizes(tmp_path):
    Image.new("L", (4, 3)).save(tmp_path / "m.png")
    image_path = tmp_path / "photo.jpg"
    with pytest.raises(MaskError) as info:
        load_mask(tmp_path / "m.png", image_path=image_path, image_size=(5, 3))
    message = str(info.value)
    assert str(tmp_path / "m.png") in message and str(image_path) in message
    assert "4x3" in message and "5x3" in message


def test_load_mask_unreadable_or_colour_mask_raises_naming_it(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    with pytest.raises(MaskError, match=re.escape(str(bad))):
        load_mask(bad, image_path=tmp_path / "i.jpg", image_size=(1, 1))
    Image.new("RGB", (1, 1)).save(tmp_path / "rgb.png")
    with pytest.raises(MaskError, match="mode 'RGB'"):
        load_mask(tmp_path / "rgb.png", image_path=tmp_path / "i.jpg", image_size=(1, 1))


# --------------------------------------------------------------------------- transforms

_HALF = Preprocess(resize=16, crop=14, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.2))


def test_preprocess_validation_names_field_and_value():
    with pytest.raises(ValueError, match=r"crop.*crop=20 resize=16"):
        Preprocess(resize=16, crop=20, mean=(0, 0, 0), std=(1, 1, 1))
    with pytest.raises(ValueError, match=r"resize.*-1"):
        Preprocess(resize=-1, crop=1, mean=(0, 0, 0), std=(1, 1, 1))
    with pytest.raises(ValueError, match=r"interpolation.*'lanczos'"):
        Preprocess(resize=16, crop=14, mean=(0, 0, 0), std=(1, 1, 1), interpolation="lanczos")
    with pytest.raises(ValueError, match=r"std"):
        Preprocess(resize=16, crop=14, mean=(0, 0, 0), std=(1, 0, 1))


def test_crop_geometry_shorter_side_and_rounding():
    # 40x20 -> shorter side 16 -> 32x16; crop 14 -> left (32-14)//2 = 9, top (16-14)//2 = 1
    geo = crop_geometry(40, 20, _HALF)
    assert (geo.resized_W, geo.resized_H, geo.left, geo.top) == (32, 16, 9, 1)
    # portrait 20x21: 21 * 16 / 20 = 16.8 -> 17
    geo = crop_geometry(20, 21, _HALF)
    assert (geo.resized_W, geo.resized_H, geo.left, geo.top) == (16, 17, 1, 1)
    # halves round up: 9 * 2 / 4 = 4.5 -> 5
    tiny = Preprocess(resize=2, crop=2, mean=(0, 0, 0), std=(1, 1, 1))
    assert crop_geometry(9, 4, tiny).resized_W == 5


def test_preprocess_image_normalises_exactly():
    img = Image.new("RGB", (40, 20), (255, 0, 51))
    out = preprocess_image(img, _HALF)
    assert out.shape == (3, 14, 14) and str(out.dtype) == "torch.float32"
    # (1 - .5)/.5 = 1, (0 - .5)/.25 = -2, (0.2 - .5)/.2 = -1.5
    assert out[:, 5, 5].tolist() == pytest.approx([1.0, -2.0, -1.5], abs=1e-6)
    assert float((out - out[:, :1, :1]).abs().max()) == 0.0


def test_mask_keeps_a_vertical_boundary_at_the_image_column():
    # 40x20 image, black for x < 20, white from x = 20; boundary lands at resized
    # column 16, i.e. crop column 16 - 9 = 7.
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, 20:] = 255
    mask_HW = np.zeros((20, 40), dtype=np.int64)
    mask_HW[:, 20:] = 4
    image = preprocess_image(Image.fromarray(pixels), _HALF).numpy()
    mask = preprocess_mask(mask_HW, _HALF)
    assert mask.shape == (14, 14) and mask.dtype == np.int64
    assert (mask[:, :7] == 0).all() and (mask[:, 7:] == 4).all()
    red = image[0] * 0.5 + 0.5  # back to [0, 1]
    assert (red[:, :7] < 0.5).all() and (red[:, 7:] > 0.5).all()


def test_preprocess_mask_never_invents_labels():
    rng = np.random.default_rng(0)
    mask_HW = rng.choice(np.array([0, 3, 17]), size=(33, 57))
    out = preprocess_mask(mask_HW, Preprocess(resize=40, crop=32, mean=(0,) * 3, std=(1,) * 3))
    assert out.shape == (32, 32) and set(np.unique(out)) <= {0, 3, 17}


# --------------------------------------------------------------------------- patch_labels


def test_patch_labels_modes_ties_and_purity():
    mask = np.array(
        [
            [0, 0, 3, 3],
            [5, 5, 3, 3],
            [1, 2, 0, 0],
            [2, 1, 0, 7],
        ]
    )
    labels, purity = patch_labels(mask, 2)
    # patch 0 {0,0,5,5}: tie 0 vs 5 -> class 5 wins; patch 1 all 3; patch 2 {1,2,2,1}:
    # tie between classes -> smaller id 1; patch 3 {0,0,0,7}: 0 is a clear mode.
    assert labels.dtype == np.uint16 and purity.dtype == np.float32
    assert labels.tolist() == [5, 3, 1, 0]
    assert purity.tolist() == [0.5, 1.0, 0.5, 0.75]


def test_patch_labels_clear_mode_and_row_major_order():
    mask = np.zeros((3, 6), dtype=np.int64)
    mask[:, :3] = [[4, 4, 9], [4, 4, 9], [4, 0, 9]]  # 5 of 9 are class 4
    mask[:, 3:] = 2
    labels, purity = patch_labels(mask, 3)
    assert labels.tolist() == [4, 2]
    assert purity.tolist() == [np.float32(5 / 9), 1.0]
    # 2 patch rows x 2 patch cols: order is (0,0), (0,1), (1,0), (1,1)
    grid = np.kron(np.array([[1, 2], [3, 4]]), np.ones((2, 2), dtype=np.int64))
    assert patch_labels(grid, 2)[0].tolist() == [1, 2, 3, 4]


def test_patch_labels_batch_matches_single_masks():
    rng = np.random.default_rng(1)
    masks = rng.integers(0, 4, size=(3, 8, 12))
    labels_BP, purity_BP = patch_labels_batch(masks, 4)
    assert labels_BP.shape == (3, 6) and purity_BP.shape == (3, 6)
    for b in range(3):
        labels_P, purity_P = patch_labels(masks[b], 4)
        assert labels_BP[b].tolist() == labels_P.tolist()
        assert purity_BP[b].tolist() == purity_P.tolist()


def test_patch_labels_rejects_non_multiple_shapes_and_out_of_range_ids():
    with pytest.raises(ValueError, match=r"\(5, 4\).*patch_size=2"):
        patch_labels(np.zeros((5, 4), dtype=np.int64), 2)
    with pytest.raises(ValueError, match="65535"):
        patch_labels(np.full((2, 2), 70000), 2)


# --------------------------------------------------------------------------- demo + ade20k


@pytest.fixture(scope="module")
def seg_demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("seg_demo")
    return make_segmentation_demo(root, n_train=4, n_val=2, n_classes=3, image_size=32, seed=0)


def test_ade20k_on_demo_counts_names_ids_and_aliases(seg_demo):
    train = ade20k(seg_demo.parent, "train")
    assert train.task == "segmentation" and len(train.samples) == 4
    assert train.class_names == ("other", "red-stripes", "blue-dots", "green-checker")
    assert [s.id for s in train.samples] == [f"images/training/ADE_train_{i:08d}.jpg" for i in range(1, 5)]
    first = train.samples[0]
    assert first.image == seg_demo / "images/training/ADE_train_00000001.jpg"
    assert first.mask == seg_demo / "annotations/training/ADE_train_00000001.png"
    assert first.label is None
    assert ade20k(seg_demo, "training") == train  # root may be the ADE folder itself
    val = ade20k(seg_demo.parent, "val")
    assert val == ade20k(seg_demo.parent, "validation")
    assert [s.id for s in val.samples] == [
        "images/validation/ADE_val_00000001.jpg",
        "images/validation/ADE_val_00000002.jpg",
    ]
    with pytest.raises(DatasetError, match="'test'"):
        ade20k(seg_demo, "test")


def test_ade20k_errors_name_the_paths(tmp_path):
    base = make_segmentation_demo(tmp_path, n_train=2, n_val=1, n_classes=2, image_size=16)
    (base / "annotations/training/ADE_train_00000002.png").unlink()
    with pytest.raises(DatasetError) as info:
        ade20k(tmp_path, "train")
    assert str(base / "images/training/ADE_train_00000002.jpg") in str(info.value)
    assert str(base / "annotations/training/ADE_train_00000002.png") in str(info.value)
    (base / "objectInfo150.txt").unlink()
    with pytest.raises(DatasetError, match=re.escape(str(base / "objectInfo150.txt"))):
        ade20k(tmp_path, "val")


def test_ade20k_reads_real_object_info_format(tmp_path):
    base = make_segmentation_demo(tmp_path, n_train=1, n_val=1, n_classes=2, image_size=16)
    (base / "objectInfo150.txt").write_text(
        "Idx\tRatio\tTrain\tVal\tName\n"
        "1\t0.1576\t11664\t1172\twall\n"
        "2\t0.1072\t6046\t612\tbuilding;edifice\n"
        "3\t0.0878\t8265\t796\tsky\n"
        "4 0.0621 9336 917 floor, flooring\n"
    )
    assert ade20k(tmp_path, "train").class_names == ("other", "wall", "building", "sky", "floor")


def test_segmentation_demo_masks_hold_only_known_ids_and_object_info_counts(seg_demo):
    seen = set()
    for path in sorted((seg_demo / "annotations").rglob("*.png")):
        with Image.open(path) as m:
            assert m.mode == "L" and m.size == (32, 32)
            seen |= set(np.unique(np.asarray(m)).tolist())
    assert seen <= {0, 1, 2, 3} and {1, 2, 3} <= seen
    rows = (seg_demo / "objectInfo150.txt").read_text().splitlines()
    assert rows[0] == "Idx\tRatio\tTrain\tVal\tName"
    assert [r.split("\t")[4] for r in rows[1:]] == ["red-stripes", "blue-dots", "green-checker"]
    assert (seg_demo / "README.txt").read_text().count("SYNTHETIC") >= 2


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_segmentation_demo_is_deterministic_and_seed_dependent(tmp_path):
    kwargs = dict(n_train=3, n_val=2, n_classes=4, image_size=48)
    a = _files(make_segmentation_demo(tmp_path / "a", seed=0, **kwargs))
    b = _files(make_segmentation_demo(tmp_path / "b", seed=0, **kwargs))
    c = _files(make_segmentation_demo(tmp_path / "c", seed=1, **kwargs))
    assert len(a) == 3 + 2 + 3 + 2 + 2  # images, masks, objectInfo150.txt, README.txt
    assert a == b
    assert a.keys() == c.keys()
    first = "images/training/ADE_train_00000001.jpg"
    assert a[first] != c[first]


def test_segmentation_demo_rerun_replaces_and_refuses_foreign_folders(tmp_path):
    base = make_segmentation_demo(tmp_path, n_train=3, n_val=1, n_classes=2, image_size=16)
    make_segmentation_demo(tmp_path, n_train=2, n_val=1, n_classes=2, image_size=16)
    assert sorted(p.name for p in (base / "images/training").iterdir()) == [
        "ADE_train_00000001.jpg",
        "ADE_train_00000002.jpg",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ADEChallengeData2016"]  # no leftovers
    (base / "README.txt").write_text("my real data\n")
    with pytest.raises(FileExistsError, match=re.escape(str(base))):
        make_segmentation_demo(tmp_path, n_train=1, n_val=1, n_classes=2, image_size=16)


def test_segmentation_demo_classes_separable_by_patch_mean_colour(tmp_path):
    # Nearest-centroid on the mean colour of pure 8x8 patches: a weak linear
    # readout must already separate the classes.
    base = make_segmentation_demo(tmp_path, n_train=8, n_val=0, n_classes=8, image_size=64)
    features, labels = [], []
    for sample in ade20k(base, "train").samples:
        pixels = np.asarray(load_rgb(sample.image), dtype=np.float64)
        mask = load_mask(sample.mask, image_path=sample.image, image_size=(64, 64))
        labels_P, purity_P = patch_labels(mask, 8)
        means_P3 = pixels.reshape(8, 8, 8, 8, 3).transpose(0, 2, 1, 3, 4).reshape(64, 64, 3).mean(1)
        keep = purity_P == 1.0
        features.append(means_P3[keep])
        labels.append(labels_P[keep])
    x, y = np.concatenate(features), np.concatenate(labels)
    classes = np.unique(y)
    assert len(classes) >= 6
    centroids = np.stack([x[y == c].mean(0) for c in classes])
    predicted = classes[np.argmin(((x[:, None] - centroids[None]) ** 2).sum(-1), axis=1)]
    assert (predicted == y).mean() >= 0.95


# --------------------------------------------------------------------------- image_folder


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


@pytest.fixture()
def flat_folder(tmp_path) -> Path:
    root = tmp_path / "flat"
    for name in ["a0.jpg", "a1.jpg", "a2.JPG", "a3.png", "a4.webp"]:
        _touch(root / "ant" / name)
    for name in ["b0.png", "b1.tiff"]:
        _touch(root / "bee" / name)
    _touch(root / "cat" / "c0.jpeg")
    _touch(root / "ant" / ".hidden.jpg")
    _touch(root / "ant" / ".thumbs" / "t.jpg")
    _touch(root / "ant" / "notes.txt")
    _touch(root / ".trash" / "x.jpg")
    return root


def test_image_folder_split_is_stratified_saved_and_labelled(flat_folder, tmp_path):
    split_file = tmp_path / "splits" / "flat.json"
    train = image_folder(flat_folder, "train", split_file=split_file, val_fraction=0.4, seed=0)
    val = image_folder(flat_folder, "val", split_file=split_file, val_fraction=0.4, seed=0)
    assert train.task == "classification" and train.class_names == ("ant", "bee", "cat")
    ids = sorted([s.id for s in train.samples] + [s.id for s in val.samples])
    assert ids == sorted(
        [
            "ant/a0.jpg",
            "ant/a1.jpg",
            "ant/a2.JPG",
            "ant/a3.png",
            "ant/a4.webp",
            "bee/b0.png",
            "bee/b1.tiff",
            "cat/c0.jpeg",
        ]
    )
    # per class: ant 5 * 0.4 = 2 val; bee 2 * 0.4 = 0.8 -> 1; cat has 1 image -> train
    names = ("ant", "bee", "cat")
    val_per_class = {name: sum(s.id.startswith(name) for s in val.samples) for name in names}
    assert val_per_class == {"ant": 2, "bee": 1, "cat": 0}
    assert all(s.label == names.index(s.id.split("/")[0]) for s in train.samples + val.samples)
    assert all(s.image == flat_folder / s.id for s in train.samples)
    saved = json.loads(split_file.read_text())
    assert saved["seed"] == 0 and saved["val_fraction"] == 0.4
    assert saved["train"] == [s.id for s in train.samples]
    assert saved["val"] == [s.id for s in val.samples]
    assert image_folder(flat_folder, "test", split_file=split_file, val_fraction=0.4) == val


def test_image_folder_split_is_seeded_and_reused(tmp_path):
    root = tmp_path / "many"
    for i in range(20):
        _touch(root / "only" / f"{i:02d}.png")
    first = image_folder(root, "val", split_file=tmp_path / "s0.json", seed=0)
    again = image_folder(root, "val", split_file=tmp_path / "s0_copy.json", seed=0)
    other = image_folder(root, "val", split_file=tmp_path / "s1.json", seed=1)
    assert len(first.samples) == 4  # 20 * 0.2
    assert first == again and first != other
    # An existing split file is reused as written, not recomputed.
    saved = json.loads((tmp_path / "s0.json").read_text())
    saved["train"], saved["val"] = saved["train"][4:], saved["train"][:4] + saved["val"]
    (tmp_path / "s0.json").write_text(json.dumps(saved))
    reused = image_folder(root, "val", split_file=tmp_path / "s0.json", seed=0)
    assert [s.id for s in reused.samples] == sorted(saved["val"])


def test_image_folder_stale_split_file_raises_naming_it(flat_folder, tmp_path):
    split_file = tmp_path / "flat.json"
    image_folder(flat_folder, "train", split_file=split_file)
    _touch(flat_folder / "bee" / "b2.png")
    with pytest.raises(StaleSplitError, match=re.escape(str(split_file))) as info:
        image_folder(flat_folder, "train", split_file=split_file)
    assert "1 file(s) added" in str(info.value) and "bee/b2.png" in str(info.value)
    (flat_folder / "bee" / "b2.png").unlink()
    (flat_folder / "ant" / "a0.jpg").unlink()
    with pytest.raises(StaleSplitError, match="1 removed"):
        image_folder(flat_folder, "val", split_file=split_file)
    _touch(flat_folder / "ant" / "a0.jpg")
    with pytest.raises(StaleSplitError, match="seed=0"):
        image_folder(flat_folder, "val", split_file=split_file, seed=3)


def test_image_folder_pre_split_layout(tmp_path):
    root = tmp_path / "pre"
    for path in ["train/cat/1.jpg", "train/cat/2.jpg", "train/dog/1.png", "test/cat/9.jpg", "test/eel/1.jpg"]:
        _touch(root / path)
    split_file = tmp_path / "unused.json"
    val = image_folder(root, "val", split_file=split_file)
    assert val.class_names == ("cat", "dog", "eel")
    assert [(s.id, s.label) for s in val.samples] == [("test/cat/9.jpg", 0), ("test/eel/1.jpg", 2)]
    train = image_folder(root, "train", split_file=split_file)
    assert [(s.id, s.label) for s in train.samples] == [
        ("train/cat/1.jpg", 0),
        ("train/cat/2.jpg", 0),
        ("train/dog/1.png", 1),
    ]
    assert not split_file.exists()


def test_classification_demo_layout_and_determinism(tmp_path):
    root = make_classification_demo(tmp_path / "a", n_per_class=3, n_classes=3, image_size=32)
    same = make_classification_demo(tmp_path / "b", n_per_class=3, n_classes=3, image_size=32)
    assert _files(root) == _files(same)
    assert sorted(_files(root)) == [
        "README.txt",
        *[f"{c}/img_{i:04d}.jpg" for c in ("blue-square", "green-triangle", "red-circle") for i in (1, 2, 3)],
    ]
    data = load_split("imagefolder", root, "train", split_file=tmp_path / "split.json")
    assert data.class_names == ("blue-square", "green-triangle", "red-circle")
    assert len(data.samples) == 6  # 3 per class, 1 of each to val
    assert np.asarray(load_rgb(data.samples[0].image)).shape == (32, 32, 3)


# --------------------------------------------------------------------------- segfolder + dispatch


def test_segmentation_folder_and_missing_mask(tmp_path):
    root = tmp_path / "seg"
    root.mkdir()
    (root / "classes.txt").write_text("background\nroad\ncar\n\n")
    for stem, ext in [("a", "jpg"), ("b", "png")]:
        _touch(root / "train" / "images" / f"{stem}.{ext}")
        _touch(root / "train" / "masks" / f"{stem}.png")
    data = load_split("segfolder", root, "train")
    assert data.task == "segmentation" and data.class_names == ("background", "road", "car")
    assert [(s.id, s.mask) for s in data.samples] == [
        ("train/images/a.jpg", root / "train/masks/a.png"),
        ("train/images/b.png", root / "train/masks/b.png"),
    ]
    (root / "train/masks/b.png").unlink()
    with pytest.raises(DatasetError) as info:
        segmentation_folder(root, "train")
    assert str(root / "train/images/b.png") in str(info.value)
    assert str(root / "train/masks/b.png") in str(info.value)


def test_load_split_unknown_kind_lists_known_kinds(tmp_path):
    with pytest.raises(ValueError, match=r"'coco'.*\['ade20k', 'imagefolder', 'segfolder'\]"):
        load_split("coco", tmp_path, "train")


# ---- ADE20K class names: .txt, .csv, another objectInfo*, a configured file (issue 15) ------
def test_ade20k_class_names_from_csv_renamed_file_or_configured_list(tmp_path):
    base = make_segmentation_demo(tmp_path, n_train=1, n_val=1, n_classes=2, image_size=16)
    (base / "objectInfo150.txt").unlink()
    # the .csv ADE20K also ships (quoted names with synonyms)
    (base / "objectInfo150.csv").write_text(
        'Idx,Ratio,Train,Val,Name\n1,0.1576,11664,1172,wall\n2,0.1072,6046,612,"building;edifice"\n'
    )
    assert ade20k(tmp_path, "train").class_names == ("other", "wall", "building")
    # a 10-class ADE-layout set's objectInfo10.txt: found when it is the only objectInfo file
    (base / "objectInfo150.csv").rename(base / "objectInfo10.csv")
    assert ade20k(tmp_path, "train").class_names == ("other", "wall", "building")
    (base / "objectInfo10.txt").write_text("Idx Ratio Train Val Name\n1 0.5 1 1 sky\n2 0.5 1 1 tree\n")
    with pytest.raises(DatasetError, match="several class lists .* datasets.<name>.class_list"):
        ade20k(tmp_path, "train")
    # a configured file: objectInfo style, or a plain list (line 0 = id 0)
    assert ade20k(tmp_path, "train", class_list=base / "objectInfo10.txt").class_names == ("other", "sky", "tree")
    (tmp_path / "names.txt").write_text("background\nroad\ncar\n")
    assert ade20k(tmp_path, "train", class_list=tmp_path / "names.txt").class_names == ("background", "road", "car")
    with pytest.raises(DatasetError, match="class_list .*missing.txt does not exist"):
        ade20k(tmp_path, "train", class_list=tmp_path / "missing.txt")


CSAIL_CSV = (  # CSAIL's objectInfo150.csv format: header, Idx from 1, ';'-separated synonyms, a BOM
    "\ufeffIdx,Ratio,Train,Val,Name\n"
    "1,0.1576,11664,1172,wall\n"
    "2,0.1072,6046,612,building;edifice\n"
    '3,0.0878,8265,796,"sky"\n'
    "\n"
    "4,0.0621,9336,917,floor;flooring\n"
)


@pytest.mark.parametrize("kind", ["ade20k", "segfolder"])
def test_configured_csail_csv_class_list_is_read_by_column_with_the_header_skipped(tmp_path, kind):
    if kind == "ade20k":
        make_segmentation_demo(tmp_path, n_train=1, n_val=1, n_classes=4, image_size=16)
    else:
        (tmp_path / "classes.txt").write_text("background\nroad\n")
        _touch(tmp_path / "train" / "images" / "a.png")
        _touch(tmp_path / "train" / "masks" / "a.png")
    (tmp_path / "objectInfo10.csv").write_text(CSAIL_CSV, encoding="utf-8")
    names = load_split(kind, tmp_path, "train", class_list=tmp_path / "objectInfo10.csv").class_names
    # not the raw rows, not the header as class 0; the first synonym, as CSAIL's and mmseg's ADE20K code
    assert names == ("other", "wall", "building", "sky", "floor")
    # the Name column found by the header, wherever it stands
    (tmp_path / "reordered.csv").write_text("Idx,Name,Ratio\n1,road;route,0.5\n2,car,0.5\n")
    names = load_split(kind, tmp_path, "train", class_list=tmp_path / "reordered.csv").class_names
    assert names == ("other", "road", "car")
    # a .csv without the header is refused, naming the file and the header it needs
    (tmp_path / "plain.csv").write_text("wall\nbuilding\n")
    with pytest.raises(
        DatasetError, match=r"plain.csv: a .csv class list needs CSAIL's header 'Idx,Ratio,Train,Val,Name'"
    ):
        load_split(kind, tmp_path, "train", class_list=tmp_path / "plain.csv")
    (tmp_path / "gap.csv").write_text("Idx,Ratio,Train,Val,Name\n1,0.5,1,1,wall\n3,0.5,1,1,sky\n")
    with pytest.raises(DatasetError, match=r"gap.csv, line 3: Idx 3, expected 2"):
        load_split(kind, tmp_path, "train", class_list=tmp_path / "gap.csv")


def test_configured_class_list_reaches_the_store(project):
    import yaml

    from pipeline.cache import CacheReader
    from pipeline.config import CacheRef, load_config
    from pipeline.extract import extract

    base = project / "resources/data/seg/ADEChallengeData2016"
    names = (base / "objectInfo150.txt").read_text()
    (base / "objectInfo150.txt").unlink()
    (project / "classes10.txt").write_text(names.replace("red-stripes", "stripes-renamed"))
    raw = yaml.safe_load((project / "config.yaml").read_text())
    raw["datasets"]["seg"]["class_list"] = "classes10.txt"
    (project / "config.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config("config.yaml")
    extract(cfg, CacheRef("dino", "seg"), "val", progress=False)
    reader = CacheReader(cfg.store(CacheRef("dino", "seg"), "val"))
    assert "stripes-renamed" in reader.class_names
    assert reader.attrs["config"]["dataset"]["class_list"] == "classes10.txt"


def test_segmentation_demo_files_do_not_depend_on_the_process_pool(tmp_path, monkeypatch):
    """Large demo sets are written by a process pool; every byte equals the one-process output."""
    import pipeline.data.demo as demo

    def files(root: Path) -> dict:
        return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}

    monkeypatch.setattr(demo, "_IMAGES_PER_PROCESS", 8)  # 26 images -> a pool of up to 3 processes
    pooled = files(demo.make_segmentation_demo(tmp_path / "pool", n_train=24, n_val=2, image_size=32, seed=3))
    monkeypatch.setattr(demo, "_IMAGES_PER_PROCESS", 10**9)
    serial = files(demo.make_segmentation_demo(tmp_path / "one", n_train=24, n_val=2, image_size=32, seed=3))
    assert len(serial) == 2 * 26 + 2  # images, masks, objectInfo150.txt, README.txt
    assert pooled == serial
