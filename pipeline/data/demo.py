"""Write small synthetic datasets so the whole pipeline runs offline.

Writes (nothing is read):
  make_segmentation_demo     root/ADEChallengeData2016/ in the ADE20K SceneParsing
                             layout: images/{training,validation}/ADE_{train,val}_%08d.jpg,
                             annotations/.../<same stem>.png (mode L class ids),
                             objectInfo150.txt (the demo's class names), README.txt.
  make_classification_demo   root/<class_name>/img_%04d.jpg + root/README.txt.

Determinism: image i of a split is drawn from ``np.random.default_rng([seed,
split_code, i])``, so the same seed gives byte-identical files (and an image does
not change when the number of other images does).

Atomicity: everything is written into a hidden sibling folder
``.<name>.partial`` which then replaces the output folder, so a killed run never
leaves a half-written dataset under the final name; re-running regenerates it.
An existing output folder is only replaced if it is empty or is a demo folder
(its README.txt starts with ``DEMO_MARKER``); anything else raises.

Segmentation classes are made easy to tell apart from a single 14 x 14 patch by
a linear readout of a random-init ViT: each class has its own base colour AND its
own texture (stripes of different orientation / period, dots, checker, noise,
rings, ...), with mild per-image colour and phase jitter.  Thin borders between
regions are class 0 ("other"), painted near-black.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "DEMO_MARKER",
    "SEG_CLASSES",
    "CLS_CLASSES",
    "make_segmentation_demo",
    "make_classification_demo",
]

DEMO_MARKER = "SYNTHETIC DEMO DATA written by pipeline.data.demo"

# A texture maps pixel coordinates (float [H, W] each), a per-image phase and a
# generator to intensities in [0, 1] of shape [H, W].
Texture = Callable[[np.ndarray, np.ndarray, np.ndarray, np.random.Generator], np.ndarray]


def _stripes(yy, xx, ph, rng, *, fy: float, fx: float, period: float) -> np.ndarray:
    return 0.5 + 0.5 * np.sin(2 * np.pi * ((fy * yy + fx * xx) / period + ph[0]))


def _h_stripes(yy, xx, ph, rng):
    return _stripes(yy, xx, ph, rng, fy=1.0, fx=0.0, period=8.0)


def _v_bars(yy, xx, ph, rng):
    return (np.floor(xx / 3.0 + ph[0] * 6) % 2).astype(np.float64)  # 3-px hard bars


def _diagonals(yy, xx, ph, rng):
    return _stripes(yy, xx, ph, rng, fy=1.0, fx=1.0, period=10.0)


def _dots(yy, xx, ph, rng):
    cy = (yy + ph[0] * 8) % 8.0 - 4.0
    cx = (xx + ph[1] * 8) % 8.0 - 4.0
    return (cy * cy + cx * cx < 6.0).astype(np.float64)


def _checker(yy, xx, ph, rng):
    return ((np.floor(yy / 7.0 + ph[0]) + np.floor(xx / 7.0 + ph[1])) % 2).astype(np.float64)


def _noise(yy, xx, ph, rng):
    return rng.random(yy.shape)


def _rings(yy, xx, ph, rng):
    r = np.hypot(yy - ph[0] * yy.shape[0], xx - ph[1] * xx.shape[1])
    return 0.5 + 0.5 * np.cos(2 * np.pi * r / 6.0)


def _grid(yy, xx, ph, rng):
    on_line = ((yy + ph[0] * 7) % 7.0 < 1.5) | ((xx + ph[1] * 7) % 7.0 < 1.5)
    return 1.0 - 0.8 * on_line


def _waves(yy, xx, ph, rng):
    return 0.5 + 0.5 * np.sin(2 * np.pi * (xx / 9.0 + 0.3 * np.sin(2 * np.pi * yy / 12.0) + ph[0]))


def _gradient(yy, xx, ph, rng):
    angle = 2 * np.pi * ph[0]
    ramp = (np.cos(angle) * yy + np.sin(angle) * xx) / max(yy.shape)
    return ramp - np.floor(ramp)


def _crosshatch(yy, xx, ph, rng):
    a = (yy + xx + ph[0] * 6) % 6.0 < 1.5
    b = (yy - xx + ph[1] * 6) % 6.0 < 1.5
    return 1.0 - 0.9 * (a | b)


def _plain(yy, xx, ph, rng):
    return np.full(yy.shape, 0.8) + 0.1 * rng.standard_normal(yy.shape)


@dataclass(frozen=True)
class ClassSpec:
    """A synthetic class: its name, base colour (R, G, B in 0..255) and pattern."""

    name: str
    rgb: tuple[int, int, int]
    texture: Texture


SEG_CLASSES: tuple[ClassSpec, ...] = (
    ClassSpec("red-stripes", (220, 40, 40), _h_stripes),
    ClassSpec("blue-dots", (40, 70, 225), _dots),
    ClassSpec("green-checker", (40, 190, 60), _checker),
    ClassSpec("yellow-noise", (235, 215, 50), _noise),
    ClassSpec("purple-diagonals", (140, 50, 190), _diagonals),
    ClassSpec("orange-bars", (245, 140, 30), _v_bars),
    ClassSpec("cyan-rings", (40, 210, 220), _rings),
    ClassSpec("magenta-grid", (225, 50, 180), _grid),
    ClassSpec("white-waves", (235, 235, 235), _waves),
    ClassSpec("brown-gradient", (130, 80, 40), _gradient),
    ClassSpec("pink-crosshatch", (250, 160, 190), _crosshatch),
    ClassSpec("olive-plain", (120, 130, 40), _plain),
)
OTHER_RGB = (25, 25, 25)  # colour of class 0 ("other") borders

CLS_CLASSES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red-circle", (215, 45, 45)),
    ("blue-square", (45, 75, 220)),
    ("green-triangle", (45, 180, 70)),
    ("yellow-cross", (230, 200, 40)),
    ("purple-ring", (140, 60, 190)),
    ("orange-diamond", (240, 135, 30)),
    ("cyan-bar", (40, 200, 215)),
    ("black-star", (30, 30, 30)),
)

_SPLITS = (("training", "train", 0), ("validation", "val", 1))


# --------------------------------------------------------------------------- atomic output


def _prepare_partial(final: Path) -> Path:
    """Check ``final`` may be (re)written and return an empty partial folder beside it."""
    if final.exists():
        readme = final / "README.txt"
        is_demo = readme.is_file() and readme.read_text().startswith(DEMO_MARKER)
        if not (is_demo or (final.is_dir() and not any(final.iterdir()))):
            raise FileExistsError(
                f"{final} exists and is not a demo folder (no {readme} starting with "
                f"{DEMO_MARKER!r}); refusing to overwrite it"
            )
    partial = final.with_name(f".{final.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def _publish(partial: Path, final: Path) -> None:
    """Replace ``final`` by the finished ``partial`` folder."""
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(partial, final)
        shutil.rmtree(old)
    else:
        os.replace(partial, final)


def _readme(what: str, seed: int) -> str:
    return (
        f"{DEMO_MARKER}\n\n"
        f"These files are SYNTHETIC: {what}\n"
        f"Generated deterministically with seed={seed}; re-running with the same seed "
        "writes byte-identical files.  They are not real photographs and say nothing "
        "about how a model behaves on natural images.\n"
    )


# --------------------------------------------------------------------------- segmentation


def _voronoi_labels(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, n_classes: int) -> np.ndarray:
    """uint8 [H, W] labels: 3-6 Voronoi cells, each one class in 1..n_classes,
    with ~2-px borders between cells set to 0."""
    H, W = yy.shape
    k = int(rng.integers(3, 7))
    seeds_K2 = rng.random((k, 2)) * np.array([H, W])
    classes_K = rng.choice(np.arange(1, n_classes + 1), size=k, replace=k > n_classes)
    dist_KHW = np.hypot(yy[None] - seeds_K2[:, 0, None, None], xx[None] - seeds_K2[:, 1, None, None])
    nearest_HW = np.argmin(dist_KHW, axis=0)
    two_smallest = np.partition(dist_KHW, 1, axis=0)[:2]
    border_HW = (two_smallest[1] - two_smallest[0]) < 1.0
    labels_HW = classes_K[nearest_HW].astype(np.uint8)
    labels_HW[border_HW] = 0
    return labels_HW


def _render_segmentation(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, labels_HW: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] image: each class's jittered colour modulated by its texture."""
    H, W = labels_HW.shape
    image_HW3 = np.empty((H, W, 3), dtype=np.float64)
    image_HW3[...] = OTHER_RGB
    for class_id in np.unique(labels_HW):
        if class_id == 0:
            continue
        spec = SEG_CLASSES[class_id - 1]
        where_HW = labels_HW == class_id
        phase = rng.random(2)
        gain_3, offset_3 = rng.uniform(0.9, 1.1, 3), rng.uniform(-10, 10, 3)
        colour_3 = np.asarray(spec.rgb, dtype=np.float64) * gain_3 + offset_3
        intensity_HW = np.clip(spec.texture(yy, xx, phase, rng), 0.0, 1.0)
        shade_HW = 0.35 + 0.65 * intensity_HW
        image_HW3[where_HW] = shade_HW[where_HW, None] * colour_3
    image_HW3 += rng.normal(0.0, 4.0, image_HW3.shape)
    return np.clip(np.rint(image_HW3), 0, 255).astype(np.uint8)


