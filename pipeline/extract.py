"""Extraction: run the ViT once over a split and write its residual stream into the store.

Reads images (and masks) of one split, writes ``<cache>/<model>/<dataset>/<split>.zarr``
(layout in ``pipeline.cache.store``). ``--part i --of n`` fills a disjoint,
chunk-aligned range of images, so n processes (or SLURM jobs) can share one
store; a part that is killed and re-run recomputes only chunks not yet done.
``finalize`` (separate step, or automatic when ``of == 1``) checks that every
image is done and consolidates the metadata.

The stages run concurrently: ``extract.num_workers`` DataLoader processes decode
and preprocess images (and die with the extraction, even on kill -9); with
``extract.decode: cuda`` they only read the files (and decode the masks and the
files nvJPEG cannot read), and the main thread decodes the JPEGs of each batch on
the GPU and preprocesses them there (``pipeline.data.device_decode``); the main
thread runs the forward at ``extract.forward_dtype`` (autocast), casts the
activations to the store dtype on the device and copies them to the host (pinned
memory on CUDA); ``extract.write_threads`` threads assemble, compress and write
whole chunks (whole shards with ``extract.shard_images``), each by exactly one
thread. Each stage's busy time is
measured and reported (``ExtractReport.stages``): the images per second it could
sustain and which stage bounded the run.

Dimension key: B images in a batch, L cached layers, T tokens, D width,
P patches, H/W pixels.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import datetime as dt
import functools
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

import pipeline
from pipeline import atomic
from pipeline.cache import (
    InputsChangedError,
    StoreLayout,
    StoreWriter,
    chunk_ranges,
    create_or_open,
    finalize,
    part_chunks,
    pending_chunks,
    write_chunk,
)
from pipeline.cache.stream import read_ahead
from pipeline.config import CacheRef, Config, ConfigError, stable_hash, to_jsonable
from pipeline.context import RunContext
from pipeline.data import (
    BadImageError,
    DatasetError,
    Fingerprint,
    MaskError,
    Preprocess,
    SplitData,
    load_mask,
    load_rgb,
    load_split,
    patch_labels,
    preprocess_image,
    preprocess_mask,
    read_file,
)
from pipeline.data.device_decode import (
    DECODERS,
    DeviceDecoder,
    decode_each,
    device_preprocess,
    device_refusal,
    jpeg_header,
    resolve_decode,
)
from pipeline.dataset_kinds import dataset_kind
from pipeline.layout import split_file
from pipeline.models import Backbone, load_backbone
from pipeline.models.family import READOUTS
from pipeline.progress import Progress
from pipeline.runtime import describe_device, die_with_parent, forward_precision, resolve_forward_dtype
from pipeline.stages import STORE_HASHED_KEYS

log = logging.getLogger(__name__)


@dataclass
class ExtractReport:
    store: str
    part: int
    of: int
    device: str
    threads: int
    chunks_owned: int
    chunks_computed: int = 0
    chunks_skipped: int = 0
    images_computed: int = 0
    bad_images: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    forward_dtype: str = "float32"
    num_workers: int = 0
    write_threads: int = 1
    stages: dict = field(default_factory=dict)  # stage -> img/s it could sustain; "bound_by": the slowest
    decode: str = "cpu"  # extract.decode as run (auto resolved)
    device_fallbacks: int = 0  # decode cuda: JPEGs the device decoder raised on, decoded on the cpu path instead

    @property
    def images_per_second(self) -> float:
        return self.images_computed / self.seconds if self.seconds else 0.0


def split_data(cfg: Config, dataset: str, split: str) -> SplitData:
    """The samples of one split of a configured dataset (seeded split saved beside the caches)."""
    ds = cfg.dataset(dataset)
    kind = dataset_kind(ds.kind)
    kwargs = {}
    if kind.seeded_split:
        kwargs = dict(split_file=split_file(cfg, dataset), val_fraction=ds.val_fraction, seed=ds.split_seed)
    if kind.class_list and ds.class_list is not None:
        kwargs["class_list"] = ds.class_list
    return load_split(ds.kind, ds.root, ds.splits[split], **kwargs)


class _Images(Dataset):
    """Decodes, preprocesses and labels images (runs in DataLoader workers)."""

    def __init__(
        self,
        data: SplitData,
        indices: np.ndarray,
        pre: Preprocess,
        patch_size: int,
        max_pixels: int,
        device_decode: bool = False,
    ):
        self.data, self.indices, self.pre, self.patch_size = data, indices, pre, patch_size
        self.max_pixels = max_pixels
        # decode cuda: a JPEG the device decoder can take travels as its bytes ("jpeg") and its
        # pixels are made in the main process; every other file is decoded here as on the cpu path
        self.device_decode = device_decode

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        # Errors travel back as strings and are raised in the main process, in image
        # order: chunks before the culprit are written, and the exception keeps its type
        # (a custom exception does not survive DataLoader's worker re-raise).
        t0 = time.perf_counter()
        index = int(self.indices[i])
        sample = self.data.samples[index]
        item = {"index": index, "bad": False, "reason": "", "mask_error": ""}
        crop = self.pre.crop
        fingerprint = Fingerprint()  # the bytes read for decoding, hashed: no second read
        size: tuple[int, int] | None = None  # (W, H) of a readable image
        if self.device_decode:
            size = self._read_for_device(sample.image, item, fingerprint)
        else:
            try:
                img = load_rgb(sample.image, max_pixels=self.max_pixels, fingerprint=fingerprint)
                size = img.size
            except BadImageError as err:
                img = None
                item.update(bad=True, reason=err.reason)
            item["pixels"] = preprocess_image(img, self.pre) if img is not None else torch.zeros(3, crop, crop)
        if self.data.task == "segmentation":
            mask = np.zeros((crop, crop), dtype=np.int64)
            if size is not None:
                try:
                    if sample.mask is None:
                        raise MaskError(f"no mask for image {sample.image}")
                    raw = load_mask(
                        sample.mask,
                        image_path=sample.image,
                        image_size=size,
                        max_pixels=self.max_pixels,
                        fingerprint=fingerprint,
                    )
                    top = int(raw.max()) if raw.size else 0
                    if top >= self.data.n_classes:
                        raise MaskError(
                            f"mask {sample.mask} (for image {sample.image}) holds label {top}, but dataset has "
                            f"{self.data.n_classes} classes (ids 0..{self.data.n_classes - 1}, 0 = other)"
                        )
                    mask = preprocess_mask(raw, self.pre)
                except MaskError as err:
                    item["mask_error"] = str(err)
            labels, purity = patch_labels(mask, self.patch_size)
            item.update(patch_label=labels, patch_purity=purity.astype(np.float16), pixel_label=mask.astype(np.uint16))
        else:
            item["label"] = -1 if item["bad"] else int(sample.label)
        item["fingerprint"] = fingerprint.row()
        item["decode_s"] = time.perf_counter() - t0
        return item

    def _read_for_device(self, path: Path, item: dict, fingerprint: Fingerprint) -> tuple[int, int] | None:
        """decode cuda: read the image once; a JPEG the device decoder takes (``device_refusal``)
        goes on as its bytes (``item["jpeg"]``, pixels made later on the device), any other file
        is decoded from those bytes here, as on the cpu path. Returns (W, H), or None (bad image)."""
        crop = self.pre.crop
        item["jpeg"], item["pixels"] = None, None
        try:
            data = read_file(path, fingerprint)
            if device_refusal(data, self.max_pixels) is None:
                header = jpeg_header(data)
                assert header is not None  # device_refusal read it
                item["jpeg"] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                return header.width, header.height
            img = load_rgb(path, max_pixels=self.max_pixels, data=data)
        except BadImageError as err:
            item.update(bad=True, reason=err.reason, pixels=torch.zeros(3, crop, crop))
            return None
        item["pixels"] = preprocess_image(img, self.pre)
        return img.size


def _first_input_error(batch: dict, data: SplitData, skip_bad: bool) -> tuple[int, Exception | None]:
    """(position in the batch, exception) of the first unreadable image or mask; (len, None) if none."""
    for pos, (index, bad, reason, mask_error) in enumerate(
        zip(batch["index"], batch["bad"], batch["reason"], batch["mask_error"])
    ):
        if mask_error:
            return pos, MaskError(mask_error)
        if bad and not skip_bad:
            return pos, BadImageError(
                data.samples[index].image, f"{reason} (set extract.on_bad_image: skip to record it and go on)"
            )
    return len(batch["index"]), None


def _collate(items: list[dict]) -> dict:
    """One batch: ``pixels`` stacked (decode cuda: only of the rows without ``jpeg`` bytes, or
    None if every row has them), every other key as a list."""
    pixels = [it["pixels"] for it in items if it["pixels"] is not None]
    out = {"pixels": torch.stack(pixels) if pixels else None}
    for key in items[0]:
        if key != "pixels":
            out[key] = [it[key] for it in items]
    return out


def _head(batch: dict, n: int) -> dict:
    """The first ``n`` images of a collated batch."""
    return {k: v[:n] for k, v in batch.items()}


def layout_and_attrs(
    cfg: Config, ref: CacheRef, split: str, data: SplitData, backbone: Backbone, provenance: dict
) -> tuple[StoreLayout, dict]:
    """The store's shape and its provenance attrs (with the config hash that guards reuse)."""
    model, dataset, ex = cfg.model(ref.model), cfg.dataset(ref.dataset), cfg.extract
    pre = model.preprocess
    if pre.crop % backbone.patch_size:
        raise ConfigError(
            f"{cfg.source}: models/{ref.model}/preprocess/crop {pre.crop} is not a multiple of the patch size {backbone.patch_size}"
        )
    side = pre.crop // backbone.patch_size
    try:
        layers = tuple(sorted({backbone.resolve_layer(layer) for layer in ex.layers}))
    except (ValueError, IndexError) as err:
        raise ConfigError(
            f"{cfg.source}: extract/layers {list(ex.layers)}: {err} (model {ref.model} has {backbone.n_blocks} blocks)"
        ) from None
    forward_dtype = resolve_forward_dtype(ex.forward_dtype, backbone.device)
    if ex.shard_images % ex.chunk_images:
        raise ConfigError(
            f"{cfg.source}: extract/shard_images {ex.shard_images} is not a multiple of extract/chunk_images "
            f"{ex.chunk_images} (a shard holds whole chunks; 0 = no shards)"
        )
    decode = resolve_decode(ex.decode, backbone.device, [s.image.name for s in data.samples])
    kinds = backbone.prefix.kinds + ("patch",) * (side * side)
    layout = StoreLayout(
        image_ids=tuple(s.id for s in data.samples),
        layers=layers,
        token_kinds=kinds,
        grid=(side, side),
        d_model=backbone.d_model,
        dtype=ex.dtype,
        chunk_images=ex.chunk_images,
        task=data.task,
        mask_size=pre.crop if data.task == "segmentation" else None,
        compression=ex.compression,
        shard_images=ex.shard_images,
    )
    # Everything that changes the numbers or the layout; not parts, batch size or workers. The
    # entries are pipeline.stages.STORE_HASHED_KEYS (which also gives the extract step's config keys).
    values = {
        "model": {k: provenance[k] for k in ("family", "source", "revision", "weights_sha256")},
        "preprocess": to_jsonable(pre),
        "layers": list(layers),
        "dtype": ex.dtype,
        # stores made before this key existed ran in float32: their hash stays valid
        "forward_dtype": forward_dtype if forward_dtype != "float32" else None,
        "chunk_images": ex.chunk_images,
        # stores made before this key existed are lz4: their hash stays valid
        "compression": ex.compression if ex.compression != "lz4" else None,
        # stores made before these keys existed are unsharded and decoded on the cpu: their hash stays valid
        "shard_images": ex.shard_images or None,
        "decode": decode if decode != "cpu" else None,
        "dataset": {
            "kind": dataset.kind,
            "root": str(dataset.root),
            "split": dataset.splits[split],
            **({"class_list": str(dataset.class_list)} if dataset.class_list is not None else {}),
        },
        "images_sha256": stable_hash(layout.image_ids),
    }
    hashed = {key: values[key] for key in STORE_HASHED_KEYS if values[key] is not None}
    attrs = {
        "config_hash": stable_hash(hashed),
        "config": hashed,
        "title": f"{ref.model} on {ref.dataset}/{split}: residual stream after blocks {list(layers)}",
        "model": provenance,
        "model_name": ref.model,
        "dataset_name": ref.dataset,
        "dataset_root": str(dataset.root),
        # where the root resolved to: checked at every open (check_inputs), not hashed, so stores
        # made before this key existed keep their hash
        "inputs": {"dataset_root": str(Path(dataset.root).resolve())},
        "dataset_kind": dataset.kind,
        "split": split,
        "task": data.task,
        "class_names": list(data.class_names),
        "n_blocks": backbone.n_blocks,
        "n_prefix_tokens": backbone.n_prefix,
        "n_cls_tokens": backbone.n_cls,
        "n_registers": backbone.n_registers,
        "image_readout": backbone.image_readout,
        "image_readout_note": READOUTS[backbone.image_readout],
        "patch_size": backbone.patch_size,
        "grid": [side, side],
        "image_size": pre.crop,
        "preprocess": to_jsonable(pre),
        "layers_note": "layer = 0-based block number; acts = that block's OUTPUT (residual stream, before the final norm)",
        "dtype": ex.dtype,
        "forward_dtype": forward_dtype,
        "compression": ex.compression,
        "shard_images": ex.shard_images,
        "decode": decode,
        "package": "pipeline",
        "package_version": pipeline.__version__,
        "torch_version": torch.__version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "config_file": str(cfg.source),
    }
    if provenance.get("random_weights"):
        attrs["warning"] = "RANDOM-INIT WEIGHTS (demo model): activations say nothing about the real model"
    return layout, attrs


