"""``extract.decode: cuda``, tested on CPU with a Pillow stand-in for nvJPEG.

What runs here: which files go to the device decoder (from their header), batching, the per-file
fallback to the cpu path (formats nvJPEG cannot take, files the decoder raises on, files nobody can
read), the device preprocessing (torch ops, on CPU tensors), the store's record and hash of the
setting, the stage report and the refusal of ``cuda`` where it cannot run. What does not: nvJPEG
itself (its pixels against libjpeg's, its speed): ``benchmarks/gpu.sh`` on a CUDA machine.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from helpers import write_config
from pipeline.config import CacheRef, load_config
from pipeline.data import Preprocess, preprocess_image
from pipeline.data.device_decode import (
    DECODERS,
    decode_each,
    device_preprocess,
    device_refusal,
    jpeg_header,
    resolve_decode,
)
from pipeline.extract import _collate, _Images, device_pixels, extract, split_data

SEG = CacheRef("dino", "seg")
VAL = Path("resources/data/seg/ADEChallengeData2016/images/validation")
PRE = Preprocess(resize=256, crop=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


class PilDecoder:
    """Stand-in for nvJPEG: Pillow decodes each blob to uint8 [3, H, W] on ``device``; a batch
    holding one of the ``refuse`` files raises, as nvJPEG's batched call does. Records its calls."""

    def __init__(self, device: torch.device, refuse: tuple[bytes, ...] = ()) -> None:
        self.device, self.refuse, self.calls = device, set(refuse), []

    def __call__(self, blobs):
        datas = [bytes(b.numpy()) for b in blobs]
        self.calls.append(datas)
        if any(d in self.refuse for d in datas):
            raise RuntimeError("stand-in: cannot decode this JPEG")
        images = [np.asarray(Image.open(io.BytesIO(d)).convert("RGB")) for d in datas]
        return [torch.from_numpy(a.copy()).permute(2, 0, 1).contiguous().to(self.device) for a in images]


