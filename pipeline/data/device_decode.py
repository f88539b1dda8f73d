"""Decode JPEG files in batches on the device and preprocess them there (``extract.decode: cuda``).

Reads: JPEG file bytes (already read by the decode workers). Writes: nothing.

Pieces, each replaceable on its own (the tests plug a Pillow stand-in into :data:`DECODERS`):

* :func:`jpeg_header` / :func:`device_refusal`: whether a file goes to the device decoder at all,
  from its header alone. Not a JPEG, not 1 or 3 colour components (CMYK/YCCK), an SOF type
  other than baseline, extended or progressive Huffman, over ``max_image_pixels``, more
  elongated than ``MAX_ASPECT``:1, or not ending with the EOI marker (truncated, or trailing
  bytes): the file takes the cpu path, which decodes it with Pillow or refuses it with the same
  ``BadImageError`` as with ``decode: cpu``.
* :class:`DeviceDecoder`: ``decoder(blobs) -> images``: file bytes (1-D uint8 CPU tensors) to
  uint8 ``[3, H, W]`` tensors on the decoder's device, raising if any file fails.
  :func:`decode_each` calls it on a whole batch and, where the batch raises, on each file
  alone, so one file nvJPEG cannot read costs only that file a cpu decode.
* :func:`device_preprocess`: resize (shorter side), centre crop and normalise with torch ops,
  the geometry of :func:`pipeline.data.transforms.crop_geometry`. The resize is
  ``interpolate(mode, antialias=True)`` then round and clamp to 0..255 (Pillow resizes 8-bit
  images to 8 bits): the closest torch setting to Pillow's measured here (docs/cache.md).

:data:`DECODERS` maps a ``decode`` setting to a factory ``(device) -> DeviceDecoder``; ``cpu``
has none (the decode workers do everything).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from pipeline.data.images import MAX_ASPECT
from pipeline.data.transforms import Preprocess, crop_geometry

if TYPE_CHECKING:
    import torch

__all__ = [
    "DECODERS",
    "DeviceDecoder",
    "JpegHeader",
    "decode_each",
    "device_preprocess",
    "device_refusal",
    "jpeg_header",
    "resolve_decode",
]

JPEG_SUFFIXES = frozenset({".jpg", ".jpeg"})
_SOF_HUFFMAN = {0xC0: "baseline", 0xC1: "extended", 0xC2: "progressive"}
_SOF_OTHER = frozenset({0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})  # lossless, arithmetic
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # markers without a length field
# Pillow bicubic / bilinear / nearest -> torch interpolate mode: the closest on 8-bit images
# (measured: docs/cache.md, "Decoding on the GPU")
_TORCH_MODE = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest-exact"}


@dataclass(frozen=True)
class JpegHeader:
    """What a JPEG's start-of-frame says: size, colour components, coding (SOF marker)."""

    width: int
    height: int
    components: int
    sof: int


