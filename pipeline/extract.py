"""Extraction: run the ViT once over a split and write its residual stream into the store.

Reads images (and masks) of one split, writes ``<cache>/<model>/<dataset>/<split>.zarr``
(layout in ``pipeline.cache.store``). ``--part i --of n`` fills a disjoint,
chunk-aligned range of images, so n processes (or SLURM jobs) can share one
store; a part that is killed and re-run recomputes only chunks not yet done.
``finalize`` (separate step, or automatic when ``of == 1``) checks that every
image is done and consolidates the metadata.

Dimension key: B images in a batch, L cached layers, T tokens, D width,
P patches, H/W pixels.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import pipeline
from pipeline.cache import StoreLayout, chunk_ranges, create_or_open, finalize, part_chunks, pending_chunks, write_chunk
from pipeline.config import CacheRef, Config, stable_hash, to_jsonable
from pipeline.data import BadImageError, MaskError, Preprocess, SplitData, load_mask, load_rgb, load_split, patch_labels, preprocess_image, preprocess_mask
from pipeline.models import Backbone, load_backbone
from pipeline.models.family import READOUTS
from pipeline.runtime import describe_device, resolve_device, set_threads


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

    @property
    def images_per_second(self) -> float:
        return self.images_computed / self.seconds if self.seconds else 0.0


def split_data(cfg: Config, dataset: str, split: str) -> SplitData:
    """The samples of one split of a configured dataset (seeded split saved beside the caches)."""
    ds = cfg.dataset(dataset)
    kwargs = {}
    if ds.kind == "imagefolder":
        kwargs = dict(split_file=cfg.paths.cache / "splits" / f"{dataset}.json", val_fraction=ds.val_fraction, seed=ds.split_seed)
    return load_split(ds.kind, ds.root, ds.splits[split], **kwargs)


class _Images(Dataset):
    """Decodes, preprocesses and labels images (runs in DataLoader workers)."""

    def __init__(self, data: SplitData, indices: np.ndarray, pre: Preprocess, patch_size: int):
        self.data, self.indices, self.pre, self.patch_size = data, indices, pre, patch_size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        # Errors travel back as strings and are raised in the main process, in image
        # order: chunks before the culprit are written, and the exception keeps its type
        # (a custom exception does not survive DataLoader's worker re-raise).
        index = int(self.indices[i])
        sample = self.data.samples[index]
        item = {"index": index, "bad": False, "reason": "", "mask_error": ""}
        crop = self.pre.crop
        try:
            img = load_rgb(sample.image)
        except BadImageError as err:
            img = None
            item.update(bad=True, reason=err.reason)
        item["pixels"] = preprocess_image(img, self.pre) if img is not None else torch.zeros(3, crop, crop)
        if self.data.task == "segmentation":
            mask = np.zeros((crop, crop), dtype=np.int64)
            if img is not None:
                try:
                    mask = preprocess_mask(load_mask(sample.mask, image_path=sample.image, image_size=img.size), self.pre)
                except MaskError as err:
                    item["mask_error"] = str(err)
            labels, purity = patch_labels(mask, self.patch_size)
            item.update(patch_label=labels, patch_purity=purity.astype(np.float16), pixel_label=mask.astype(np.uint16))
        else:
            item["label"] = -1 if item["bad"] else int(sample.label)
        return item


def _raise_input_errors(batch: dict, data: SplitData, skip_bad: bool) -> None:
    """Raise, in the main process, the first unreadable image or mask of a batch."""
    for index, bad, reason, mask_error in zip(batch["index"], batch["bad"], batch["reason"], batch["mask_error"]):
        if mask_error:
            raise MaskError(mask_error)
        if bad and not skip_bad:
            raise BadImageError(data.samples[index].image, f"{reason} (set extract.on_bad_image: skip to record it and go on)")


def _collate(items: list[dict]) -> dict:
    out = {"pixels": torch.stack([it["pixels"] for it in items])}
    for key in items[0]:
        if key != "pixels":
            out[key] = [it[key] for it in items]
    return out


def layout_and_attrs(cfg: Config, ref: CacheRef, split: str, data: SplitData, backbone: Backbone, provenance: dict) -> tuple[StoreLayout, dict]:
    """The store's shape and its provenance attrs (with the config hash that guards reuse)."""
    model, dataset, ex = cfg.model(ref.model), cfg.dataset(ref.dataset), cfg.extract
    pre = model.preprocess
    if pre.crop % backbone.patch_size:
        raise ValueError(f"{cfg.source}: models/{ref.model}/preprocess/crop {pre.crop} is not a multiple of the patch size {backbone.patch_size}")
    side = pre.crop // backbone.patch_size
    layers = tuple(sorted({backbone.resolve_layer(layer) for layer in ex.layers}))
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
    )
    # Everything that changes the numbers or the layout; not parts, batch size or workers.
    hashed = {
        "model": {k: provenance[k] for k in ("family", "source", "revision", "weights_sha256")},
        "preprocess": to_jsonable(pre),
        "layers": list(layers),
        "dtype": ex.dtype,
        "chunk_images": ex.chunk_images,
        "dataset": {"kind": dataset.kind, "root": str(dataset.root), "split": dataset.splits[split]},
        "images_sha256": stable_hash(layout.image_ids),
    }
    attrs = {
        "config_hash": stable_hash(hashed),
        "config": hashed,
        "title": f"{ref.model} on {ref.dataset}/{split}: residual stream after blocks {list(layers)}",
        "model": provenance,
        "model_name": ref.model,
        "dataset_name": ref.dataset,
        "dataset_root": str(dataset.root),
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
        "package": "pipeline",
        "package_version": pipeline.__version__,
        "torch_version": torch.__version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config_file": str(cfg.source),
    }
    if provenance.get("random_weights"):
        attrs["warning"] = "RANDOM-INIT WEIGHTS (demo model): activations say nothing about the real model"
    return layout, attrs