def extract(
    cfg: Config,
    ref: CacheRef,
    split: str,
    *,
    part: int = 0,
    of: int = 1,
    progress: bool = True,
    ctx: RunContext | None = None,
) -> ExtractReport:
    """Fill part ``part`` of ``of`` of the store of (ref, split); finalize when ``of == 1``.
    ``ctx``: the step's run context (default: one started here)."""
    if not (of >= 1 and 0 <= part < of):
        raise ConfigError(
            f"--part {part} --of {of}: parts are numbered from 0, so need 0 <= part < of (here 0..{max(of - 1, 0)})"
        )
    ctx = ctx or RunContext.start(cfg)
    threads, device = ctx.threads, ctx.device
    cfg = dataclasses.replace(cfg, extract=cfg.extract.resolved(device.type))  # `auto` counts for this device
    data = split_data(cfg, ref.dataset, split)
    if not data.samples:
        raise DatasetError(f"dataset {ref.dataset!r} split {split!r} ({cfg.dataset(ref.dataset).root}) has no images")
    backbone, provenance = load_backbone(cfg.model(ref.model).spec, device=device)
    layout, attrs = layout_and_attrs(cfg, ref, split, data, backbone, provenance)
    decoder = open_decoder(cfg, attrs["decode"], device)  # before the store: a refused decode creates nothing
    store = cfg.store(ref, split)
    group = create_or_open(store, layout, attrs)
    check_inputs(store, group, data, attrs["inputs"]["dataset_root"], f"datasets.{ref.dataset}.root")

    chunks = chunk_ranges(layout.n_images, layout.write_images)  # write units: shards when sharded
    mine = [chunks[i] for i in part_chunks(len(chunks), part, of)]
    todo = pending_chunks(group, mine)
    report = ExtractReport(
        str(store),
        part,
        of,
        describe_device(device),
        threads,
        len(mine),
        chunks_skipped=len(mine) - len(todo),
        forward_dtype=attrs["forward_dtype"],
        num_workers=int(cfg.extract.num_workers),  # counts since ExtractConfig.resolved above
        write_threads=int(cfg.extract.write_threads),
        decode=attrs["decode"],
    )
    if todo:
        writer = StoreWriter.of(store, group)
        _run(
            cfg,
            data,
            cfg.model(ref.model).preprocess,
            backbone,
            layout,
            group,
            writer,
            todo,
            report,
            device,
            progress,
            decoder,
        )
        # the store may have been replaced after this part's last chunk write: then this part's
        # chunks went to the deleted store, and finalizing (or reporting success) would be wrong
        writer.check()
        log.info("extract %s part %d/%d: %s", store, part + 1, of, stage_summary(report.stages))
    if of == 1:
        finalize(store)
    return report


