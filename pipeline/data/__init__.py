"""Datasets and image handling for the ViT activation cache.

Modules (one job each):
  images        read image files as 8-bit RGB and mask PNGs as int64 class ids
  device_decode decode JPEGs in batches on the GPU and preprocess them there (extract.decode)
  transforms    resize / center-crop / normalise an image and its mask identically
  patch_labels  reduce a pixel mask to one (label, purity) per ViT patch
  datasets      list the samples of a split (ADE20K, image folders, segmentation folders)
  store_images  the images behind a store, as the model saw them (gallery, figures, CRF)
  demo          write small synthetic datasets so everything runs offline
"""

from pipeline.data.datasets import (
    IMAGE_EXTENSIONS,
    DatasetError,
    Sample,
    SplitData,
    StaleSplitError,
    ade20k,
    image_folder,
    load_split,
    segmentation_folder,
)
from pipeline.data.demo import make_classification_demo, make_segmentation_demo
from pipeline.data.images import BadImageError, Fingerprint, MaskError, load_mask, load_rgb, read_file
from pipeline.data.patch_labels import patch_labels, patch_labels_batch
from pipeline.data.store_images import store_image_loader, store_image_paths, store_preprocess
from pipeline.data.transforms import (
    CropGeometry,
    Preprocess,
    crop_geometry,
    preprocess_image,
    preprocess_mask,
    resize_crop,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "BadImageError",
    "CropGeometry",
    "DatasetError",
    "Fingerprint",
    "MaskError",
    "Preprocess",
    "Sample",
    "SplitData",
    "StaleSplitError",
    "ade20k",
    "crop_geometry",
    "image_folder",
    "load_mask",
    "load_rgb",
    "load_split",
    "make_classification_demo",
    "make_segmentation_demo",
    "patch_labels",
    "patch_labels_batch",
    "preprocess_image",
    "preprocess_mask",
    "read_file",
    "resize_crop",
    "segmentation_folder",
    "store_image_loader",
    "store_image_paths",
    "store_preprocess",
]
