"""List the samples (image path, mask path or class label) of one dataset split.

Reads: directory listings, ``objectInfo150.txt`` (ADE20K), ``classes.txt``
(segmentation folders) and the JSON split file of flat image folders.
Writes: only the JSON split file of a flat image folder, the first time it is
needed (atomically: temp file + rename).

No pixels are read here; ``pipeline.data.images`` does that.  Sample ids are the
image path relative to the dataset root, posix style, so they are stable across
machines and readable in plots.

Layouts
-------
ade20k              <root>/ADEChallengeData2016/{images,annotations}/{training,validation}/
                    (root may also be the ADEChallengeData2016 folder itself)
imagefolder         <root>/<class>/<img>            (split computed and saved once)
                    <root>/{train,val|test}/<class>/<img>   (pre-split)
segfolder           <root>/classes.txt, <root>/<split>/images/*, <root>/<split>/masks/*.png

Each loader is registered (task, default splits, arguments) in :mod:`pipeline.dataset_kinds`;
:func:`load_split` reads a split through that registry.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import atomic
from pipeline.dataset_kinds import TASKS, dataset_kind

__all__ = [
    "IMAGE_EXTENSIONS",
    "DatasetError",
    "StaleSplitError",
    "Sample",
    "SplitData",
    "ade20k",
    "image_folder",
    "segmentation_folder",
    "load_split",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
_ADE_SPLITS = {
    "training": "training",
    "train": "training",
    "validation": "validation",
    "val": "validation",
}
_SEG_IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png"})


class DatasetError(ValueError):
    """A dataset folder that does not have the expected layout or contents."""


class StaleSplitError(DatasetError):
    """A saved split file that no longer matches the files in its dataset folder."""


@dataclass(frozen=True)
class Sample:
    """One image of a split.

    Attributes:
        id: image path relative to the dataset root, posix style.
        image: full path of the image file.
        mask: full path of the class-id mask PNG (segmentation only).
        label: class id, index into ``SplitData.class_names`` (classification only).
    """

    id: str
    image: Path
    mask: Path | None = None
    label: int | None = None


@dataclass(frozen=True)
class SplitData:
    """The samples of one split and the meaning of their labels.

    Attributes:
        task: "segmentation" or "classification".
        class_names: index = label id; for segmentation id 0 is "other" (unlabelled).
        samples: in a stable order (sorted by id).
    """

    task: str
    class_names: tuple[str, ...]
    samples: tuple[Sample, ...]

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"SplitData.task must be one of {TASKS}, got {self.task!r}")
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "samples", tuple(self.samples))

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.samples)


# --------------------------------------------------------------------------- helpers


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _list_images(folder: Path, extensions: frozenset[str], *, recursive: bool) -> list[Path]:
    """Non-hidden image files under ``folder`` (case-insensitive extension), sorted."""
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    found = [p for p in candidates if p.suffix.lower() in extensions and not _is_hidden(p, folder) and p.is_file()]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise DatasetError(f"{what}: expected a directory at {path}, found none")


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    atomic.write_json(path, payload, indent=1)


# --------------------------------------------------------------------------- ADE20K


def _ade_base(root: Path) -> Path:
    root = Path(root)
    if (root / "ADEChallengeData2016").is_dir():
        return root / "ADEChallengeData2016"
    if (root / "images").is_dir() and (root / "annotations").is_dir():
        return root
    raise DatasetError(
        f"ADE20K: neither {root / 'ADEChallengeData2016'} nor {root / 'images'} + "
        f"{root / 'annotations'} exist; pass the ADEChallengeData2016 folder or its parent"
    )


def _first_name(raw: str) -> str:
    """'building;edifice' (CSAIL's .csv) / 'building, edifice' (ADE's .txt) -> 'building'.

    The first synonym is the class name ADE20K users know: CSAIL's semantic-segmentation-pytorch
    (``row[5].split(";")[0]``) and mmsegmentation's ``ADE20KDataset`` use it."""
    return raw.split(";")[0].split(",")[0].strip()