def open_decoder(cfg: Config, decode: str, device: torch.device) -> DeviceDecoder | None:
    """The device decoder of ``decode`` (``extract.decode`` resolved), None for ``cpu``; a decoder
    that cannot run here (no CUDA, no torchvision) is a ConfigError naming the key."""
    if decode not in DECODERS:
        return None
    try:
        return DECODERS[decode](device)
    except ValueError as err:
        raise ConfigError(
            f"{cfg.source}: key extract/decode: {decode} {err}; set extract.decode: cpu (or auto)"
        ) from None


def sample_files(data: SplitData, index: int, bad: bool) -> list[Path]:
    """The files the decode worker read for sample ``index``, in order: its image, then (a
    segmentation sample whose image was readable) its mask."""
    sample = data.samples[index]
    if data.task == "segmentation" and not bad and sample.mask is not None:
        return [sample.image, sample.mask]
    return [sample.image]


def _changed(files: list[Path], row: np.ndarray) -> str | None:
    """How ``files`` differ now from fingerprint ``row`` (None if they do not): sizes from a stat;
    the content hash is re-read only where the size agrees but a modification time moved."""
    stats = [p.stat() for p in files if p.is_file()]
    size, mtime = sum(st.st_size for st in stats), max((st.st_mtime_ns for st in stats), default=0)
    if size != int(row[0]):
        return f"{size} bytes now, {int(row[0])} when extracted"
    if mtime == int(row[1]):
        return None
    now = Fingerprint()
    for path in files:
        if path.is_file():
            with open(path, "rb") as f:
                now.add(f.read(), os.fstat(f.fileno()))
    return None if np.array_equal(now.row()[2:], row[2:]) else "same size, other content (BLAKE2b differs)"


