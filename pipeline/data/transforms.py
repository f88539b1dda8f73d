"""Resize + center-crop + normalise an image, and apply the same geometry to its mask.

Reads: in-memory PIL images and integer masks.  Writes: nothing.

Geometry (shared by image and mask through ``crop_geometry`` so they align):
  1. resize so the SHORTER side equals ``pre.resize``; the longer side becomes
     round(long * resize / short) (halves round up), keeping the aspect ratio;
  2. center crop ``pre.crop`` x ``pre.crop``: offset (resized - crop) // 2 on each axis.

Images are resampled with ``pre.interpolation`` (Pillow, antialiased when
shrinking); masks always with NEAREST on pixel centres, so no label is invented.
PIL + numpy only (no torchvision).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # torch is imported where a tensor is made: reading a config must not load it
    import torch

__all__ = ["Preprocess", "CropGeometry", "crop_geometry", "preprocess_image", "preprocess_mask", "resize_crop"]

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


@dataclass(frozen=True)
class Preprocess:
    """How a model expects its input: shorter-side resize, square center crop, normalisation.

    Attributes:
        resize: length in pixels of the shorter side after resizing.
        crop: side in pixels of the square center crop (crop <= resize).
        mean: per-channel (R, G, B) mean subtracted after scaling to [0, 1].
        std: per-channel (R, G, B) divisor, all > 0.
        interpolation: "bicubic", "bilinear" or "nearest" (images only).
    """

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ValueError(f"Preprocess.{name} must be a positive int, got {value!r}")
        if self.crop > self.resize:
            raise ValueError(f"Preprocess.crop must be <= Preprocess.resize, got crop={self.crop} resize={self.resize}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            try:
                as_tuple = tuple(float(v) for v in value)
            except (TypeError, ValueError):
                raise ValueError(f"Preprocess.{name} must be 3 numbers, got {value!r}") from None
            if len(as_tuple) != 3 or not all(np.isfinite(as_tuple)):
                raise ValueError(f"Preprocess.{name} must be 3 finite numbers, got {value!r}")
            object.__setattr__(self, name, as_tuple)
        if min(self.std) <= 0:
            raise ValueError(f"Preprocess.std must be > 0 in every channel, got {self.std!r}")
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"Preprocess.interpolation must be one of {sorted(_RESAMPLE)}, got {self.interpolation!r}")


@dataclass(frozen=True)
class CropGeometry:
    """Where an input of (W, H) pixels goes: resized to (resized_W, resized_H), then
    the crop window [top:top+crop, left:left+crop] of the resized image is kept."""

    resized_W: int
    resized_H: int
    left: int
    top: int
    crop: int


def crop_geometry(W: int, H: int, pre: Preprocess) -> CropGeometry:
    """Resized size and crop offsets for an input of W x H pixels (the one helper
    used for both images and masks)."""
    if W <= 0 or H <= 0:
        raise ValueError(f"cannot preprocess an empty input of W={W} H={H}")
    short, long_ = min(W, H), max(W, H)
    # round(long * resize / short) with halves rounded up, in exact integers.
    resized_long = (2 * long_ * pre.resize + short) // (2 * short)
    resized_W, resized_H = (pre.resize, resized_long) if W <= H else (resized_long, pre.resize)
    return CropGeometry(
        resized_W=resized_W,
        resized_H=resized_H,
        left=(resized_W - pre.crop) // 2,
        top=(resized_H - pre.crop) // 2,
        crop=pre.crop,
    )


def resize_crop(img: Image.Image, pre: Preprocess) -> Image.Image:
    """The pixels the model sees, before normalisation: ``img`` resized with
    ``pre.interpolation`` and centre-cropped to ``crop`` x ``crop`` (a PIL image).

    :func:`preprocess_image` and every picture "as the model saw it" (gallery, figures,
    manipulate, the CRF's appearance kernel, the notebooks) go through here.
    """
    geo = crop_geometry(img.width, img.height, pre)
    resized = img.resize((geo.resized_W, geo.resized_H), resample=_RESAMPLE[pre.interpolation])
    return resized.crop((geo.left, geo.top, geo.left + geo.crop, geo.top + geo.crop))


def preprocess_image(img: Image.Image, pre: Preprocess) -> torch.Tensor:
    """RGB PIL image -> normalised float32 tensor [3, crop, crop].

    Raises ValueError if ``img`` is not mode "RGB" (use ``load_rgb`` first).
    """
    import torch  # the config imports this module and stays torch-free

    if img.mode != "RGB":
        raise ValueError(f"preprocess_image needs an RGB image, got mode {img.mode!r}")
    cropped = resize_crop(img, pre)
    pixels_HWC = np.asarray(cropped, dtype=np.float32) / np.float32(255.0)
    mean_C = np.asarray(pre.mean, dtype=np.float32)
    std_C = np.asarray(pre.std, dtype=np.float32)
    normalised_HWC = (pixels_HWC - mean_C) / std_C
    return torch.from_numpy(np.ascontiguousarray(normalised_HWC.transpose(2, 0, 1)))


def _nearest_source_index(out_index: np.ndarray, src_len: int, dst_len: int) -> np.ndarray:
    """Source pixel whose centre is nearest the centre of each output pixel:
    floor((j + 0.5) * src_len / dst_len), in exact integer arithmetic (Pillow's
    NEAREST convention)."""
    return np.minimum(((2 * out_index + 1) * src_len) // (2 * dst_len), src_len - 1)


def preprocess_mask(mask_HW: np.ndarray, pre: Preprocess) -> np.ndarray:
    """Integer mask [H, W] -> int64 [crop, crop] with the image's geometry, NEAREST.

    Every output value is a value of the input (no interpolated labels).
    """
    mask_HW = np.asarray(mask_HW)
    if mask_HW.ndim != 2:
        raise ValueError(f"preprocess_mask needs a 2-D [H, W] mask, got shape {mask_HW.shape}")
    if not np.issubdtype(mask_HW.dtype, np.integer):
        raise ValueError(f"preprocess_mask needs integer class ids, got dtype {mask_HW.dtype}")
    H, W = mask_HW.shape
    geo = crop_geometry(W, H, pre)
    out_rows = np.arange(geo.top, geo.top + geo.crop)
    out_cols = np.arange(geo.left, geo.left + geo.crop)
    src_rows = _nearest_source_index(out_rows, H, geo.resized_H)
    src_cols = _nearest_source_index(out_cols, W, geo.resized_W)
    return mask_HW[src_rows[:, None], src_cols[None, :]].astype(np.int64)
