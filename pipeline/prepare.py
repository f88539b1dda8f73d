"""Turn official dataset downloads into the image-folder layout our loader reads.

``python -m pipeline prepare {caltech101,cub,flowers102} --src SRC --out OUT``

Downloading stays with the user (nothing here touches the network). The
official sources are:

Caltech-101
    https://data.caltech.edu/records/mzrjq-6wc02  -- ``caltech-101.zip``
    (https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip).
    The zip holds ``caltech-101/101_ObjectCategories.tar.gz`` (plus
    ``Annotations.tar``, ``show_annotation.m`` and a ``__MACOSX/`` folder, all
    unused here); the tarball holds ``101_ObjectCategories/<class>/image_NNNN.jpg``
    for 101 object classes plus the ``BACKGROUND_Google`` clutter folder.
CUB-200-2011
    https://data.caltech.edu/records/65de6-vp158  -- ``CUB_200_2011.tgz``
    (https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz).
    It holds ``CUB_200_2011/`` with ``images.txt`` (``<image id> <class dir>/<file>``),
    ``image_class_labels.txt`` (``<image id> <class id>``), ``train_test_split.txt``
    (``<image id> <is_training_image>``, 1 = train, 0 = test), ``classes.txt``
    (``<class id> <class name>``) and ``images/<class dir>/<file>.jpg``.
Oxford Flowers-102
    https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ -- three files:
    ``102flowers.tgz`` (``jpg/image_00001.jpg`` .. ``jpg/image_08189.jpg``),
    ``imagelabels.mat`` (variable ``labels``: class 1..102 of image *i*, 1-based)
    and ``setid.mat`` (variables ``trnid``, ``valid``, ``tstid``: 1-based image ids).

What ``--src`` may be
    * Caltech-101: ``caltech-101.zip``, ``101_ObjectCategories.tar.gz``, or a folder
      holding either of them or an extracted ``101_ObjectCategories/`` (directly or
      under ``caltech-101/``), or the ``101_ObjectCategories`` folder itself.
    * CUB: ``CUB_200_2011.tgz``, or a folder that is (or holds) ``CUB_200_2011/``.
    * Flowers-102: the folder holding ``imagelabels.mat``, ``setid.mat`` and either
      ``102flowers.tgz`` or its extracted ``jpg/`` folder (``jpg/`` wins if both are
      there); or the path of ``102flowers.tgz`` itself, with the two ``.mat`` files
      next to it.

Layouts written under ``--out`` (what :func:`pipeline.data.image_folder` reads)
    * CUB: ``train/<class>/<img>`` and ``test/<class>/<img>`` from the official
      ``train_test_split.txt`` (1 = train -> 5,994 train / 5,794 test images).
      Class folders keep the official names, e.g. ``001.Black_footed_Albatross``,
      so sorting them gives the official class-id order.
    * Flowers-102: ``train/<class>/<img>`` and ``test/<class>/<img>``. The official
      split has three parts (trnid 1,020 / valid 1,020 / tstid 6,149 images); we put
      ``trnid`` + ``valid`` into ``train`` (2,040 images, 20 per class) and ``tstid``
      into ``test``, since our loader knows only train/test and the official
      validation part exists for tuning, which our probes do on the train side.
      The official files carry no class names, so the folders are
      ``class_001`` .. ``class_102`` (= the 1-based label in ``imagelabels.mat``;
      sorting them gives label order). The name lists that circulate are not part
      of the official release and are not used.
    * Caltech-101 has no official split: ``<class>/<img>``; the loader then makes
      its seeded split and saves it. ``BACKGROUND_Google`` is a clutter folder, not
      an object class, and is dropped by default (as torchvision's ``Caltech101``
      does); ``--keep-background`` keeps it as a 102nd class. Non-image files in
      the class folders are skipped and counted.

Behaviour
    * Archives are read with :mod:`tarfile` / :mod:`zipfile`; a member with an
      absolute path or a ``..`` component refuses the whole archive
      (:class:`UnsafeArchiveError`); links and special files are skipped.
      Extraction goes to a hidden temporary folder next to ``--out`` that is
      removed afterwards.
    * Image files are hard-linked into ``--out`` when possible (same file
      system), else copied.
    * Idempotent: a re-run rebuilds the same tree. ``--out`` must be absent,
      empty, or made earlier by this command for the same dataset (it then holds
      ``PREPARED.json``); anything else is an error naming it. Files that are not
      ours in a prepared ``--out`` (e.g. a split file the loader saved) are kept.
    * ``out/PREPARED.json`` records the dataset, the source, the layout and the
      counts per split and class.
    * A missing expected file is a :class:`FileNotFoundError` naming the path.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np

from pipeline import atomic

__all__ = [
    "DATASETS",
    "MANIFEST",
    "OFFICIAL_TOTALS",
    "UnsafeArchiveError",
    "add_parser",
    "prepare",
]

DATASETS = ("caltech101", "cub", "flowers102")
MANIFEST = "PREPARED.json"
FORMAT_VERSION = 1
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
CALTECH_BACKGROUND = "BACKGROUND_Google"

#: Image totals per split of the full official releases (a sanity note, not a check).
OFFICIAL_TOTALS = {
    "cub": {"train": 5994, "test": 5794},
    "flowers102": {"train": 2040, "test": 6149},
}

SOURCE_URLS = {
    "caltech101": "https://data.caltech.edu/records/mzrjq-6wc02 (caltech-101.zip)",
    "cub": "https://data.caltech.edu/records/65de6-vp158 (CUB_200_2011.tgz)",
    "flowers102": "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ (102flowers.tgz, imagelabels.mat, setid.mat)",
}


class PrepareError(ValueError):
    """Any failure of ``prepare`` on the command line (one ``error:`` line, exit 2)."""


class UnsafeArchiveError(ValueError):
    """An archive member would land outside the extraction folder."""


# --------------------------------------------------------------------------- archives


def _member_parts(name: str, archive: Path) -> tuple[str, ...] | None:
    """Validated relative path parts of an archive member (None: nothing to extract)."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: refusing member with an absolute path: {name!r}")
    parts = tuple(p for p in PurePosixPath(name).parts if p not in ("", "."))
    if ".." in parts:
        raise UnsafeArchiveError(f"{archive}: refusing member with a '..' component: {name!r}")
    return parts or None