def check_inputs(store: Path, group, data: SplitData, root: str, root_key: str) -> None:
    """Refuse a store (at open, so also at resume) extracted from other dataset files.

    The dataset root must resolve to the folder the store was extracted from (two projects
    sharing ``paths.cache`` with relative roots), and every done image's files must still be
    what their ``fingerprint`` row recorded (size from a stat; the content hash re-read only
    where a size agrees and a modification time moved). Stores made before either record
    open with a log line saying it is not checked. Raises InputsChangedError naming the first
    differing image.
    """
    stored_root = (group.attrs.get("inputs") or {}).get("dataset_root")
    if stored_root is None:
        log.info("%s: made before stores recorded their dataset root: the root is not compared", store)
    elif stored_root != root:
        raise InputsChangedError(
            f"{store}: extracted from the dataset at {stored_root}, but {root_key} resolves to {root} here "
            "(another project sharing paths.cache?). It is not reused: point paths.cache elsewhere, or delete it"
        )
    if "fingerprint" not in group:
        log.info("%s: made before input fingerprints: its images are not compared with the files", store)
        return
    fp, done, bad = group["fingerprint"][:], group["done"][:], group["bad"][:]
    recorded = np.flatnonzero(done & ((fp[:, 0] != 0) | (fp[:, 1] != 0)))
    changed = [(int(i), why) for i in recorded if (why := _changed(sample_files(data, int(i), bad[i]), fp[i]))]
    if changed:
        i, why = changed[0]
        raise InputsChangedError(
            f"{store}: image {i} ({data.samples[i].image}) is not the file it was extracted from ({why}); "
            f"{len(changed)} of {recorded.size} extracted images differ. The store is not reused: delete it "
            f"(rm -r '{store}') and extract again"
        )