def _object_info(class_names: list[str], pixel_share: np.ndarray, n_images: np.ndarray) -> str:
    """objectInfo150.txt text: header + 'Idx Ratio Train Val Name' rows (tab-separated)."""
    rows = ["Idx\tRatio\tTrain\tVal\tName"]
    for i, name in enumerate(class_names):
        rows.append(f"{i + 1}\t{pixel_share[i]:.4f}\t{n_images[0, i]}\t{n_images[1, i]}\t{name}")
    return "\n".join(rows) + "\n"


_IMAGES_PER_PROCESS = 256  # below this many images per process, one process writes them all


def _write_segmentation_image(job: tuple, *, seed: int, n_classes: int, image_size: int) -> np.ndarray:
    """Render and write one image + mask (generator seeded ``[seed, split, i]``); its label counts."""
    partial, folder, prefix, split_code, i = job
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float64)
    rng = np.random.default_rng([seed, split_code, i])
    labels_HW = _voronoi_labels(rng, yy, xx, n_classes)
    image_HW3 = _render_segmentation(rng, yy, xx, labels_HW)
    stem = f"ADE_{prefix}_{i:08d}"
    Image.fromarray(image_HW3).save(partial / "images" / folder / f"{stem}.jpg", quality=95)
    Image.fromarray(labels_HW).save(partial / "annotations" / folder / f"{stem}.png")
    return np.bincount(labels_HW.ravel(), minlength=n_classes + 1)


