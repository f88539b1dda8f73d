"""Read image and mask files from disk into 8-bit RGB images and integer label maps.

Reads: one image file (any format Pillow decodes) or one mask PNG per call.
Writes: nothing.

Every failure raises an exception whose message names the full path of the file
and what is wrong with it, so a bad file in a 20 000-image dataset can be found
and fixed without a debugger.

Conventions
-----------
* ``load_rgb`` returns a fully decoded ``PIL.Image.Image`` in mode ``"RGB"``
  (uint8, shape [H, W, 3] when passed to ``np.asarray``).  Truncated files raise:
  this module never sets ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``.  Pillow itself accepts a
  PNG whose compressed data ends early when the file's chunks are intact (the missing rows
  come back zero, with no error), so a PNG's decompressed size is checked against its
  header (:func:`_png_data_complete`) and a short one is refused too.
* Each file is read once into memory (``Fingerprint`` hashes those bytes when given: the
  store records each image's size and content hash without a second read) and decoded
  from there. With ``max_pixels``, an image whose header declares more pixels is refused
  before any pixel is decoded (a 130-byte PNG can declare 13000x13000).
* Alpha is DROPPED, not composited: an RGBA / LA / transparent-palette pixel keeps
  its stored colour whatever its alpha (the same result as Pillow's
  ``convert("RGB")``, which is what torchvision-style pipelines feed a model).
* EXIF orientation is NOT applied, so an image and its mask stay pixel-aligned.
* ``load_mask`` returns int64 [H, W] class ids taken from the raw stored values
  (palette masks: the palette INDEX, never the colour).
* Work is bounded by the output size: an image whose long side is more than
  ``MAX_ASPECT`` times its short side is refused before it is decoded (a 1x40000
  PNG is 242 bytes, but resizing its short side to 256 px makes a 2.6-gigapixel
  image), and Pillow's decompression-bomb check (``Image.MAX_IMAGE_PIXELS``,
  error above twice its default of 89 478 485 pixels) bounds the pixel count.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["BadImageError", "Fingerprint", "MaskError", "load_rgb", "load_mask", "read_file"]

# Modes whose samples are integers on a 0..65535 scale.
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
# Modes that carry an alpha channel (dropped) on top of colour or grey values.
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
# Mask modes whose raw stored values are class ids.
_MASK_MODES = frozenset({"L", "P", "I;16", "I;16B", "I;16L", "I;16N", "I", "1"})


MAX_ASPECT = 10  # long side / short side; ADE20K's most elongated images are about 4:1


class BadImageError(ValueError):
    """An image file that cannot be read or converted to RGB.

    Attributes:
        path: the file that failed.
        reason: what is wrong with it, in words.
    """

    def __init__(self, path: Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"bad image file {self.path}: {reason}")


class MaskError(ValueError):
    """A segmentation mask that cannot be read or does not fit its image."""


class Fingerprint:
    """What a sample's files were when read: total bytes, newest modification time (ns) and a
    BLAKE2b-128 of their bytes in reading order (an image, then its mask).

    ``row()`` is the store's ``fingerprint`` row (uint64 ``[bytes, mtime_ns, hash_hi, hash_lo]``).
    """

    def __init__(self) -> None:
        self.size = 0
        self.mtime_ns = 0
        self._hash = hashlib.blake2b(digest_size=16)

    def add(self, data: bytes, stat: os.stat_result) -> None:
        self.size += len(data)
        self.mtime_ns = max(self.mtime_ns, stat.st_mtime_ns)
        self._hash.update(data)

    def row(self) -> np.ndarray:
        hi, lo = struct.unpack(">QQ", self._hash.digest())
        return np.array([self.size, self.mtime_ns, hi, lo], dtype=np.uint64)


def _read(path: Path, fingerprint: Fingerprint | None) -> bytes:
    """The bytes of ``path`` (one read), added to ``fingerprint``; BadImageError if unreadable."""
    if not path.is_file():
        raise BadImageError(path, "no such file" if not path.exists() else "not a regular file")
    try:
        with open(path, "rb") as f:
            stat = os.fstat(f.fileno())
            data = f.read()
    except OSError as e:
        raise BadImageError(path, f"cannot read ({e.strerror or e})") from None
    if fingerprint is not None:
        fingerprint.add(data, stat)
    return data


# PNG colour type -> samples per pixel (PNG spec, IHDR); Adam7's passes as (x0, y0, dx, dy).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _png_expected_bytes(width: int, height: int, bit_depth: int, colour_type: int, interlace: int) -> int:
    """The decompressed size of a PNG's image data: per (pass and) row, a filter byte + the row's bytes."""
    bits = bit_depth * _PNG_CHANNELS.get(colour_type, 4)
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        w, h = math.ceil(max(0, width - x0) / dx), math.ceil(max(0, height - y0) / dy)
        if w and h:
            total += h * (1 + math.ceil(w * bits / 8))
    return total


def _png_data_complete(data: bytes) -> tuple[int, int] | None:
    """(decompressed bytes found, bytes the header needs) when a PNG's image data ends early, else None.

    Pillow decodes such a file without an error (rows past the end stay zero). Reads the
    IHDR and IDAT chunks of ``data`` and inflates the IDAT stream (at most one byte more
    than needed): the cost of one more zlib pass over a PNG, nothing for other formats.
    """
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    width, height, bit_depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    need = _png_expected_bytes(width, height, bit_depth, colour_type, interlace)
    inflate, found, pos = zlib.decompressobj(), 0, 8
    while pos + 8 <= len(data) and found <= need:
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"IDAT":
            chunk = data[pos + 8 : pos + 8 + length]
            while chunk and found <= need:
                found += len(inflate.decompress(chunk, need + 1 - found))
                chunk = inflate.unconsumed_tail
        elif kind == b"IEND":
            break
        pos += 12 + length
    return (found, need) if found < need else None


def _open_decoded(
    path: Path,
    max_aspect: float | None = None,
    *,
    max_pixels: int | None = None,
    fingerprint: Fingerprint | None = None,
    data: bytes | None = None,
) -> Image.Image:
    """Read ``path`` once and decode every pixel; raise BadImageError on any failure.

    With ``max_aspect``, an image more elongated than that is refused before decoding; with
    ``max_pixels``, one whose header declares more pixels. ``fingerprint`` gets the file's
    bytes. ``data``: the file's bytes, already read (``read_file``): not read again.
    Returns the image (the pixel data lives in memory).
    """
    path = Path(path)
    data = _read(path, fingerprint) if data is None else data
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if max_pixels is not None and w * h > max_pixels:
                raise BadImageError(
                    path,
                    f"{w}x{h} (WxH) is {w * h:,} pixels, over the budget of {max_pixels:,} per image "
                    "(extract.max_image_pixels); refused before decoding: shrink it or raise the budget",
                )
            if max_aspect is not None and max(w, h) > max_aspect * max(1, min(w, h)):
                raise BadImageError(
                    path,
                    f"{w}x{h} (WxH) is more elongated than the limit of {max_aspect}:1 "
                    "(resizing its short side would make a huge image); crop or drop it",
                )
            img.load()  # decode now so truncation is detected here, not later
            if img.format == "PNG":
                short = _png_data_complete(data)
                if short is not None:
                    raise BadImageError(
                        path,
                        f"truncated: its image data ends early ({short[0]:,} of the {short[1]:,} bytes "
                        f"its {w}x{h} header needs); Pillow would fill the rest with zeros",
                    )
            # Multi-frame files (GIF, TIFF): the first frame is the image.
            return img.copy()
    except BadImageError:
        raise
    except UnidentifiedImageError:
        raise BadImageError(path, "not an image Pillow can identify") from None
    except Image.DecompressionBombError as e:
        raise BadImageError(path, f"refused as a decompression bomb ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # Pillow reports truncation as OSError("image file is truncated ...").
        raise BadImageError(path, f"cannot decode ({type(e).__name__}: {e})") from None


def _sixteen_bit_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit grey (0..65535, values clipped to that range) -> 8-bit RGB, rounded."""
    values_HW = np.asarray(img).astype(np.float64)
    grey_HW = np.rint(np.clip(values_HW, 0.0, 65535.0) / 257.0).astype(np.uint8)
    return Image.fromarray(np.repeat(grey_HW[:, :, None], 3, axis=2))