@dataclass
class _StageClock:
    """Busy seconds of each stage; rates = images / (busy seconds / concurrency)."""

    decode_s: float = 0.0
    forward_s: float = 0.0
    write_s: float = 0.0
    device_decode_s: float = 0.0  # decode cuda: the main thread's device decode + preprocess (and its cpu fallbacks)
    lock: threading.Lock = field(default_factory=threading.Lock)  # writer threads add to write_s
    gpu_spans: dict = field(default_factory=dict)  # stage -> CUDA (start, end) events: timed without a sync per batch

    def forward_started(self, device: torch.device):
        """A start mark of a main-thread stage (forward, device_decode): a CUDA event on a GPU."""
        if device.type != "cuda":
            return time.perf_counter()
        start = torch.cuda.Event(enable_timing=True)
        start.record()
        return start

    def forward_ended(self, started, stage: str = "forward") -> None:
        if isinstance(started, float):
            setattr(self, f"{stage}_s", getattr(self, f"{stage}_s") + time.perf_counter() - started)
            return
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        self.gpu_spans.setdefault(stage, []).append((started, end))

    def rates(self, n_images: int, workers: int, writers: int, device_decode: bool = False) -> dict:
        """Each stage's img/s alone (``device_decode`` only with decode cuda) and the slowest one."""
        for stage, spans in self.gpu_spans.items():
            spans[-1][1].synchronize()
            setattr(self, f"{stage}_s", sum(a.elapsed_time(b) for a, b in spans) / 1000)

        def rate(busy: float, concurrency: int) -> float:
            return round(n_images / (busy / max(1, concurrency)), 2) if busy > 0 else float("inf")

        stages = {
            "decode": rate(self.decode_s, workers),
            **({"device_decode": rate(self.device_decode_s, 1)} if device_decode else {}),
            "forward": rate(self.forward_s, 1),
            "write": rate(self.write_s, writers),
        }
        return {**{f"{k}_img_s": v for k, v in stages.items()}, "bound_by": min(stages, key=stages.get)}