def make_segmentation_demo(
    root: Path,
    *,
    n_train: int,
    n_val: int,
    n_classes: int = 8,
    image_size: int = 224,
    seed: int = 0,
) -> Path:
    """Write a synthetic ADE20K-layout segmentation dataset under ``root``.

    Each image is a random Voronoi partition (3-6 cells), each cell filled with
    one class's colour + texture; masks hold ids 1..n_classes and 0 on the thin
    borders.  Returns ``root / "ADEChallengeData2016"``.

    Raises:
        ValueError: bad counts / sizes, or n_classes outside 1..len(SEG_CLASSES).
        FileExistsError: the output folder exists and is not a demo folder.
    """
    if not 1 <= n_classes <= len(SEG_CLASSES):
        raise ValueError(f"n_classes must be in 1..{len(SEG_CLASSES)}, got {n_classes}")
    if n_train < 0 or n_val < 0 or image_size < 8:
        raise ValueError(f"need n_train >= 0, n_val >= 0, image_size >= 8; got {n_train}, {n_val}, {image_size}")
    final = Path(root) / "ADEChallengeData2016"
    partial = _prepare_partial(final)
    pixel_count = np.zeros(n_classes + 1, dtype=np.int64)  # training pixels per id
    n_images = np.zeros((2, n_classes), dtype=np.int64)  # [split, class] images containing it
    jobs = []
    for folder, prefix, split_code in _SPLITS:
        (partial / "images" / folder).mkdir(parents=True)
        (partial / "annotations" / folder).mkdir(parents=True)
        jobs += [
            (partial, folder, prefix, split_code, i) for i in range(1, (n_train if split_code == 0 else n_val) + 1)
        ]
    write = functools.partial(_write_segmentation_image, seed=seed, n_classes=n_classes, image_size=image_size)
    # Each image has its own seeded generator, so the files do not depend on the process count;
    # large sets (benchmarks) are written by a process pool, small ones in this process.
    n_proc = min(
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
        len(jobs) // _IMAGES_PER_PROCESS,
    )
    with contextlib.ExitStack() as stack:
        mapper = map
        if n_proc > 1:
            mapper = functools.partial(stack.enter_context(cf.ProcessPoolExecutor(n_proc)).map, chunksize=32)
        for (_, _, _, split_code, _), counts in zip(jobs, mapper(write, jobs)):
            n_images[split_code] += counts[1:] > 0
            if split_code == 0:
                pixel_count += counts
    share = pixel_count[1:] / max(int(pixel_count.sum()), 1)
    names = [spec.name for spec in SEG_CLASSES[:n_classes]]
    (partial / "objectInfo150.txt").write_text(_object_info(names, share, n_images))
    (partial / "README.txt").write_text(
        _readme(
            f"{n_train} training and {n_val} validation {image_size}x{image_size} images of "
            f"{n_classes} texture classes ({', '.join(names)}) in random Voronoi cells; "
            "annotation PNGs hold class ids (0 = other, on cell borders).",
            seed,
        )
    )
    _publish(partial, final)
    return final


# --------------------------------------------------------------------------- classification


