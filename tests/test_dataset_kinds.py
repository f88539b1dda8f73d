"""A dataset layout is one record in pipeline.dataset_kinds plus its loader (issue 26).

A throwaway layout (``listed``, below: a loader reading ``<root>/<split>.txt``, one
``<image path> <class name>`` line per image, a classification layout) is registered at test
time and nothing else is edited: the config schema accepts the kind and gives its datasets the
layout's task, ``python -m pipeline extract`` fills a store from it with the listed labels, and
the Snakemake workflow plans its extraction.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from helpers import plan_registered, write_config
from pipeline.__main__ import main as cli_main
from pipeline.config import CacheRef, ConfigError, load_config
from pipeline.data.datasets import DatasetError, Sample, SplitData
from pipeline.dataset_kinds import DATASET_KINDS, DatasetKind, dataset_kind


def load_listed(root: Path, split: str) -> SplitData:
    """``<root>/<split>.txt``: ``<image path relative to root> <class name>`` per line; the
    classes are the sorted names of both lists (so train and val agree on ids)."""
    lists = {s: (root / f"{s}.txt").read_text().split("\n") for s in ("train", "val")}
    if split not in lists:
        raise DatasetError(f"listed dataset {root}: no split {split!r}")
    rows = {s: [line.rsplit(" ", 1) for line in lines if line.strip()] for s, lines in lists.items()}
    class_names = tuple(sorted({name for r in rows.values() for _, name in r}))
    samples = [Sample(id=path, image=root / path, label=class_names.index(name)) for path, name in rows[split]]
    return SplitData("classification", class_names, tuple(sorted(samples, key=lambda s: s.id)))


LISTED = DatasetKind("listed", "classification", "test_dataset_kinds:load_listed", summary="toy: <split>.txt lists")


def register() -> None:
    """Add the toy layout to the registry (the only change a new layout makes outside its loader)."""
    DATASET_KINDS["listed"] = LISTED


@pytest.fixture
def listed(monkeypatch):
    monkeypatch.setitem(DATASET_KINDS, "listed", LISTED)
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # load_listed's module, for the loader's import


def make_listed(project: Path) -> dict[str, list[tuple[str, str]]]:
    """The tiny classification images, flattened into one folder, listed per split."""
    src, dst = project / "resources/data/cls", project / "resources/data/listed"
    (dst / "img").mkdir(parents=True)
    images = sorted(p for p in src.rglob("*.jpg") if p.parent.parent == src)
    assert len(images) >= 12, images
    lists: dict[str, list[tuple[str, str]]] = {"train": [], "val": []}
    for i, image in enumerate(images):
        name = f"img/{i:03d}.jpg"
        shutil.copy(image, dst / name)
        lists["val" if i % 4 == 0 else "train"].append((name, image.parent.name))
    for split, rows in lists.items():
        (dst / f"{split}.txt").write_text("".join(f"{path} {cls}\n" for path, cls in rows))
    return lists


LISTED_CONFIG = {
    "datasets": {"listed": {"kind": "listed", "root": "resources/data/listed"}},
    "caches": [{"model": "clip", "dataset": "listed"}],
}


def test_the_config_takes_the_layouts_task_and_splits_from_its_record(listed, tmp_path):
    cfg = load_config(write_config(tmp_path, LISTED_CONFIG))
    ds = cfg.dataset("listed")
    assert (ds.task, ds.splits) == ("classification", {"train": "train", "val": "val"})
    assert dataset_kind("ade20k").default_splits == {"train": "training", "val": "validation"}
    assert cfg.dataset("seg").splits == {"train": "training", "val": "validation"}
    write_config(
        tmp_path,
        {**LISTED_CONFIG, "datasets": {"listed": {**LISTED_CONFIG["datasets"]["listed"], "class_list": "x.txt"}}},
    )
    with pytest.raises(ConfigError, match=r"key datasets/listed/class_list: a listed dataset takes no class list"):
        load_config(tmp_path / "config.yaml")


def test_an_unregistered_layout_is_refused_naming_the_key(tmp_path):
    path = write_config(tmp_path, LISTED_CONFIG)
    with pytest.raises(
        ConfigError,
        match=r"config\.yaml: key datasets/listed/kind: 'listed' is not one of \['ade20k', 'imagefolder', 'segfolder'\]",
    ):
        load_config(path)


def test_the_cli_extracts_a_store_of_the_registered_layout(listed, project, capsys):
    lists = make_listed(project)
    path = write_config(project, LISTED_CONFIG)
    assert (
        cli_main(
            [
                "extract",
                "--config",
                str(path),
                "--model",
                "clip",
                "--dataset",
                "listed",
                "--split",
                "val",
                "--no-progress",
            ]
        )
        == 0
    )
    cfg = load_config(path)
    group = zarr.open_group(cfg.store(CacheRef("clip", "listed"), "val"), mode="r")
    assert group.attrs["complete"] is True and group.attrs["dataset_kind"] == "listed"
    names = sorted({cls for rows in lists.values() for _, cls in rows})
    want = sorted(lists["val"])
    assert [str(i) for i in group["image"][:]] == [p for p, _ in want]
    np.testing.assert_array_equal(group["label"][:], [names.index(c) for _, c in want])
    assert group["done"][:].all() and group["acts"].shape[0] == len(want)


def test_the_workflow_plans_the_extraction_of_the_registered_layout(tmp_path):
    write_config(tmp_path, LISTED_CONFIG)
    proc = plan_registered("test_dataset_kinds", tmp_path, "cache")  # after this module's register()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "cache/clip/listed/train.zarr" in out or "clip/listed" in out, out
    assert "extract_part" in out and "listed" in out, out