def jpeg_header(data: bytes) -> JpegHeader | None:
    """The start-of-frame of the JPEG in ``data``, or None if ``data`` is not a JPEG (or has no SOF
    before its scan data)."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _SOF_HUFFMAN or marker in _SOF_OTHER:
            if pos + 10 > len(data):
                return None
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return JpegHeader(width=width, height=height, components=data[pos + 9], sof=marker)
        pos += 2 + length
    return None


def device_refusal(data: bytes, max_pixels: int | None) -> str | None:
    """Why the file with bytes ``data`` goes through the cpu path instead of the device decoder
    (None: it goes to the device). Decided from the header and the last two bytes only."""
    header = jpeg_header(data)
    if header is None:
        return "not a JPEG"
    if header.sof not in _SOF_HUFFMAN:
        return f"JPEG coding SOF{header.sof - 0xC0} (lossless or arithmetic)"
    if header.components not in (1, 3):
        return f"{header.components} colour components (CMYK or YCCK)"
    w, h = header.width, header.height
    if w <= 0 or h <= 0:
        return "no size in its header"
    if max_pixels is not None and w * h > max_pixels:
        return "over the pixel budget"  # the cpu path refuses it with its message
    if max(w, h) > MAX_ASPECT * min(w, h):
        return "too elongated"  # likewise
    if not data.endswith(b"\xff\xd9"):
        return "no end-of-image marker at its end (truncated, or trailing bytes)"
    return None


class DeviceDecoder(Protocol):
    """Decodes JPEG files' bytes (1-D uint8 CPU tensors) into uint8 [3, H, W] RGB tensors on
    ``device``, in one call per batch; raises if any of them fails."""

    device: torch.device

    def __call__(self, blobs: Sequence[torch.Tensor]) -> list[torch.Tensor]: ...


class NvjpegDecoder:
    """``torchvision.io.decode_jpeg`` on a CUDA device (nvJPEG), a whole batch per call. EXIF
    orientation is not applied (as on the cpu path); grey JPEGs come out as RGB."""

    def __init__(self, device: torch.device) -> None:
        # only here: the cpu path never needs torchvision (not a dependency: its wheel must match torch's build)
        from torchvision.io import ImageReadMode, decode_jpeg  # pyright: ignore[reportMissingImports]

        self.device = device
        self._decode, self._mode = decode_jpeg, ImageReadMode.RGB

    def __call__(self, blobs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out = self._decode(list(blobs), mode=self._mode, device=self.device)
        return list(out) if isinstance(out, (list, tuple)) else [out]


def open_nvjpeg(device: torch.device) -> DeviceDecoder:
    """The nvJPEG decoder on ``device``; ValueError saying what is missing (CUDA, torchvision)."""
    import torch

    if device.type != "cuda" or not torch.cuda.is_available():
        raise ValueError(f"needs a CUDA device, and this run's device is {device}")
    if importlib.util.find_spec("torchvision") is None:
        raise ValueError("needs torchvision (torchvision.io.decode_jpeg), which is not installed")
    try:
        return NvjpegDecoder(device)
    except (ImportError, RuntimeError, OSError) as err:
        raise ValueError(f"needs torchvision, which does not import here ({type(err).__name__}: {err})") from None


# extract.decode -> the factory of its device decoder ("cpu": none; "auto" resolves to one of these)
DECODERS: dict[str, Callable[[torch.device], DeviceDecoder]] = {"cuda": open_nvjpeg}


def resolve_decode(setting: str, device: torch.device, files: Sequence[str]) -> str:
    """``extract.decode`` as run: ``auto`` is ``cuda`` where the device is CUDA, torchvision imports
    and every file in ``files`` is a .jpg/.jpeg, else ``cpu``; others stay as set."""
    if setting != "auto":
        return setting
    import torch

    jpeg = all(str(f).lower().endswith(tuple(JPEG_SUFFIXES)) for f in files)
    usable = device.type == "cuda" and torch.cuda.is_available() and importlib.util.find_spec("torchvision") is not None
    if usable and jpeg:
        try:  # installed but built for another torch: auto stays on the cpu
            importlib.import_module("torchvision.io")
        except (ImportError, RuntimeError, OSError):
            return "cpu"
        return "cuda"
    return "cpu"


def decode_each(decoder: DeviceDecoder, blobs: Sequence[torch.Tensor]) -> list[torch.Tensor | Exception]:
    """Each blob decoded: the whole batch in one call; where that raises, each blob alone, so the
    ones the decoder cannot read come back as their exception (for the cpu path) and the rest
    as images."""
    if not blobs:
        return []
    try:
        images = decoder(blobs)
        if len(images) == len(blobs):
            return list(images)
    except Exception:  # noqa: BLE001 - nvJPEG raises RuntimeError for one bad file in a batch: find it below
        pass
    out: list[torch.Tensor | Exception] = []
    for blob in blobs:
        try:
            out.append(decoder([blob])[0])
        except Exception as err:  # noqa: BLE001 - any decoder failure sends the file to the cpu path
            out.append(err)
    return out


def device_preprocess(image_3HW: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """uint8 RGB [3, H, W] -> normalised float32 [3, crop, crop] on the same device: the cpu
    path's geometry (``crop_geometry``), ``interpolate(mode, antialias=True)`` rounded and
    clamped to 0..255 as Pillow's 8-bit resize is, then ``/ 255``, ``- mean``, ``/ std``."""
    import torch.nn.functional as F

    _, H, W = image_3HW.shape
    geo = crop_geometry(W, H, pre)
    pixels = image_3HW[None].float()
    if (geo.resized_H, geo.resized_W) != (H, W):
        mode = _TORCH_MODE[pre.interpolation]
        pixels = F.interpolate(
            pixels, size=(geo.resized_H, geo.resized_W), mode=mode, antialias=mode != "nearest-exact"
        )
        pixels = pixels.round_().clamp_(0, 255)
    crop = pixels[0, :, geo.top : geo.top + geo.crop, geo.left : geo.left + geo.crop]
    mean, std = _mean_std(pre.mean, pre.std, crop.device)
    return ((crop / 255.0 - mean) / std).contiguous()


@functools.lru_cache(maxsize=8)
def _mean_std(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean`` and ``std`` as float32 [3, 1, 1] tensors on ``device``, made once (not a copy to the
    device per image)."""
    import torch

    def column(values: tuple) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=device)[:, None, None]

    return column(mean), column(std)
