"""Saving altair charts: every figure is written as interactive HTML and a static PNG and SVG.

Palettes live here so every stage uses the same ones: Okabe-Ito (colour-blind safe) for a few
categories, viridis for sequential values, and :func:`class_palette` for segmentation classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import altair as alt
import numpy as np
from PIL import ImageFont

from pipeline import atomic

# Okabe & Ito (2008), the usual colour-blind-safe qualitative palette.
OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000"]
SEQUENTIAL_SCHEME = "viridis"

OTHER_COLOUR = (64, 64, 64)
"""Class 0 ("other") in segmentation masks: dark grey."""

# ADE20K SceneParsing's 150-class colour table (CSAIL's color150, as in mmsegmentation's
# ADE20KDataset): row k - 1 is class k of objectInfo150.txt. As published, rows 7 (road) and
# 49 (skyscraper) are both (140, 140, 140); kept so figures match the benchmark's own.
ADE20K_PALETTE = np.array(
    [
        [120, 120, 120],
        [180, 120, 120],
        [6, 230, 230],
        [80, 50, 50],
        [4, 200, 3],
        [120, 120, 80],
        [140, 140, 140],
        [204, 5, 255],
        [230, 230, 230],
        [4, 250, 7],
        [224, 5, 255],
        [235, 255, 7],
        [150, 5, 61],
        [120, 120, 70],
        [8, 255, 51],
        [255, 6, 82],
        [143, 255, 140],
        [204, 255, 4],
        [255, 51, 7],
        [204, 70, 3],
        [0, 102, 200],
        [61, 230, 250],
        [255, 6, 51],
        [11, 102, 255],
        [255, 7, 71],
        [255, 9, 224],
        [9, 7, 230],
        [220, 220, 220],
        [255, 9, 92],
        [112, 9, 255],
        [8, 255, 214],
        [7, 255, 224],
        [255, 184, 6],
        [10, 255, 71],
        [255, 41, 10],
        [7, 255, 255],
        [224, 255, 8],
        [102, 8, 255],
        [255, 61, 6],
        [255, 194, 7],
        [255, 122, 8],
        [0, 255, 20],
        [255, 8, 41],
        [255, 5, 153],
        [6, 51, 255],
        [235, 12, 255],
        [160, 150, 20],
        [0, 163, 255],
        [140, 140, 140],
        [250, 10, 15],
        [20, 255, 0],
        [31, 255, 0],
        [255, 31, 0],
        [255, 224, 0],
        [153, 255, 0],
        [0, 0, 255],
        [255, 71, 0],
        [0, 235, 255],
        [0, 173, 255],
        [31, 0, 255],
        [11, 200, 200],
        [255, 82, 0],
        [0, 255, 245],
        [0, 61, 255],
        [0, 255, 112],
        [0, 255, 133],
        [255, 0, 0],
        [255, 163, 0],
        [255, 102, 0],
        [194, 255, 0],
        [0, 143, 255],
        [51, 255, 0],
        [0, 82, 255],
        [0, 255, 41],
        [0, 255, 173],
        [10, 0, 255],
        [173, 255, 0],
        [0, 255, 153],
        [255, 92, 0],
        [255, 0, 255],
        [255, 0, 245],
        [255, 0, 102],
        [255, 173, 0],
        [255, 0, 20],
        [255, 184, 184],
        [0, 31, 255],
        [0, 255, 61],
        [0, 71, 255],
        [255, 0, 204],
        [0, 255, 194],
        [0, 255, 82],
        [0, 10, 255],
        [0, 112, 255],
        [51, 0, 255],
        [0, 194, 255],
        [0, 122, 255],
        [0, 255, 163],
        [255, 153, 0],
        [0, 255, 10],
        [255, 112, 0],
        [143, 255, 0],
        [82, 0, 255],
        [163, 255, 0],
        [255, 235, 0],
        [8, 184, 170],
        [133, 0, 255],
        [0, 255, 92],
        [184, 0, 255],
        [255, 0, 31],
        [0, 184, 255],
        [0, 214, 255],
        [255, 0, 112],
        [92, 255, 0],
        [0, 224, 255],
        [112, 224, 255],
        [70, 184, 160],
        [163, 0, 255],
        [153, 0, 255],
        [71, 255, 0],
        [255, 0, 163],
        [255, 204, 0],
        [255, 0, 143],
        [0, 255, 235],
        [133, 255, 0],
        [255, 0, 235],
        [245, 0, 255],
        [255, 0, 122],
        [255, 245, 0],
        [10, 190, 212],
        [214, 255, 0],
        [0, 204, 255],
        [20, 0, 255],
        [255, 255, 0],
        [0, 153, 255],
        [0, 41, 255],
        [0, 255, 204],
        [41, 0, 255],
        [41, 255, 0],
        [173, 0, 255],
        [0, 245, 255],
        [71, 0, 255],
        [122, 0, 255],
        [0, 255, 184],
        [0, 92, 255],
        [184, 255, 0],
        [0, 133, 255],
        [255, 214, 0],
        [25, 194, 194],
        [102, 255, 0],
        [92, 0, 255],
    ],
    dtype=np.uint8,
)
ADE20K_FIRST_CLASSES = ("wall", "building", "sky", "floor", "tree")
"""The first names of objectInfo150.txt: with 150 classes they mark ADE20K's own labels."""