def stage_summary(stages: dict) -> str:
    """One log line: each stage's img/s and the one that bounded the run."""
    if not stages:
        return "nothing computed"
    parts = [f"{k.removesuffix('_img_s')} {v:.1f} img/s" for k, v in stages.items() if k.endswith("_img_s")]
    return f"stages: {', '.join(parts)}; bounded by {stages['bound_by']}; whole run {stages['extract_img_s']:.1f} img/s"


def _assemble_and_write(
    group,
    writer: StoreWriter,
    start: int,
    pieces: list[tuple[dict, int, int]],
    label_keys: tuple[str, ...],
    clock: _StageClock,
) -> None:
    """Writer thread: wait for the device copies, concatenate one chunk's pieces, compress and write it."""
    t0 = time.perf_counter()
    for batch, _, _ in pieces:
        if batch.get("copied") is not None:
            batch["copied"].synchronize()  # the non-blocking device-to-host copy has landed
    merged = {
        k: np.concatenate([np.asarray(b[k][lo:hi]) if k != "acts" else b[k][lo:hi].numpy() for b, lo, hi in pieces])
        for k in ("acts", "bad", "reason") + label_keys
    }
    chunk = {k: merged[k] for k in ("acts",) + label_keys}
    chunk["bad"] = merged["bad"].astype(bool)
    chunk["bad_reason"] = merged["reason"].astype(object)
    write_chunk(group, start, chunk, writer)
    with clock.lock:
        clock.write_s += time.perf_counter() - t0