def _float_to_rgb(img: Image.Image, path: Path) -> Image.Image:
    """Float grey in [0, 1] -> 8-bit RGB (x * 255, rounded).

    Values outside [0, 1] or NaN raise: the scale of such a file is unknown and
    guessing would silently saturate or darken it.
    """
    values_HW = np.asarray(img, dtype=np.float64)
    if not np.all(np.isfinite(values_HW)):
        raise BadImageError(path, "float (mode F) image contains NaN or infinite values")
    lo, hi = float(values_HW.min()), float(values_HW.max())
    if lo < 0.0 or hi > 1.0:
        raise BadImageError(path, f"float (mode F) image has values in [{lo:g}, {hi:g}]; expected [0, 1]")
    grey_HW = np.rint(values_HW * 255.0).astype(np.uint8)
    return Image.fromarray(np.repeat(grey_HW[:, :, None], 3, axis=2))


def read_file(path: Path, fingerprint: Fingerprint | None = None) -> bytes:
    """The bytes of ``path`` in one read (added to ``fingerprint``); BadImageError if it cannot be read."""
    return _read(Path(path), fingerprint)


def load_rgb(
    path: Path, *, max_pixels: int | None = None, fingerprint: Fingerprint | None = None, data: bytes | None = None
) -> Image.Image:
    """Open, fully decode and convert an image file to 8-bit RGB.

    Mode handling (all end as mode "RGB", uint8):
      RGB          unchanged.
      L, 1         grey replicated to three channels ("1": 0 -> 0, 1 -> 255).
      RGBA, LA     alpha dropped (stored colour kept, NOT composited onto black).
      P            palette colour of each index; with transparency the palette
                   goes via RGBA and the alpha is then dropped.
      CMYK, YCbCr  Pillow's conversion (CMYK (0, 0, 0, 0) -> white).
      I;16*, I     16-bit scale: value v -> round(clip(v, 0, 65535) / 257).
      F            values must lie in [0, 1]: v -> round(255 v).

    Raises:
        BadImageError: naming ``path``, if the file is missing, not an image,
            truncated, corrupt, in a mode that cannot be converted, more
            elongated than ``MAX_ASPECT``:1 or over ``max_pixels`` pixels (both
            refused before decoding). ``fingerprint`` gets the file's bytes; ``data``, when
            given, is the file's bytes already read (``read_file``), decoded without a read.
    """
    path = Path(path)
    img = _open_decoded(path, max_aspect=MAX_ASPECT, max_pixels=max_pixels, fingerprint=fingerprint, data=data)
    mode = img.mode
    try:
        if mode == "RGB":
            return img
        if mode in _SIXTEEN_BIT_MODES:
            return _sixteen_bit_to_rgb(img)
        if mode == "F":
            return _float_to_rgb(img, path)
        if mode == "P":
            palette_mode = img.palette.mode if img.palette is not None else "RGB"
            has_alpha = "transparency" in img.info or palette_mode == "RGBA"
            return img.convert("RGBA").convert("RGB") if has_alpha else img.convert("RGB")
        if mode in _ALPHA_MODES:
            return img.convert("RGBA").convert("RGB")
        return img.convert("RGB")  # L, 1, CMYK, YCbCr, RGBX, HSV, ...
    except BadImageError:
        raise
    except (ValueError, OSError) as e:
        raise BadImageError(path, f"cannot convert mode {mode!r} to RGB ({e})") from None