def _table_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of the non-blank lines: a ``.csv`` through :mod:`csv` (quoted fields),
    any other file split on tabs where a line has one per header field, else on runs of whitespace (the last
    field, the name, keeps its spaces)."""
    if path.suffix.lower() == ".csv":
        with open(path, encoding="utf-8-sig", newline="") as fd:
            rows = [(i, [f.strip() for f in r]) for i, r in enumerate(csv.reader(fd), start=1)]
        return [(i, r) for i, r in rows if any(r)]
    lines = [(i, line) for i, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1)]
    lines = [(i, line) for i, line in lines if line.strip()]
    if not lines:
        return []
    n = len(lines[0][1].split())  # header fields
    return [
        (i, [f.strip() for f in line.split("\t")] if line.count("\t") >= n - 1 else line.split(None, n - 1))
        for i, line in lines
    ]


def has_object_info_header(path: Path) -> bool:
    """Whether the first non-blank line of ``path`` is an objectInfo header (first field ``Idx``,
    separated by commas, tabs or spaces: ADE20K's ``objectInfo150.txt`` and CSAIL's ``.csv``)."""
    with open(path, encoding="utf-8-sig") as fd:
        first = next((line for line in fd if line.strip()), "")
    return re.split(r"[,\s]+", first.strip(), maxsplit=1)[0].lower() == "idx"


def read_object_info(path: Path) -> tuple[str, ...]:
    """Class names 1..N from an ADE20K ``objectInfo*.txt`` (header ``Idx Ratio Train Val Name``,
    tab- or space-separated) or a CSAIL-format ``.csv`` (header ``Idx,Ratio,Train,Val,Name``, as
    ``objectInfo150.csv``; names may be quoted).  The header is skipped, the ``Idx`` column must
    count 1, 2, …, names come from the ``Name`` column, and of ``;``- or ``,``-separated synonyms
    the first is kept (:func:`_first_name`).  Returns (name_1, ..., name_N)."""
    rows = _table_rows(path)
    header = [f.lower() for f in rows[0][1]] if rows else []
    if not header or header[0] != "idx" or "name" not in header:
        raise DatasetError(
            f"{path}: first line must be the header 'Idx Ratio Train Val Name' (.csv: 'Idx,Ratio,Train,Val,Name')"
        )
    name_col = header.index("name")
    names = []
    for line_no, fields in rows[1:]:
        if len(fields) <= name_col:
            raise DatasetError(f"{path}, line {line_no}: expected {len(header)} fields, got {fields!r}")
        try:
            idx = int(fields[0])
        except ValueError:
            raise DatasetError(f"{path}, line {line_no}: Idx {fields[0]!r} is not an integer") from None
        if idx != len(names) + 1:
            raise DatasetError(f"{path}, line {line_no}: Idx {idx}, expected {len(names) + 1}")
        name = _first_name(fields[name_col])
        if not name:
            raise DatasetError(f"{path}, line {line_no}: empty class name")
        names.append(name)
    if not names:
        raise DatasetError(f"{path}: no class rows after the header")
    return tuple(names)


def read_any_class_list(path: Path) -> tuple[str, ...]:
    """("other", name_1, ...) from an objectInfo-style file (header first, :func:`read_object_info`),
    else a plain list (:func:`read_class_list`, line 0 = id 0). A ``.csv`` must have the header:
    read as lines, its rows would become class names."""
    if has_object_info_header(path):
        return ("other",) + read_object_info(path)
    if path.suffix.lower() == ".csv":
        raise DatasetError(
            f"{path}: a .csv class list needs CSAIL's header 'Idx,Ratio,Train,Val,Name' (as ADE20K's "
            "objectInfo150.csv); a plain list is a .txt with one name per line, line 0 = id 0"
        )
    return read_class_list(path)


def ade20k_class_names(root: Path, class_list: Path | None = None) -> tuple[tuple[str, ...], Path]:
    """("other", name_1, ...) and the file they came from.

    ``class_list`` (config ``datasets.<name>.class_list``): an ``objectInfo``-style ``.txt`` /
    ``.csv`` (header first) or a plain list (one name per line, line 0 = id 0).  Otherwise the
    first of ``objectInfo150.txt``, ``objectInfo150.csv`` in the ADEChallengeData2016 folder or
    ``root``, else the only ``objectInfo*.txt`` / ``objectInfo*.csv`` there (e.g. a 10-class
    ADE-layout set's ``objectInfo10.txt``).
    """
    base = _ade_base(Path(root))
    if class_list is not None:
        path = Path(class_list)
        if not path.is_file():
            raise DatasetError(f"ADE20K: class_list {path} does not exist")
        return read_any_class_list(path), path
    folders = list(dict.fromkeys([base, Path(root)]))
    named = [f / n for f in folders for n in ("objectInfo150.txt", "objectInfo150.csv")]
    found = next((p for p in named if p.is_file()), None)
    if found is None:
        others = sorted({p for f in folders for pat in ("objectInfo*.txt", "objectInfo*.csv") for p in f.glob(pat)})
        if len(others) == 1:
            found = others[0]
        elif len(others) > 1:
            raise DatasetError(
                f"ADE20K: several class lists ({', '.join(map(str, others))}); name one with datasets.<name>.class_list"
            )
    if found is None:
        raise DatasetError(
            f"ADE20K: class list not found; expected {named[0]} (or objectInfo150.csv; the real dataset "
            "ships it; pipeline.data.demo.make_segmentation_demo writes it for the demo), or set datasets.<name>.class_list"
        )
    return ("other",) + read_object_info(found), found


def ade20k(root: Path, split: str, class_list: Path | None = None) -> SplitData:
    """ADE20K SceneParsing (or the synthetic demo written in the same layout).

    Args:
        root: the ADEChallengeData2016 folder or its parent.
        split: "training" / "train" or "validation" / "val".
        class_list: a class-list file instead of objectInfo150.txt (see :func:`ade20k_class_names`).

    Returns:
        SplitData(task="segmentation", class_names=("other", <N names from
        objectInfo150.txt>)) with samples sorted by file name; ids are relative to
        the ADEChallengeData2016 folder, e.g. "images/training/ADE_train_00000001.jpg".

    Raises:
        DatasetError: unknown split, missing folders, missing or malformed
            objectInfo150.txt (naming the expected path), or an image without
            its annotation (naming both paths).
    """
    if split not in _ADE_SPLITS:
        raise DatasetError(f"ADE20K split must be one of {sorted(_ADE_SPLITS)}, got {split!r}")
    folder = _ADE_SPLITS[split]
    base = _ade_base(Path(root))
    class_names, _ = ade20k_class_names(root, class_list)
    image_dir, mask_dir = base / "images" / folder, base / "annotations" / folder
    _require_dir(image_dir, f"ADE20K {folder} images")
    _require_dir(mask_dir, f"ADE20K {folder} annotations")
    images = _list_images(image_dir, _SEG_IMAGE_EXTENSIONS, recursive=False)
    if not images:
        raise DatasetError(f"ADE20K: no images (.jpg, .jpeg, .png) in {image_dir}")
    samples = []
    for image in images:
        mask = mask_dir / f"{image.stem}.png"
        if not mask.is_file():
            raise DatasetError(f"ADE20K: image {image} has no annotation; expected {mask}")
        samples.append(Sample(id=image.relative_to(base).as_posix(), image=image, mask=mask))
    return SplitData(task="segmentation", class_names=class_names, samples=tuple(samples))


# --------------------------------------------------------------------------- image folders


def _eval_folder(root: Path, split: str) -> Path:
    if split == "train":
        return root / "train"
    if split not in ("val", "test"):
        raise DatasetError(f"image folder split must be 'train', 'val' or 'test', got {split!r}")
    preferred, other = root / split, root / ("test" if split == "val" else "val")
    if preferred.is_dir():
        return preferred
    if other.is_dir():
        return other
    raise DatasetError(f"pre-split image folder {root}: has train/ but neither {preferred} nor {other}")


def _pre_split(root: Path, split: str) -> SplitData:
    folder = _eval_folder(root, split)
    split_dirs = [root / name for name in ("train", "val", "test") if (root / name).is_dir()]
    class_names = tuple(sorted({name for d in split_dirs for name in _class_dirs(d)}))
    if not class_names:
        raise DatasetError(f"pre-split image folder {root}: no class sub-folders in {split_dirs}")
    label_of = {name: i for i, name in enumerate(class_names)}
    samples = [
        Sample(id=image.relative_to(root).as_posix(), image=image, label=label_of[name])
        for name in _class_dirs(folder)
        for image in _list_images(folder / name, IMAGE_EXTENSIONS, recursive=True)
    ]
    if not samples:
        raise DatasetError(f"pre-split image folder {root}: no images in {folder}")
    samples.sort(key=lambda s: s.id)
    return SplitData(task="classification", class_names=class_names, samples=tuple(samples))


def stratified_split(ids_by_class: dict[str, list[str]], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded per-class split.  A class with n >= 2 images gets
    clip(round(n * val_fraction), 1, n - 1) validation images (halves round up); a
    single image goes to train.  Classes are drawn in sorted order from one
    ``np.random.default_rng(seed)``.  Returns (train ids, val ids), each sorted."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for name in sorted(ids_by_class):
        ids = sorted(ids_by_class[name])
        n = len(ids)
        n_val = 0 if n < 2 else int(min(max(np.floor(n * val_fraction + 0.5), 1), n - 1))
        order = rng.permutation(n)
        val += [ids[i] for i in order[:n_val]]
        train += [ids[i] for i in order[n_val:]]
    return sorted(train), sorted(val)


def _read_split_file(split_file: Path, all_ids: set[str], val_fraction: float, seed: int) -> dict:
    try:
        saved = json.loads(split_file.read_text())
        train, val = list(saved["train"]), list(saved["val"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"split file {split_file} is unreadable or malformed ({e})") from None
    if saved.get("seed") != seed or saved.get("val_fraction") != val_fraction:
        raise StaleSplitError(
            f"split file {split_file} was made with seed={saved.get('seed')!r} "
            f"val_fraction={saved.get('val_fraction')!r}, but seed={seed!r} "
            f"val_fraction={val_fraction!r} was asked for; delete it to recompute"
        )
    listed = set(train) | set(val)
    if set(train) & set(val) or len(listed) != len(train) + len(val):
        raise DatasetError(f"split file {split_file} lists some ids twice")
    if listed != all_ids:
        added, removed = sorted(all_ids - listed), sorted(listed - all_ids)
        raise StaleSplitError(
            f"split file {split_file} no longer matches the image folder: "
            f"{len(added)} file(s) added (e.g. {added[:3]}), {len(removed)} removed "
            f"(e.g. {removed[:3]}); delete it to recompute the split"
        )
    return {"train": train, "val": val}


def image_folder(root: Path, split: str, *, split_file: Path, val_fraction: float = 0.2, seed: int = 0) -> SplitData:
    """Classification images, one sub-folder per class.

    Layouts:
      * ``root/train/`` exists: pre-split ``root/{train,val|test}/<class>/<img>``;
        "val" and "test" are aliases for whichever folder exists; class ids are
        the sorted union of class folders over all split folders; ``split_file``,
        ``val_fraction`` and ``seed`` are unused.
      * otherwise ``root/<class>/<img>``: a seeded, stratified split (see
        ``stratified_split``) is computed once, written to ``split_file`` as JSON
        {"seed", "val_fraction", "train": [ids], "val": [ids]} and reused.

    Images: extensions in IMAGE_EXTENSIONS (any case) anywhere under a class
    folder; hidden files and folders are ignored.  Ids are relative to ``root``.

    Raises:
        DatasetError: bad split name or layout, no images.
        StaleSplitError: ``split_file`` exists but lists other files than the
            folder holds, or was made with another seed / val_fraction.
    """
    root = Path(root)
    _require_dir(root, "image folder")
    if (root / "train").is_dir():
        return _pre_split(root, split)
    if split not in ("train", "val", "test"):
        raise DatasetError(f"image folder split must be 'train', 'val' or 'test', got {split!r}")
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be in (0, 1), got {val_fraction!r} (for {root})")
    class_names = tuple(_class_dirs(root))
    if not class_names:
        raise DatasetError(f"image folder {root}: no class sub-folders")
    images_by_class = {name: _list_images(root / name, IMAGE_EXTENSIONS, recursive=True) for name in class_names}
    path_of = {
        image.relative_to(root).as_posix(): (image, label)
        for label, name in enumerate(class_names)
        for image in images_by_class[name]
    }
    if not path_of:
        raise DatasetError(f"image folder {root}: no images in any class folder")
    split_file = Path(split_file)
    if split_file.exists():
        chosen = _read_split_file(split_file, set(path_of), val_fraction, seed)
    else:
        ids_by_class = {
            name: [image.relative_to(root).as_posix() for image in images] for name, images in images_by_class.items()
        }
        train, val = stratified_split(ids_by_class, val_fraction, seed)
        chosen = {"train": train, "val": val}
        _write_json_atomic(split_file, {"seed": seed, "val_fraction": val_fraction, "train": train, "val": val})
    side = "train" if split == "train" else "val"
    samples = tuple(Sample(id=sid, image=path_of[sid][0], label=path_of[sid][1]) for sid in sorted(chosen[side]))
    return SplitData(task="classification", class_names=class_names, samples=samples)


# --------------------------------------------------------------------------- segmentation folders


def read_class_list(path: Path) -> tuple[str, ...]:
    """One class name per line; line 0 is id 0 (other/background).  Trailing blank
    lines are ignored, blank lines in between are an error."""
    if not path.is_file():
        raise DatasetError(f"segmentation folder: class list not found; expected {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    names = tuple(line.strip() for line in lines)
    if not names:
        raise DatasetError(f"{path}: no class names")
    if "" in names:
        raise DatasetError(f"{path}, line {names.index('') + 1}: empty class name")
    return names


def segmentation_folder(root: Path, split: str, class_list: Path | None = None) -> SplitData:
    """``root/classes.txt`` + ``root/<split>/images/*.{jpg,jpeg,png}`` +
    ``root/<split>/masks/<same stem>.png``.  Ids are relative to ``root``.

    Raises:
        DatasetError: missing classes.txt / folders, no images, or an image
            without its mask (naming both paths).
    """
    root = Path(root)
    if class_list is not None and not Path(class_list).is_file():
        raise DatasetError(f"segmentation folder: class_list {class_list} does not exist")
    class_names = (
        read_any_class_list(Path(class_list)) if class_list is not None else read_class_list(root / "classes.txt")
    )
    image_dir, mask_dir = root / split / "images", root / split / "masks"
    _require_dir(image_dir, f"segmentation folder split {split!r} images")
    _require_dir(mask_dir, f"segmentation folder split {split!r} masks")
    images = _list_images(image_dir, _SEG_IMAGE_EXTENSIONS, recursive=False)
    if not images:
        raise DatasetError(f"segmentation folder: no images in {image_dir}")
    samples = []
    for image in images:
        mask = mask_dir / f"{image.stem}.png"
        if not mask.is_file():
            raise DatasetError(f"segmentation folder: image {image} has no mask; expected {mask}")
        samples.append(Sample(id=image.relative_to(root).as_posix(), image=image, mask=mask))
    return SplitData(task="segmentation", class_names=class_names, samples=tuple(samples))


# --------------------------------------------------------------------------- dispatch


def load_split(kind: str, root: Path, split: str, **kwargs: Any) -> SplitData:
    """List one split with the loader of the registered layout ``kind`` (:mod:`pipeline.dataset_kinds`).

    Raises ValueError listing the known kinds if ``kind`` is unknown.
    """
    try:
        record = dataset_kind(kind)
    except KeyError as err:
        raise ValueError(err.args[0]) from None
    return record.load_function()(Path(root), split, **kwargs)
