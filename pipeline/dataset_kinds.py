"""The dataset-layout registry: what a dataset layout is, and every layout the pipeline reads (no torch).

A layout is one :class:`DatasetKind` record in :data:`DATASET_KINDS`: its name
(``datasets.<name>.kind`` in the config; the config schema's enum lists exactly these,
:func:`pipeline.config.load_schema`), the task of its datasets (``segmentation``: per-pixel
masks, ``classification``: one label per image), the function that lists one split
(``"module:function"``, imported only when a split is read: the loaders live in
:mod:`pipeline.data.datasets`), its default split names, whether it takes a ``class_list``
file, and whether it has no train/val folders of its own, so the pipeline draws a seeded
split and saves it beside the caches (``layout.split_file``).

Who reads it: :mod:`pipeline.config` (the schema enum, ``DatasetConfig.task``, the default
splits, the ``class_list`` check), :mod:`pipeline.data.datasets` (``load_split``),
:mod:`pipeline.extract` (the loader's arguments), :mod:`pipeline.layout` (the split file an
extraction writes).

Adding a layout: its loader ``(root, split, **kwargs) -> SplitData`` and one :func:`register`
call (here, or at run time: the registry is read on each use).

Reads nothing; writes nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

TASKS = ("segmentation", "classification")


@dataclass(frozen=True)
class DatasetKind:
    """One registered dataset layout.

    Attributes:
        name: the config name (``datasets.<name>.kind``).
        task: ``segmentation`` (each image has a mask) or ``classification`` (a label per image).
        loader: ``"module:function"``: ``function(root, split, **kwargs) -> SplitData`` lists one split.
        default_splits: our split name (train, val) -> the layout's own folder name.
        class_list: the loader takes ``class_list=`` (``datasets.<name>.class_list``), a file
            of class names instead of the layout's own.
        seeded_split: one pool of images the pipeline splits itself (``val_fraction``,
            ``split_seed``), saved to ``layout.split_file`` by the first extraction; the loader
            takes ``split_file=``, ``val_fraction=`` and ``seed=``.
        summary: one line for the schema's description and docs.
    """

    name: str
    task: str
    loader: str
    default_splits: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({"train": "train", "val": "val"})
    )
    class_list: bool = False
    seeded_split: bool = False
    summary: str = ""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"dataset kind {self.name!r}: task {self.task!r} is not one of {', '.join(TASKS)}")

    @property
    def has_masks(self) -> bool:
        return self.task == "segmentation"

    def load_function(self) -> Callable[..., Any]:
        """The loader (imported now: it reads images with PIL and numpy)."""
        module, _, attr = self.loader.partition(":")
        return getattr(importlib.import_module(module), attr)


DATASET_KINDS: dict[str, DatasetKind] = {}


def register(kind: DatasetKind) -> DatasetKind:
    """Add ``kind`` to :data:`DATASET_KINDS` (a second record of one name replaces the first)."""
    DATASET_KINDS[kind.name] = kind
    return kind


def dataset_kind(name: str) -> DatasetKind:
    """The record of ``name``; ``KeyError`` listing the known layouts (the config schema refuses an
    unknown one first, naming the key)."""
    try:
        return DATASET_KINDS[name]
    except KeyError:
        raise KeyError(f"unknown dataset kind {name!r}; known kinds: {sorted(DATASET_KINDS)}") from None


register(
    DatasetKind(
        "ade20k",
        "segmentation",
        "pipeline.data.datasets:ade20k",
        default_splits=MappingProxyType({"train": "training", "val": "validation"}),
        class_list=True,
        summary="ADE20K SceneParsing (ADEChallengeData2016): images/<split>/*.jpg, annotations/<split>/*.png, objectInfo150",
    )
)
register(
    DatasetKind(
        "imagefolder",
        "classification",
        "pipeline.data.datasets:image_folder",
        seeded_split=True,
        summary="one folder per class (or <split>/<class>/ folders); without split folders a seeded split",
    )
)
register(
    DatasetKind(
        "segfolder",
        "segmentation",
        "pipeline.data.datasets:segmentation_folder",
        class_list=True,
        summary="<split>/images/* with same-named PNG masks in <split>/masks/, classes.txt",
    )
)