def _target(root: Path, parts: tuple[str, ...], archive: Path, name: str) -> Path:
    dest = root.joinpath(*parts)
    # Defence in depth: the resolved path must stay under root.
    if not dest.resolve().is_relative_to(root.resolve()):
        raise UnsafeArchiveError(f"{archive}: member escapes the extraction folder: {name!r}")
    return dest


def _extract(archive: Path, dest: Path, want: Callable[[str], bool] | None = None) -> Path:
    """Safely extract regular files (and folders) of a tar or zip archive into ``dest``.

    Every member is validated, wanted or not; ``want(relative_name)`` picks the
    members that are written. Links and special files are skipped.
    """
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                name = info.filename.replace("\\", "/")
                parts = _member_parts(name, archive)
                if parts is None or parts[0] == "__MACOSX":
                    continue
                rel = "/".join(parts)
                if want is not None and not info.is_dir() and not want(rel):
                    continue
                target = _target(dest, parts, archive, name)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as fsrc, open(target, "wb") as fdst:
                    shutil.copyfileobj(fsrc, fdst, 1 << 20)
        return dest
    if tarfile.is_tarfile(archive):
        # Stream in one pass; a bad member aborts and the caller removes ``dest``.
        with tarfile.open(archive, "r:*") as tf:
            for member in tf:
                parts = _member_parts(member.name, archive)
                if parts is None or not (member.isdir() or member.isfile()):
                    continue  # links and special files are never created
                rel = "/".join(parts)
                if want is not None and member.isfile() and not want(rel):
                    continue
                target = _target(dest, parts, archive, member.name)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                fsrc = tf.extractfile(member)
                assert fsrc is not None
                with fsrc, open(target, "wb") as fdst:
                    shutil.copyfileobj(fsrc, fdst, 1 << 20)
        return dest
    raise ValueError(f"{archive}: not a tar or zip archive")