RANDOM_WEIGHTS_NOTE = "random-init weights (demo): numbers say nothing about the real model"


def save_chart(chart: alt.TopLevelMixin, stem: str | Path, *, png_scale: float = 2.0) -> list[Path]:
    """Write ``chart`` to ``stem.html``, ``stem.png`` and ``stem.svg``; return the paths.

    PNG and SVG are rendered offline with vl-convert (no browser, no network).
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    # append, not with_suffix: a stem like "lr0.001" must not lose its ".001"
    paths = [stem.parent / f"{stem.name}.{ext}" for ext in ("html", "png", "svg")]
    # each to a temporary name, renamed when whole (the temporary name keeps the suffix: it picks the format)
    with atomic.replacing(paths[0]) as tmp:
        chart.save(str(tmp), inline=True)
    with atomic.replacing(paths[1]) as tmp:
        chart.save(str(tmp), scale_factor=png_scale)
    with atomic.replacing(paths[2]) as tmp:
        chart.save(str(tmp))
    return paths


def title_with_note(title: str, random_weights: bool) -> alt.TitleParams:
    """A chart title that says plainly when the model's weights are random."""
    return alt.TitleParams(title, subtitle=[RANDOM_WEIGHTS_NOTE] if random_weights else [])


def hex_rgb(h: str) -> tuple[int, int, int]:
    """``"#RRGGBB"`` → ``(r, g, b)`` ints 0 … 255 (for PIL drawings in the chart palettes)."""
    h = h.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def label_font(size: int = 12) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font at ``size`` px, for text on PIL figures (no font files needed)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 or without FreeType: one fixed-size bitmap font
        return ImageFont.load_default()


def is_ade20k(class_names: Sequence[str]) -> bool:
    """``("other", <ADE20K's 150 names>)``: 151 names starting wall, building, sky, floor, tree."""
    return len(class_names) == 151 and tuple(class_names[1:6]) == ADE20K_FIRST_CLASSES


def class_palette(n_classes: int, class_names: Sequence[str] | None = None) -> np.ndarray:
    """``uint8 [C, 3]`` segmentation colours; class 0 ("other") is :data:`OTHER_COLOUR`.

    * ADE20K's own 150 classes (:func:`is_ade20k`): :data:`ADE20K_PALETTE`.
    * up to 7 other classes: Okabe-Ito without its black (colour-blind safe).
    * more: colorcet's ``glasbey_bw_minc_20``, 256 colours picked one by one to be as far as
      possible (in CAM02-UCS) from all before them, without black, white or greys (so none
      looks like "other", and none of the few dark ones close to its grey); the first C - 1 are
      used, so every class up to about 240 has its own colour (no palette of that size is
      colour-blind safe); beyond, they repeat.
    """
    if class_names is not None and is_ade20k(class_names) and n_classes == 151:
        return np.concatenate([np.array([OTHER_COLOUR], np.uint8), ADE20K_PALETTE])
    n_real = max(0, n_classes - 1)
    if n_real <= 7:
        colours = [hex_rgb(h) for h in OKABE_ITO if h.upper() != "#000000"][:n_real]
    else:
        import colorcet  # ~0.1 s: only for more than 7 classes

        # dark colours next to "other"'s grey are left out (a few of the 256): ~240 remain
        glasbey = [
            rgb
            for rgb in (tuple(round(255 * v) for v in c) for c in colorcet.glasbey_bw_minc_20)
            if sum(abs(a - b) for a, b in zip(rgb, OTHER_COLOUR)) >= 90
        ]
        colours = [glasbey[k % len(glasbey)] for k in range(n_real)]
    return np.array([OTHER_COLOUR] + colours, dtype=np.uint8)[:n_classes]


def category_colours(names: Sequence[str]) -> alt.Scale:
    """A colour scale for ``names`` that are not classes (sweep members): the class palette's
    distinct colours without "other" (Okabe-Ito up to 7, glasbey beyond), in the given order."""
    rgb = class_palette(len(names) + 1)[1:]
    return alt.Scale(domain=list(names), range=["#{:02x}{:02x}{:02x}".format(*(int(v) for v in c)) for c in rgb])