# Polygon vertices in units of the shape radius, before rotation (circle and
# ring are drawn as ellipses instead).
_UNIT_POLYGONS: Mapping[str, list[tuple[float, float]]] = MappingProxyType(
    {
        "square": [(1.0, 1.0), (-1.0, 1.0), (-1.0, -1.0), (1.0, -1.0)],
        "triangle": [(np.cos(a), np.sin(a)) for a in 2 * np.pi * np.arange(3) / 3],
        "diamond": [(0.0, -1.15), (0.6, 0.0), (0.0, 1.15), (-0.6, 0.0)],
        "star": [(rad * np.cos(a), rad * np.sin(a)) for rad, a in zip([1.0, 0.45] * 5, np.pi * np.arange(10) / 5)],
        "cross": [
            (0.3, -0.3),
            (1.0, -0.3),
            (1.0, 0.3),
            (0.3, 0.3),
            (0.3, 1.0),
            (-0.3, 1.0),
            (-0.3, 0.3),
            (-1.0, 0.3),
            (-1.0, -0.3),
            (-0.3, -0.3),
            (-0.3, -1.0),
            (0.3, -1.0),
        ],
        "bar": [(-1.1, -0.28), (1.1, -0.28), (1.1, 0.28), (-1.1, 0.28)],
    }
)


def _placed_polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """The unit polygon of ``kind`` rotated by ``angle``, scaled by ``r``, centred at (cx, cy)."""
    unit_N2 = np.asarray(_UNIT_POLYGONS[kind])
    c, s = np.cos(angle), np.sin(angle)
    rotated_N2 = unit_N2 @ np.array([[c, s], [-s, c]])
    return [(cx + r * x, cy + r * y) for x, y in rotated_N2]


def _render_classification(rng: np.random.Generator, name: str, rgb: tuple[int, int, int], size: int) -> np.ndarray:
    """uint8 [size, size, 3]: one jittered shape of colour ``rgb`` on a light noisy background."""
    background_3 = rng.uniform(185, 235, 3)
    canvas = Image.new("RGB", (size, size), tuple(int(v) for v in background_3))
    draw = ImageDraw.Draw(canvas)
    r = size * rng.uniform(0.2, 0.32)
    cx, cy = size / 2 + rng.uniform(-0.12, 0.12, 2) * size
    angle = rng.uniform(0, 2 * np.pi)
    colour = tuple(int(v) for v in np.clip(np.asarray(rgb) * rng.uniform(0.9, 1.1, 3), 0, 255))
    kind = name.split("-", 1)[1]
    box = (cx - r, cy - r, cx + r, cy + r)
    if kind in _UNIT_POLYGONS:
        draw.polygon(_placed_polygon(kind, cx, cy, r, angle), fill=colour)
    elif kind == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(r * 0.3)))
    elif kind == "circle":
        draw.ellipse(box, fill=colour)
    else:
        raise ValueError(f"no drawing rule for shape {kind!r} of class {name!r}")
    pixels = np.asarray(canvas, dtype=np.float64) + rng.normal(0.0, 5.0, (size, size, 3))
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def make_classification_demo(
    root: Path,
    *,
    n_per_class: int,
    n_classes: int = 5,
    image_size: int = 224,
    seed: int = 0,
) -> Path:
    """Write ``root/<class_name>/img_%04d.jpg`` (flat image-folder layout, no split
    folders): one coloured shape per image, class = shape + colour.  Returns ``root``.

    Raises:
        ValueError: bad counts / sizes, or n_classes outside 1..len(CLS_CLASSES).
        FileExistsError: ``root`` exists, is not empty and is not a demo folder.
    """
    if not 1 <= n_classes <= len(CLS_CLASSES):
        raise ValueError(f"n_classes must be in 1..{len(CLS_CLASSES)}, got {n_classes}")
    if n_per_class < 1 or image_size < 16:
        raise ValueError(f"need n_per_class >= 1 and image_size >= 16; got {n_per_class}, {image_size}")
    final = Path(root)
    partial = _prepare_partial(final)
    for class_id, (name, rgb) in enumerate(CLS_CLASSES[:n_classes]):
        class_dir = partial / name
        class_dir.mkdir()
        for i in range(1, n_per_class + 1):
            rng = np.random.default_rng([seed, 2, class_id, i])
            pixels = _render_classification(rng, name, rgb, image_size)
            Image.fromarray(pixels).save(class_dir / f"img_{i:04d}.jpg", quality=95)
    names = [name for name, _ in CLS_CLASSES[:n_classes]]
    (partial / "README.txt").write_text(
        _readme(
            f"{n_per_class} images per class of {n_classes} classes ({', '.join(names)}): "
            "one coloured shape on a light noisy background; no split folders.",
            seed,
        )
    )
    _publish(partial, final)
    return final
