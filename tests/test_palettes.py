"""Segmentation colours at the demo's and ADE20K's class counts; figures at 150 classes; step help."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.plots import ADE20K_FIRST_CLASSES, ADE20K_PALETTE, OTHER_COLOUR, class_palette, is_ade20k
from pipeline.probes import figures


def _distinct(colours_C3: np.ndarray) -> int:
    return len({tuple(int(v) for v in c) for c in colours_C3})


@pytest.mark.parametrize("n_classes", [2, 5, 8, 9, 151, 238])
def test_every_class_has_its_own_colour(n_classes):
    colours = class_palette(n_classes)
    assert colours.shape == (n_classes, 3) and colours.dtype == np.uint8
    assert tuple(colours[0]) == OTHER_COLOUR
    assert _distinct(colours) == n_classes  # 150 synthetic classes + other: 151 colours


def test_no_class_looks_like_other_or_the_background():
    colours = class_palette(151).astype(int)[1:]
    grey = np.abs(colours - np.array(OTHER_COLOUR)).sum(axis=1)
    assert grey.min() > 60  # far from the dark-grey "other"
    assert (colours.sum(axis=1) < 3 * 250).all()  # none is white


def test_ade20k_classes_get_ade20ks_own_palette():
    names = ("other",) + ADE20K_FIRST_CLASSES + tuple(f"class {k}" for k in range(6, 151))
    assert (
        is_ade20k(names)
        and not is_ade20k(names[:-1])
        and not is_ade20k(("other",) + tuple(f"c{k}" for k in range(150)))
    )
    colours = class_palette(151, names)
    assert (colours[1:] == ADE20K_PALETTE).all() and tuple(colours[0]) == OTHER_COLOUR
    assert tuple(colours[1]) == (120, 120, 120) and tuple(colours[3]) == (6, 230, 230)  # wall, sky as in the benchmark
    # a synthetic 150-class set with other names gets the generated distinct palette instead
    other = class_palette(151, ("other",) + tuple(f"c{k}" for k in range(150)))
    assert _distinct(other) == 151 and not (other[1:] == ADE20K_PALETTE).all()


def test_segmentation_figure_at_150_classes_lists_only_present_classes(tmp_path):
    rng = np.random.default_rng(0)
    names = ["other"] + [f"synthetic-class-{k}" for k in range(1, 151)]
    present = [0, 3, 77, 150]
    masks = [rng.choice(present, size=(8, 8)) for _ in range(2)]
    layout = figures.segmentation_figure(
        [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(2)],
        masks,
        masks,
        names,
        tmp_path / "seg.png",
        random_weights=True,
    )
    img = np.asarray(Image.open(layout.path).convert("RGB"))
    legend = img[layout.cells[-1][0][3] :]  # below the last row of images
    colours = class_palette(151)
    for k in range(151):
        swatch = (legend == colours[k]).all(axis=-1).sum()
        if k in present:
            assert swatch >= 100, k  # a 12 x 12 swatch at least
        else:
            assert swatch < 20, k  # absent classes have no legend entry
    # the column headers no longer run into each other over 64 px images
    left, top, right, _ = layout.cells[0][1]
    assert left - layout.cells[0][0][2] >= 8 and right - left == 64


def test_every_step_help_says_what_it_reads_and_writes(capsys):
    from pipeline.__main__ import build_parser
    from pipeline.stages import STAGES

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for step in STAGES:
        if step == "prepare":
            continue  # its help is the module docstring (downloads in, image folders out)
        text = (sub.choices[step].description or "").lower()
        assert "reads" in text and "writes" in text, step