def _to_host(acts_BLTD: torch.Tensor, out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """Cast on the device to the store dtype, then copy to the host (pinned, non-blocking on CUDA)."""
    acts_BLTD = acts_BLTD.to(out_dtype)
    if acts_BLTD.device.type != "cuda":
        return acts_BLTD, None
    host = torch.empty(acts_BLTD.shape, dtype=out_dtype, pin_memory=True)
    host.copy_(acts_BLTD, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return host, event


def _run(
    cfg: Config,
    data: SplitData,
    pre: Preprocess,
    backbone: Backbone,
    layout: StoreLayout,
    group,
    writer: StoreWriter,
    todo,
    report: ExtractReport,
    device,
    progress: bool,
    decoder: DeviceDecoder | None = None,
) -> None:
    ex = cfg.extract
    workers, writers = int(ex.num_workers), int(ex.write_threads)  # resolved by extract()
    indices = np.concatenate([np.arange(s, e) for s, e in todo])
    loader = DataLoader(
        _Images(data, indices, pre, backbone.patch_size, ex.max_image_pixels, device_decode=decoder is not None),
        batch_size=ex.batch_size,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        worker_init_fn=functools.partial(_worker_init, os.getpid()) if workers else None,
    )
    label_keys = ("patch_label", "patch_purity", "pixel_label") if data.task == "segmentation" else ("label",)
    label_keys += ("fingerprint",) if "fingerprint" in group else ()  # stores made before fingerprints lack it
    out_dtype = getattr(torch, layout.dtype)
    layers = list(layout.layers)
    clock = _StageClock()
    pieces: list[tuple[dict, int, int]] = []  # (batch, lo, hi) slices waiting to complete the current chunk
    n_buffered = 0
    chunks = iter(todo)
    start, stop = next(chunks)
    bar = Progress(
        "extract " + "/".join(Path(report.store).parts[-3:]) + f" part {report.part + 1}/{report.of}",
        len(indices),
        "img",
        enabled=progress,
    )
    t0 = time.perf_counter()
    error: Exception | None = None
    # Several writer threads; each chunk is assembled and written by one of them (one writer per chunk).
    with (
        cf.ThreadPoolExecutor(max_workers=writers, thread_name_prefix="chunk-writer") as pool,
        torch.inference_mode(),
    ):
        pending: list[cf.Future] = []
        try:
            batches = iter(loader)
            if decoder is not None:  # every row's pixels on the device, before bad rows are judged
                decode = functools.partial(
                    _decode_on_device,
                    decoder=decoder,
                    data=data,
                    pre=pre,
                    max_pixels=ex.max_image_pixels,
                    patch_size=backbone.patch_size,
                    device=device,
                    clock=clock,
                )
                # one thread, a batch ahead: nvJPEG's host side and the kernel launches overlap the
                # forward; both use the device's current stream, so a batch's decode kernels run
                # before its forward's
                batches = read_ahead((functools.partial(decode, batch) for batch in loader), workers=1)
            for batch in batches:
                report.device_fallbacks += batch.pop("device_fallbacks", 0)
                cut, error = _first_input_error(batch, data, ex.on_bad_image == "skip")
                if error is not None:  # the images before the culprit still complete their chunks
                    batch = _head(batch, cut)
                n = len(batch["index"])
                if n:
                    clock.decode_s += sum(batch["decode_s"])
                    f0 = clock.forward_started(device)
                    with forward_precision(report.forward_dtype, device):
                        acts_BLTD = backbone.forward_to(batch["pixels"].to(device, non_blocking=True), layers)
                    clock.forward_ended(f0)
                    batch["acts"], batch["copied"] = _to_host(acts_BLTD, out_dtype)
                    del batch["pixels"]  # pieces keep the batch until its chunk is written
                lo = 0
                while start is not None and n_buffered + (n - lo) >= stop - start:
                    take = (stop - start) - n_buffered
                    pieces.append((batch, lo, lo + take))
                    pending.append(pool.submit(_assemble_and_write, group, writer, start, pieces, label_keys, clock))
                    bad = [
                        {"index": int(i), "id": data.samples[int(i)].id, "reason": str(r)}
                        for b, a, z in pieces
                        for i, r, flag in zip(b["index"][a:z], b["reason"][a:z], b["bad"][a:z])
                        if flag
                    ]
                    lo += take
                    pieces, n_buffered = [], 0
                    while len(pending) > writers + 1:  # bound memory: a few chunks wait for the writers
                        pending.pop(0).result()
                    report.chunks_computed += 1
                    report.images_computed += stop - start
                    report.bad_images.extend(bad)
                    bar.update(stop - start)
                    bar.set_postfix(img_s=f"{report.images_computed / (time.perf_counter() - t0):.1f}")
                    start, stop = next(chunks, (None, None))
                if lo < n:
                    pieces.append((batch, lo, n))
                    n_buffered += n - lo
                if error is not None:
                    break
        finally:
            for f in pending:
                f.result()
    bar.close()
    report.seconds = time.perf_counter() - t0
    report.stages = {
        **clock.rates(report.images_computed, workers, writers, decoder is not None),
        "extract_img_s": round(report.images_per_second, 2),
    }
    if error is not None:
        raise error


def _decode_on_device(
    batch: dict,
    *,
    decoder: DeviceDecoder,
    data: SplitData,
    pre: Preprocess,
    max_pixels: int,
    patch_size: int,
    device: torch.device,
    clock: _StageClock,
) -> dict:
    """decode cuda, in the decode thread: ``batch`` with its pixels on the device (``device_pixels``)
    and its count of cpu fallbacks; the thread's busy time goes to the clock's ``device_decode``."""
    t0 = time.perf_counter()
    batch["pixels"], batch["device_fallbacks"] = device_pixels(
        batch, decoder, data, pre, max_pixels, device, patch_size
    )
    clock.device_decode_s += time.perf_counter() - t0
    return batch


def device_pixels(
    batch: dict,
    decoder: DeviceDecoder,
    data: SplitData,
    pre: Preprocess,
    max_pixels: int,
    device: torch.device,
    patch_size: int,
) -> tuple[torch.Tensor, int]:
    """decode cuda: the batch's normalised pixels ``[B, 3, crop, crop]`` on ``device`` and how many
    JPEGs fell back to the cpu path.

    Rows the workers decoded (``jpeg`` None) are copied over; the others are decoded in one
    call (``decode_each``) and preprocessed on the device. A JPEG the decoder raises on is
    decoded here with Pillow, as the cpu path would; if Pillow refuses it too, its row
    becomes what the cpu path makes of an unreadable image (bad, with Pillow's reason; label
    -1 or empty masks; the fingerprint of the image file alone). Consumes ``batch["jpeg"]``.
    """
    blobs = batch.pop("jpeg")
    n, crop = len(blobs), pre.crop
    pixels = torch.empty((n, 3, crop, crop), dtype=torch.float32, device=device)
    on_cpu = [i for i, blob in enumerate(blobs) if blob is None]
    if on_cpu:
        pixels[on_cpu] = batch["pixels"].to(device, non_blocking=True)
    rows = [i for i, blob in enumerate(blobs) if blob is not None]
    fallbacks = 0
    for i, image in zip(rows, decode_each(decoder, [blobs[i] for i in rows])):
        if not isinstance(image, Exception):
            pixels[i] = device_preprocess(image, pre)
            continue
        fallbacks += 1
        index = int(batch["index"][i])
        fingerprint = Fingerprint()
        try:
            img = load_rgb(data.samples[index].image, max_pixels=max_pixels, fingerprint=fingerprint)
            pixels[i] = preprocess_image(img, pre).to(device)
        except BadImageError as err:
            pixels[i] = 0.0
            batch["bad"][i], batch["reason"][i], batch["mask_error"][i] = True, err.reason, ""
            batch["fingerprint"][i] = fingerprint.row()
            if "label" in batch:
                batch["label"][i] = -1
            if "patch_label" in batch:  # the labels of an all-"other" mask, as _Images makes them for a bad image
                labels, purity = patch_labels(np.zeros((crop, crop), dtype=np.int64), patch_size)
                batch["patch_label"][i], batch["patch_purity"][i] = labels, purity.astype(np.float16)
                batch["pixel_label"][i] = np.zeros((crop, crop), dtype=np.uint16)
    return pixels, fallbacks


def _worker_init(parent_pid: int, worker_id: int) -> None:
    """DataLoader worker start: die with the extraction process (no orphan after kill -9)."""
    die_with_parent(parent_pid)


def write_part_sentinel(path: Path, report: ExtractReport, provenance: dict | None = None) -> None:
    """The file Snakemake tracks for a part (the store itself is shared, never a job output),
    with the config record of the extraction (``pipeline.provenance.record``)."""
    doc = {**report.__dict__, "images_per_second": report.images_per_second, "provenance": provenance}
    atomic.write_json(path, doc, indent=1)