def _require(path: Path, what: str = "file", hint: str = "") -> Path:
    ok = path.is_dir() if what == "folder" else path.is_file()
    if not ok:
        msg = f"expected {what} not found: {path}"
        raise FileNotFoundError(msg + (f" ({hint})" if hint else ""))
    return path


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


# --------------------------------------------------------------------------- datasets
# Each planner returns (plan, info): plan maps a relative output path
# ("train/<class>/<img>" or "<class>/<img>") to the source file.

Plan = dict[str, Path]


def _plan_caltech101(src: Path, work: Path, keep_background: bool) -> tuple[Plan, dict]:
    cats_name = "101_ObjectCategories"
    tar_name = f"{cats_name}.tar.gz"

    def locate(root: Path) -> Path | None:
        if root.name == cats_name and root.is_dir():
            return root
        for base in (root, root / "caltech-101"):
            if (base / cats_name).is_dir():
                return base / cats_name
        for base in (root, root / "caltech-101"):
            if (base / tar_name).is_file():
                out = _extract(base / tar_name, work / "caltech_tar")
                return _require(out / cats_name, "folder", f"inside {base / tar_name}")
        return None

    if src.is_dir():
        root = src
    else:
        root = _extract(
            _require(src),
            work / "caltech_src",
            want=lambda n: n.endswith(tar_name) or f"{cats_name}/" in n,
        )
    cats = locate(root)
    if cats is None:
        raise FileNotFoundError(
            f"expected {src / cats_name} (folder) or {src / 'caltech-101' / tar_name} "
            f"(from caltech-101.zip, {SOURCE_URLS['caltech101']})"
            if src.is_dir()
            else f"expected {cats_name}/ or caltech-101/{tar_name} inside {src}"
        )
    plan: Plan = {}
    skipped = 0
    classes = sorted(p for p in cats.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise FileNotFoundError(f"expected class folders in {cats}")
    for cls in classes:
        if cls.name == CALTECH_BACKGROUND and not keep_background:
            continue
        for f in sorted(cls.iterdir()):
            if f.is_file() and _is_image(f):
                plan[f"{cls.name}/{f.name}"] = f
            else:
                skipped += 1
    info = {
        "split": None,
        "split_rule": "no official split: class folders only; the loader makes the seeded split",
        "background_class": "kept" if keep_background else f"{CALTECH_BACKGROUND} dropped",
        "skipped_non_images": skipped,
    }
    return plan, info


def _read_table(path: Path) -> dict[int, str]:
    """``<int id> <value>`` per line -> {id: value} (CUB's text files)."""
    table: dict[int, str] = {}
    for lineno, line in enumerate(_require(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        key, _, value = line.strip().partition(" ")
        try:
            k = int(key)
        except ValueError:
            raise ValueError(f"{path}:{lineno}: expected '<id> <value>', got {line!r}") from None
        if k in table:
            raise ValueError(f"{path}:{lineno}: duplicate id {k}")
        table[k] = value.strip()
    return table


def _plan_cub(src: Path, work: Path, keep_background: bool) -> tuple[Plan, dict]:
    if src.is_dir():
        root = src if (src / "images.txt").is_file() or src.name == "CUB_200_2011" else src / "CUB_200_2011"

        def loc(name: str) -> str:
            return str(root / name)
    else:
        extracted = _extract(_require(src), work / "cub_src")
        inner = "" if (extracted / "images.txt").is_file() else "CUB_200_2011/"
        root = extracted / inner

        def loc(name: str) -> str:
            return f"{src} (member {inner}{name})"

    hint = f"from CUB_200_2011.tgz, {SOURCE_URLS['cub']}"

    def need(name: str, what: str = "file") -> Path:
        p = root / name
        if p.is_dir() if what == "folder" else p.is_file():
            return p
        raise FileNotFoundError(f"expected {what} not found: {loc(name)} ({hint})")

    images = _read_table(need("images.txt"))
    labels = _read_table(need("image_class_labels.txt"))
    split = _read_table(need("train_test_split.txt"))
    classes = _read_table(need("classes.txt"))
    img_dir = need("images", "folder")

    plan: Plan = {}
    for image_id, rel in sorted(images.items()):
        for table, name in ((labels, "image_class_labels.txt"), (split, "train_test_split.txt")):
            if image_id not in table:
                raise ValueError(f"{loc(name)}: no entry for image id {image_id}")
        class_id = int(labels[image_id])
        if class_id not in classes:
            raise ValueError(f"{loc('classes.txt')}: no class id {class_id} (image {image_id})")
        cls = classes[class_id]
        rel_path = PurePosixPath(rel)
        if rel_path.is_absolute() or ".." in rel_path.parts or len(rel_path.parts) != 2:
            raise ValueError(f"{loc('images.txt')}: unexpected image path {rel!r}")
        if rel_path.parts[0] != cls:
            raise ValueError(
                f"{loc('images.txt')}: image {image_id} is in folder {rel_path.parts[0]!r} "
                f"but image_class_labels.txt says class {class_id} ({cls!r})"
            )
        flag = split[image_id]
        if flag not in ("0", "1"):
            raise ValueError(f"{loc('train_test_split.txt')}: image {image_id}: flag {flag!r}")
        part = "train" if flag == "1" else "test"
        f = img_dir / rel_path
        if not f.is_file():
            raise FileNotFoundError(f"expected file not found: {loc('images/' + rel)} ({hint})")
        key = f"{part}/{cls}/{rel_path.name}"
        if key in plan:
            raise ValueError(f"{loc('images.txt')}: two images map to {key}")
        plan[key] = f
    info = {
        "split": "official",
        "split_rule": "train_test_split.txt: 1 -> train, 0 -> test",
    }
    return plan, info


def _load_mat_ids(path: Path, name: str) -> list[int]:
    from scipy.io import loadmat  # scipy: only for the .mat split files of one dataset

    data = loadmat(path, squeeze_me=True)
    if name not in data:
        raise ValueError(
            f"{path}: variable {name!r} not found (have {sorted(k for k in data if not k.startswith('__'))})"
        )
    arr = np.atleast_1d(np.asarray(data[name])).ravel()
    ids = [int(v) for v in arr]
    if any(float(v) != i for v, i in zip(arr.tolist(), ids)):
        raise ValueError(f"{path}: variable {name!r} is not integer-valued")
    return ids


def _plan_flowers102(src: Path, work: Path, keep_background: bool) -> tuple[Plan, dict]:
    base = src if src.is_dir() else src.parent
    hint = f"official file from {SOURCE_URLS['flowers102']}"
    labels_mat = _require(base / "imagelabels.mat", hint=hint)
    setid_mat = _require(base / "setid.mat", hint=hint)
    if src.is_file():
        jpg = _extract(src, work / "flowers_src") / "jpg"
        _require(jpg, "folder", f"inside {src}")
    elif (base / "jpg").is_dir():
        jpg = base / "jpg"
    elif (base / "102flowers.tgz").is_file():
        jpg = _extract(base / "102flowers.tgz", work / "flowers_src") / "jpg"
        _require(jpg, "folder", f"inside {base / '102flowers.tgz'}")
    else:
        raise FileNotFoundError(
            f"expected file not found: {base / '102flowers.tgz'} (or its extracted folder {base / 'jpg'}; {hint})"
        )

    labels = _load_mat_ids(labels_mat, "labels")
    n = len(labels)
    sets = {k: _load_mat_ids(setid_mat, k) for k in ("trnid", "valid", "tstid")}
    seen: dict[int, str] = {}
    for k, ids in sets.items():
        for i in ids:
            if not 1 <= i <= n:
                raise ValueError(f"{setid_mat}: {k} has image id {i} outside 1..{n} (imagelabels.mat)")
            if i in seen:
                raise ValueError(f"{setid_mat}: image id {i} is in both {seen[i]} and {k}")
            seen[i] = k
    plan: Plan = {}
    for k, part in (("trnid", "train"), ("valid", "train"), ("tstid", "test")):
        for i in sets[k]:
            label = labels[i - 1]
            if label < 1:
                raise ValueError(f"{labels_mat}: image {i} has label {label} (expected >= 1)")
            f = jpg / f"image_{i:05d}.jpg"
            if not f.is_file():
                raise FileNotFoundError(f"expected file not found: {f}")
            plan[f"{part}/class_{label:03d}/{f.name}"] = f
    info = {
        "split": "official",
        "split_rule": "setid.mat: trnid + valid -> train, tstid -> test",
        "class_names": "class_NNN = 1-based label in imagelabels.mat (official files carry no names)",
        "unassigned_images": n - len(seen),
    }
    return plan, info


_PLANNERS = {
    "caltech101": _plan_caltech101,
    "cub": _plan_cub,
    "flowers102": _plan_flowers102,
}


# --------------------------------------------------------------------------- output


def _link_or_copy(src: Path, dst: Path) -> str:
    try:
        os.link(src, dst)
        return "link"
    except OSError:
        shutil.copyfile(src, dst)
        return "copy"


def _read_manifest(out: Path) -> dict | None:
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _check_out(out: Path, dataset: str) -> dict | None:
    """Refuse an ``out`` we did not make; return the previous manifest if we did."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out exists and is not a folder: {out}")
    if not out.exists() or not any(out.iterdir()):
        return None
    old = _read_manifest(out)
    if old is None or old.get("created_by") != "pipeline prepare":
        raise FileExistsError(
            f"--out {out} is not empty and was not made by 'pipeline prepare' "
            f"(no {MANIFEST}); choose an empty or new folder"
        )
    if old.get("dataset") != dataset:
        raise FileExistsError(
            f"--out {out} already holds prepared dataset {old.get('dataset')!r}, not {dataset!r}; "
            "choose another folder or delete it"
        )
    return old


def _counts(plan: Plan, split: bool) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for key in plan:
        parts = key.split("/")
        part, cls = (parts[0], parts[1]) if split else ("all", parts[0])
        counts.setdefault(part, {})
        counts[part][cls] = counts[part].get(cls, 0) + 1
    return {p: dict(sorted(c.items())) for p, c in sorted(counts.items())}


def prepare(dataset: str, src: Path, out: Path, *, keep_background: bool = False) -> dict:
    """Write ``dataset`` from its official files at ``src`` as an image-folder tree at ``out``.

    Returns the counts ``{split: {class: n_images}}``; splits are ``train``/``test``
    for CUB and Flowers-102 and ``all`` for Caltech-101 (no official split).
    The same record, with the dataset, source and layout, is written to
    ``out/PREPARED.json``.
    """
    return _prepare(dataset, src, out, keep_background=keep_background)["counts"]


def _prepare(dataset: str, src: Path, out: Path, *, keep_background: bool = False) -> dict:
    """:func:`prepare`, returning the whole ``PREPARED.json`` record (plus ``files``)."""
    if dataset not in _PLANNERS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if keep_background and dataset != "caltech101":
        raise ValueError("keep_background applies to caltech101 only")
    src = Path(src).expanduser().absolute()
    out = Path(out).expanduser().absolute()
    if not src.exists():
        raise FileNotFoundError(f"--src not found: {src}")
    if src == out or src.is_relative_to(out):
        raise ValueError(f"--src {src} lies inside --out {out}")
    old = _check_out(out, dataset)

    out.parent.mkdir(parents=True, exist_ok=True)
    # Staging next to ``out``: same file system, so the final moves are renames
    # and links from extracted archives always work.
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.prepare-", dir=out.parent))
    try:
        plan, info = _PLANNERS[dataset](src, stage / "extract", keep_background)
        if not plan:
            raise FileNotFoundError(f"no images found for {dataset} under {src}")
        tree = stage / "tree"
        modes = {"link": 0, "copy": 0}
        made_dirs: set[Path] = set()
        for key in sorted(plan):
            dst = tree / key
            if dst.parent not in made_dirs:
                dst.parent.mkdir(parents=True, exist_ok=True)
                made_dirs.add(dst.parent)
            modes[_link_or_copy(plan[key], dst)] += 1
        split = info["split"] is not None
        counts = _counts(plan, split)
        entries = sorted(p.name for p in tree.iterdir())
        record = {
            "created_by": "pipeline prepare",
            "format": FORMAT_VERSION,
            "dataset": dataset,
            "source": str(src),
            "official_source": SOURCE_URLS[dataset],
            "layout": "<split>/<class>/<image>" if split else "<class>/<image>",
            **info,
            "num_classes": len({c for per in counts.values() for c in per}),
            "totals": {p: sum(c.values()) for p, c in counts.items()},
            "counts": counts,
            "entries": entries,
        }

        # Swap our entries in; keep files in ``out`` that are not ours.
        out.mkdir(exist_ok=True)
        ours = set(old.get("entries", [])) if old else set()
        clash = [e for e in entries if (out / e).exists() and e not in ours]
        if clash:
            raise FileExistsError(f"--out {out} already has {clash[0]!r}, which this command did not make")
        # Claim old and new entries first, so an interrupted swap can be re-run.
        _write_manifest(out, {**record, "entries": sorted(ours | set(entries))})
        retired = stage / "retired"
        retired.mkdir()
        for e in sorted(ours | set(entries)):
            if e != MANIFEST and (out / e).exists():
                os.replace(out / e, retired / e)
        for e in entries:
            os.replace(tree / e, out / e)
        _write_manifest(out, record)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {**record, "files": modes}  # "files" (linked/copied) is not written


def _write_manifest(out: Path, record: dict) -> None:
    atomic.write_json(out / MANIFEST, record, indent=2, sort_keys=True)


# --------------------------------------------------------------------------- CLI


def _run(args: argparse.Namespace) -> int:
    try:
        rec = _prepare(args.dataset, args.src, args.out, keep_background=args.keep_background)
    except (OSError, ValueError) as e:
        raise PrepareError(f"prepare: {e}") from None
    counts = rec["counts"]
    totals = ", ".join(f"{p}: {sum(c.values())}" for p, c in counts.items())
    n_classes = len({c for per in counts.values() for c in per})
    print(
        f"prepared {args.dataset} -> {args.out}: {n_classes} classes, {totals} images "
        f"({rec['files']['link']} linked, {rec['files']['copy']} copied)"
    )
    if rec.get("skipped_non_images"):
        print(f"skipped {rec['skipped_non_images']} non-image file(s)")
    ref = OFFICIAL_TOTALS.get(args.dataset)
    if ref and rec["totals"] != ref:
        print(f"note: the full official release has {ref}; got {rec['totals']}")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``prepare`` sub-command on an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "prepare",
        help="turn official dataset downloads into the image-folder layout",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dataset", choices=DATASETS)
    p.add_argument(
        "--src", type=Path, required=True, help="the downloaded official archive/files (or their extracted folder)"
    )
    p.add_argument(
        "--out", type=Path, required=True, help="output folder (absent, empty, or made earlier by this command)"
    )
    p.add_argument(
        "--keep-background",
        action="store_true",
        help=f"caltech101 only: keep {CALTECH_BACKGROUND} as a class (dropped by default)",
    )
    p.set_defaults(func=_run)
    return p