def _jpeg(pixels: np.ndarray, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", **save)
    return buf.getvalue()


def _photo(w: int, h: int, seed: int = 0) -> np.ndarray:
    """Smooth colour fields, discs and noise: JPEG-like content of W x H pixels (uint8 [H, W, 3])."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    img = np.stack([np.sin(6 * x + c) * np.cos(4 * y - c) * 100 + 128 for c in range(3)], -1)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, 1, 2).tolist() + [rng.uniform(0.02, 0.15)]
        img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    return np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)


# ---- which files go to the device ----------------------------------------------------------------
def test_the_header_decides_which_files_the_device_decodes():
    rgb = _photo(40, 30)
    baseline, progressive = _jpeg(rgb, quality=90), _jpeg(rgb, quality=90, progressive=True)
    grey = _jpeg(rgb[..., 0])
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buf, format="JPEG")
    cmyk = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    png = buf.getvalue()

    assert jpeg_header(baseline) is not None and (jpeg_header(baseline).width, jpeg_header(baseline).height) == (40, 30)
    assert (jpeg_header(baseline).components, jpeg_header(baseline).sof) == (3, 0xC0)
    assert jpeg_header(progressive).sof == 0xC2 and jpeg_header(grey).components == 1
    assert jpeg_header(cmyk).components == 4 and jpeg_header(png) is None
    assert [device_refusal(d, None) for d in (baseline, progressive, grey)] == [None, None, None]
    assert device_refusal(cmyk, None) == "4 colour components (CMYK or YCCK)"
    assert device_refusal(png, None) == "not a JPEG"
    assert device_refusal(baseline[: len(baseline) // 2], None).startswith("no end-of-image marker")
    assert device_refusal(baseline, max_pixels=40 * 30 - 1) == "over the pixel budget"
    assert device_refusal(_jpeg(_photo(110, 10)), None) == "too elongated"  # MAX_ASPECT 10


def test_auto_is_cuda_only_on_cuda_with_every_file_a_jpeg(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_decode("auto", cpu, ["a.jpg"]) == "cpu"
    assert resolve_decode("cuda", cpu, ["a.png"]) == "cuda"  # as set: open_decoder refuses it here
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())
    imported = []
    monkeypatch.setattr("importlib.import_module", lambda name: imported.append(name))
    assert resolve_decode("auto", cuda, ["a.jpg", "b.JPEG"]) == "cuda" and imported == ["torchvision.io"]
    assert resolve_decode("auto", cuda, ["a.jpg", "b.png"]) == "cpu"

    def broken(name):
        raise ImportError("torchvision built for another torch")

    monkeypatch.setattr("importlib.import_module", broken)
    assert resolve_decode("auto", cuda, ["a.jpg"]) == "cpu"


# ---- batching and per-file fallback ----------------------------------------------------------------
def test_a_batch_is_one_call_and_a_failing_file_is_found_alone():
    blobs = [torch.frombuffer(bytearray(_jpeg(_photo(20 + i, 16, seed=i))), dtype=torch.uint8) for i in range(3)]
    decoder = PilDecoder(torch.device("cpu"))
    out = decode_each(decoder, blobs)
    assert len(decoder.calls) == 1 and [tuple(o.shape) for o in out] == [(3, 16, 20), (3, 16, 21), (3, 16, 22)]
    decoder = PilDecoder(torch.device("cpu"), refuse=(bytes(blobs[1].numpy()),))
    out = decode_each(decoder, blobs)
    assert [len(c) for c in decoder.calls] == [3, 1, 1, 1]  # the batch, then each file alone
    assert isinstance(out[1], RuntimeError) and all(isinstance(out[i], torch.Tensor) for i in (0, 2))
    assert decode_each(decoder, []) == []


# ---- device preprocessing -------------------------------------------------------------------------
def test_device_preprocessing_equals_the_cpu_path_without_a_resize_and_normalises_by_hand():
    img = load_rgb_bytes(_jpeg(_photo(224, 300)))  # shorter side 224 = resize: only cropped
    pre = Preprocess(resize=224, crop=224, mean=PRE.mean, std=PRE.std)
    tensor = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    assert torch.equal(device_preprocess(tensor, pre), preprocess_image(img, pre))
    grey = torch.full((3, 10, 10), 51, dtype=torch.uint8)  # 51 / 255 = 0.2 in every channel
    out = device_preprocess(grey, Preprocess(resize=10, crop=4, mean=(0.2, 0.1, 0.0), std=(0.5, 0.25, 0.2)))
    expected = torch.tensor([0.0, 0.4, 1.0])[:, None, None].expand(3, 4, 4)
    assert out.shape == (3, 4, 4) and torch.allclose(out, expected, atol=1e-6)


def load_rgb_bytes(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (200, 150), (1024, 768)])
def test_device_resize_is_within_the_measured_distance_of_pillow_bicubic(size):
    """torch bicubic, antialias, rounded to 8 bits vs Pillow's BICUBIC: mean |d| under 0.25 of a
    grey level, at most 8 levels anywhere (measured here: 0.12-0.20 mean, 4-5 max; docs/cache.md)."""
    img = load_rgb_bytes(_jpeg(_photo(*size, seed=size[0]), quality=90))
    tensor = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    std = torch.tensor(PRE.std)[:, None, None]
    diff_levels = ((device_preprocess(tensor, PRE) - preprocess_image(img, PRE)) * std * 255).abs()
    assert 0 < diff_levels.mean() < 0.25 and diff_levels.max() <= 8.01


# ---- the extraction with the stand-in ------------------------------------------------------------
def _plant(project: Path) -> dict[str, bytes]:
    """Val images 0..3 rewritten: a PNG and a CMYK JPEG under .jpg names (cpu path), a progressive
    JPEG (device), a truncated JPEG (cpu path: bad). Returns their names -> bytes."""
    files = sorted((project / VAL).glob("*.jpg"))
    rgb = [np.asarray(Image.open(f).convert("RGB")) for f in files[:4]]
    Image.fromarray(rgb[0]).save(files[0], format="PNG")
    Image.fromarray(rgb[1]).convert("CMYK").save(files[1], format="JPEG", quality=95)
    Image.fromarray(rgb[2]).save(files[2], format="JPEG", quality=95, progressive=True)
    files[3].write_bytes(files[3].read_bytes()[:300])
    return {f.name: f.read_bytes() for f in files}


def _stores(project: Path, monkeypatch, decoder_refuses: tuple[bytes, ...] = (), **extract_keys):
    common = {"dtype": "float32", "on_bad_image": "skip", **extract_keys}
    cpu = load_config(write_config(project, {"paths": {"cache": "c-cpu"}, "extract": common}, name="cpu.yaml"))
    cuda = load_config(
        write_config(project, {"paths": {"cache": "c-cuda"}, "extract": {**common, "decode": "cuda"}}, name="cuda.yaml")
    )
    made: list[PilDecoder] = []

    def factory(device):
        made.append(PilDecoder(device, decoder_refuses))
        return made[-1]

    monkeypatch.setitem(DECODERS, "cuda", factory)
    reports = [extract(c, SEG, "val", progress=False) for c in (cpu, cuda)]
    return [c.store(SEG, "val") for c in (cpu, cuda)], reports, made[0]


@pytest.mark.parametrize("workers", [0, 2])
def test_stand_in_device_decode_makes_the_cpu_store_with_per_file_fallback(project, monkeypatch, workers):
    planted = _plant(project)
    names = sorted(planted)
    refused = planted[names[5]]  # a good baseline JPEG the stand-in raises on: decoded by Pillow instead
    (cpu, cuda), (r_cpu, r_cuda), decoder = _stores(project, monkeypatch, (refused,), num_workers=workers, batch_size=4)
    # every array bit-identical (no resize at 56 px: the device path's pixels are Pillow's)
    a, b = zarr.open_group(cpu, mode="r"), zarr.open_group(cuda, mode="r")
    for name in sorted(a.array_keys()):
        x, y = a[name][:], b[name][:]
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name
    assert a["bad"][:].tolist() == [False] * 3 + [True] + [False] * 8
    # the device saw exactly the device-eligible files: not the PNG, the CMYK or the truncated one
    seen = [d for call in decoder.calls for d in call]
    eligible = {planted[n] for n in names[2:]} - {planted[names[3]]}
    assert set(seen) == eligible and planted[names[2]] in seen  # the progressive JPEG went to the device
    # a call per batch of 4 (the first holds one eligible file); the batch with the refused file
    # raises, so its 4 files are tried alone
    assert [len(c) for c in decoder.calls] == [1, 4, 1, 1, 1, 1, 4]
    assert (r_cpu.decode, r_cuda.decode, r_cpu.device_fallbacks, r_cuda.device_fallbacks) == ("cpu", "cuda", 0, 1)
    assert b.attrs["decode"] == "cuda" and b.attrs["config"]["decode"] == "cuda" and "decode" not in a.attrs["config"]
    assert b.attrs["config_hash"] != a.attrs["config_hash"]
    stages = r_cuda.stages
    assert {"decode_img_s", "device_decode_img_s", "forward_img_s", "write_img_s"} <= set(stages)
    assert stages["bound_by"] == min(
        ("decode", "device_decode", "forward", "write"), key=lambda k: stages[f"{k}_img_s"]
    )
    assert "device_decode_img_s" not in r_cpu.stages


def test_with_a_resize_the_device_store_is_close_to_the_cpu_store(project, monkeypatch):
    project_pre = {"models": {"dino": {"preprocess": {"resize": 64, "crop": 56}}}}
    write_config(project, project_pre)  # the stores below read their own yaml: resize there too
    from helpers import deep_update

    cfgs = {}
    for decode in ("cpu", "cuda"):
        raw = deep_update(project_pre, {"paths": {"cache": f"r-{decode}"}, "extract": {"decode": decode}})
        cfgs[decode] = load_config(write_config(project, raw, name=f"r-{decode}.yaml"))
    monkeypatch.setitem(DECODERS, "cuda", lambda device: PilDecoder(device))
    acts = {}
    for decode, cfg in cfgs.items():
        extract(cfg, SEG, "val", progress=False)
        acts[decode] = zarr.open_array(cfg.store(SEG, "val") / "acts", mode="r")[:].astype(np.float64)
    rel = np.linalg.norm(acts["cuda"] - acts["cpu"]) / np.linalg.norm(acts["cpu"])
    assert 0 < rel < 0.02  # resized by torch, not Pillow: close, not equal


def test_a_file_neither_decoder_reads_becomes_the_bad_row_the_cpu_path_makes(project):
    cfg = load_config("config.yaml")
    data = split_data(cfg, "seg", "val")
    pre = cfg.model("dino").preprocess
    device_items = _Images(data, np.arange(2), pre, 14, 10**8, device_decode=True)
    batch = _collate([device_items[0], device_items[1]])
    assert batch["pixels"] is None and all(j is not None for j in batch["jpeg"])
    data.samples[1].image.unlink()  # gone between the worker's read and the device decode
    always_fails = PilDecoder(torch.device("cpu"), refuse=tuple(bytes(j.numpy()) for j in batch["jpeg"]))
    pixels, fallbacks = device_pixels(batch, always_fails, data, pre, 10**8, torch.device("cpu"), 14)
    cpu_item = _Images(data, np.arange(2), pre, 14, 10**8)[1]  # the cpu path on the missing file
    assert (
        fallbacks == 2 and batch["bad"] == [False, True] and batch["reason"][1] == cpu_item["reason"] == "no such file"
    )
    assert torch.equal(pixels[1], cpu_item["pixels"]) and torch.equal(
        pixels[0], _Images(data, np.arange(1), pre, 14, 10**8)[0]["pixels"]
    )
    for key in ("patch_label", "patch_purity", "pixel_label", "fingerprint"):
        assert np.array_equal(batch[key][1], cpu_item[key]), key
    assert batch["mask_error"][1] == cpu_item["mask_error"] == "" and "jpeg" not in batch


def test_decode_cuda_without_cuda_is_one_error_line_and_creates_nothing(project, capsys):
    from pipeline.__main__ import main

    write_config(project, {"extract": {"decode": "cuda"}})
    rc = main(["extract", "--model", "dino", "--dataset", "seg", "--split", "val", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: ") and len([e for e in err if e.startswith("error: ")]) == 1
    assert "key extract/decode: cuda needs a CUDA device" in err[-1]
    assert not (project / "cache" / "dino" / "seg" / "val.zarr").exists()