def extract(cfg: Config, ref: CacheRef, split: str, *, part: int = 0, of: int = 1, progress: bool = True) -> ExtractReport:
    """Fill part ``part`` of ``of`` of the store of (ref, split); finalize when ``of == 1``."""
    threads = set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    data = split_data(cfg, ref.dataset, split)
    if not data.samples:
        raise ValueError(f"dataset {ref.dataset!r} split {split!r} ({cfg.dataset(ref.dataset).root}) has no images")
    backbone, provenance = load_backbone(cfg.model(ref.model).spec, device=device)
    layout, attrs = layout_and_attrs(cfg, ref, split, data, backbone, provenance)
    store = cfg.store(ref, split)
    group = create_or_open(store, layout, attrs)

    chunks = chunk_ranges(layout.n_images, layout.chunk_images)
    mine = [chunks[i] for i in part_chunks(len(chunks), part, of)]
    todo = pending_chunks(group, mine)
    report = ExtractReport(str(store), part, of, describe_device(device), threads, len(mine), chunks_skipped=len(mine) - len(todo))
    if todo:
        _run(cfg, data, cfg.model(ref.model).preprocess, backbone, layout, group, todo, report, device, progress)
    if of == 1:
        finalize(store)
    return report


def _run(cfg: Config, data: SplitData, pre: Preprocess, backbone: Backbone, layout: StoreLayout, group, todo, report: ExtractReport, device, progress: bool) -> None:
    ex = cfg.extract
    indices = np.concatenate([np.arange(s, e) for s, e in todo])
    loader = DataLoader(
        _Images(data, indices, pre, backbone.patch_size),
        batch_size=ex.batch_size,
        num_workers=ex.num_workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )
    label_keys = ("patch_label", "patch_purity", "pixel_label") if data.task == "segmentation" else ("label",)
    keys = ("acts", "bad", "index", "reason") + label_keys
    out_dtype = np.dtype(layout.dtype)
    layers = list(layout.layers)
    buffer: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    n_buffered = 0
    chunks = iter(todo)
    start, stop = next(chunks)
    bar = tqdm(total=len(indices), unit="img", desc=f"extract part {report.part + 1}/{report.of}", disable=not progress)
    t0 = time.perf_counter()
    # One writer thread: compression and file writes overlap the next forward passes.
    with cf.ThreadPoolExecutor(max_workers=1) as writer, torch.inference_mode():
        pending: list[cf.Future] = []
        for batch in loader:
            _raise_input_errors(batch, data, ex.on_bad_image == "skip")
            acts_BLTD = backbone.forward_to(batch["pixels"].to(device, non_blocking=True), layers)
            buffer["acts"].append(acts_BLTD.to("cpu", torch.float32).numpy().astype(out_dtype))
            for k in keys[1:]:
                buffer[k].append(np.asarray(batch[k]))
            n_buffered += len(batch["index"])
            while start is not None and n_buffered >= stop - start:
                size = stop - start
                merged = {k: np.concatenate(v) for k, v in buffer.items()}
                buffer = {k: [v[size:]] for k, v in merged.items()}
                n_buffered -= size
                chunk = {k: merged[k][:size] for k in ("acts",) + label_keys}
                chunk["bad"] = merged["bad"][:size].astype(bool)
                chunk["bad_reason"] = merged["reason"][:size].astype(object)
                bad = [
                    {"index": int(i), "id": data.samples[int(i)].id, "reason": str(r)}
                    for i, r, flag in zip(merged["index"][:size], merged["reason"][:size], chunk["bad"])
                    if flag
                ]
                pending.append(writer.submit(write_chunk, group, start, chunk))
                while len(pending) > 2:  # bound memory: at most 2 chunks wait for the writer
                    pending.pop(0).result()
                report.chunks_computed += 1
                report.images_computed += size
                report.bad_images.extend(bad)
                bar.update(size)
                bar.set_postfix(img_s=f"{report.images_computed / (time.perf_counter() - t0):.1f}")
                start, stop = next(chunks, (None, None))
        for f in pending:
            f.result()
    bar.close()
    report.seconds = time.perf_counter() - t0


def write_part_sentinel(path: Path, report: ExtractReport) -> None:
    """The file Snakemake tracks for a part (the store itself is shared, never a job output)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**report.__dict__, "images_per_second": report.images_per_second}, indent=1) + "\n")