def load_mask(
    path: Path,
    *,
    image_path: Path,
    image_size: tuple[int, int],
    max_pixels: int | None = None,
    fingerprint: Fingerprint | None = None,
) -> np.ndarray:
    """Read a segmentation mask PNG as int64 class ids, shape [H, W].

    The class id of a pixel is its raw stored value: mode L (0..255), P (the
    palette INDEX, not the colour), I;16 / I (0..65535) or 1 (0/1).  Colour
    (RGB) masks are refused: mapping colours to ids needs a dataset-specific table.

    Args:
        path: the mask file.
        image_path: the image the mask belongs to (only used in error messages).
        image_size: (W, H) of that image, as ``PIL.Image.Image.size`` gives it.
        max_pixels: refuse a mask declaring more pixels, before decoding it.
        fingerprint: gets the file's bytes.

    Raises:
        MaskError: if the mask cannot be read, has an unsupported mode, holds
            negative values, or its (W, H) differs from ``image_size`` (the
            message names both files and both sizes).
    """
    path = Path(path)
    try:
        img = _open_decoded(path, max_pixels=max_pixels, fingerprint=fingerprint)
    except BadImageError as e:
        raise MaskError(f"unreadable mask {path} (for image {image_path}): {e.reason}") from None
    if img.mode not in _MASK_MODES:
        raise MaskError(
            f"mask {path} has mode {img.mode!r}; expected a single-channel class-id PNG "
            f"(mode L, P, I;16 or I), for image {image_path}"
        )
    mask_W_H = tuple(img.size)
    image_W_H = tuple(int(v) for v in image_size)
    if mask_W_H != image_W_H:
        raise MaskError(
            f"mask {path} is {mask_W_H[0]}x{mask_W_H[1]} (WxH) but its image {image_path} "
            f"is {image_W_H[0]}x{image_W_H[1]} (WxH)"
        )
    # np.asarray of a P image yields the palette indices; of "1" yields bools.
    mask_HW = np.asarray(img).astype(np.int64)
    if mask_HW.size and mask_HW.min() < 0:
        raise MaskError(f"mask {path} (for image {image_path}) holds negative class ids")
    return mask_HW
