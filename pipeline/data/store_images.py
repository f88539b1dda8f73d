"""The images behind a store, as the model saw them.

Reads: a store's attrs (``dataset_kind``, ``dataset_root``, ``config.dataset``, ``preprocess``)
and the image files of the dataset they name. Writes: nothing.

:func:`store_image_paths` lists the split the store was made from (image id → file);
:func:`store_image_loader` gives image index → the RGB picture after the store's own resize
(with its configured interpolation) and centre crop (:func:`pipeline.data.resize_crop`), the
pixels the patch grid lines up with. Used for pictures only (gallery, proposals, probe
figures, manipulate, the notebooks) and the dimred CRF's appearance kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from pipeline.data.datasets import DatasetError, load_split
from pipeline.data.images import load_rgb
from pipeline.data.transforms import Preprocess, resize_crop
from pipeline.dataset_kinds import dataset_kind


def store_image_paths(attrs: Mapping[str, Any], *, base: Path | None = None) -> dict[str, Path]:
    """Image id → image file of the split a store was extracted from (its attrs name it).

    A relative ``dataset_root`` is read from the working directory, or, where it does not
    exist there, from ``base`` (a notebook's project folder).
    """
    kind, root = attrs["dataset_kind"], Path(attrs["dataset_root"])
    if not root.is_absolute() and not root.exists() and base is not None:
        root = base / root
    dataset = attrs["config"]["dataset"]
    extra = {"class_list": dataset["class_list"]} if "class_list" in dataset else {}
    return {s.id: s.image for s in load_split(kind, root, dataset["split"], **extra).samples}


def store_preprocess(attrs: Mapping[str, Any]) -> Preprocess:
    """The preprocessing a store was extracted with (its attrs record it)."""
    return Preprocess(**attrs["preprocess"])


def store_image_loader(reader) -> Callable[[int], Image.Image]:
    """image index → the image as the model saw it (RGB, before normalisation), for a store
    reader (``attrs``, ``image_ids``, ``path``) of a segmentation dataset."""
    attrs = reader.attrs
    if not dataset_kind(attrs["dataset_kind"]).has_masks:
        raise DatasetError(
            f"{reader.path}: reading the images needs a segmentation dataset; this store's is "
            f"{attrs['dataset_kind']} ({dataset_kind(attrs['dataset_kind']).task})"
        )
    path_of = store_image_paths(attrs)
    pre = store_preprocess(attrs)
    ids = reader.image_ids

    def load(idx: int) -> Image.Image:
        image_id = str(ids[idx])
        if image_id not in path_of:
            raise DatasetError(
                f"{reader.path}: image {image_id!r} is not in {attrs['dataset_kind']} dataset "
                f"{attrs['dataset_root']} (split {attrs['config']['dataset']['split']})"
            )
        return resize_crop(load_rgb(path_of[image_id]), pre)

    return load
