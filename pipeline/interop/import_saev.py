"""``import-saev``: a saev shard directory (:mod:`pipeline.interop.saev_shards`) into one of our stores.

Reads ``SHARD_DIR`` (metadata.json, shards.json, acts*.bin, labels.bin if any) and the configured
model (``--model``: its weights give the store's model provenance, depth, width and token layout,
as for an extraction; run on the CPU, no forward); writes ``<cache>/<model>/<dataset>/<split>.zarr``
with :mod:`pipeline.cache.store`'s writer: the layout, attrs and config hash an extraction of that
model, dataset and split with this config would give (so every stage, and the provenance checks,
read it as an extracted store), plus ``saev_shards`` (the source directory, its metadata.json
without the pickled ``data`` field, its shards.json) in the attrs and in the config hash.

What maps how:

- ``acts`` [N, L, T, D]: the shards' rows in order, cast from float32 to ``extract.dtype``,
  chunked by ``extract.chunk_images`` and coded by ``extract.compression``; saev's layers must be
  exactly the blocks ``extract.layers`` names (the store's layer axis is ascending, saev's is
  permuted to it), and its token axis exactly the model's tokens ([CLS] + patches, or the patches
  of a model without CLS; a model with register tokens cannot be expressed: saev drops them);
- ``patch_label`` from ``labels.bin`` (0 where there is none), ``patch_purity`` 1 (saev keeps one
  label per patch), ``pixel_label`` the patch labels at one pixel per patch (saev keeps no pixel
  mask), for a segmentation dataset; ``label`` -1 for a classification dataset (saev's shards
  carry no image labels), which refuses a ``labels.bin``;
- ``image`` ids ``saev/000000``, … (saev's shards name no image files): stages that open the
  images (the gallery, manipulate) cannot; the probe figure draws placeholders;
- ``fingerprint`` 0 (no image files were read).

Resumable like an extraction: whole chunks, each written by one thread, ``done`` last; a killed
import re-run with the same arguments writes only the chunks not done, then finalizes.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import CacheRef, Config, ConfigError, stable_hash
from pipeline.cpus import available_cpus
from pipeline.interop import saev_shards as fmt
from pipeline.interop.saev_shards import SaevShardsError

log = logging.getLogger(__name__)


def source_record(shard_dir: Path, md: fmt.SaevMetadata, shards: list[fmt.ShardFile], labels: bool) -> dict:
    """What the store records of its source (attrs ``saev_shards``; hashed into its config hash)."""
    meta = md.to_json()
    meta.pop("data")  # a pickle of saev's dataset config: opaque, never unpickled here
    return {
        "dir": str(Path(shard_dir).resolve()),
        "hash": md.hash,
        "metadata": meta,
        "shards": [{"name": s.name, "n_examples": s.n_examples} for s in shards],
        "labels": labels,
    }


def plan(cfg: Config, ref: CacheRef, split: str, shard_dir: Path):
    """Check the shard directory against the config and the model; → (metadata, shards, labels,
    store layout, attrs, layer permutation). Raises SaevShardsError naming the key that cannot be
    mapped, ConfigError for a config that does not fit."""
    from pipeline.data import Sample, SplitData
    from pipeline.extract import layout_and_attrs
    from pipeline.models import load_backbone

    shard_dir = Path(shard_dir)
    md = fmt.read_metadata(shard_dir)
    shards = fmt.read_shards(shard_dir, md)
    labels = fmt.read_labels(shard_dir, md)
    meta = shard_dir / fmt.METADATA
    dataset = cfg.dataset(ref.dataset)
    if split not in dataset.splits:
        raise ConfigError(f"{cfg.source}: datasets.{ref.dataset}.splits has no {split!r} ({', '.join(dataset.splits)})")
    task = dataset.task
    if labels is not None and task != "segmentation":
        raise SaevShardsError(
            f"{shard_dir / fmt.LABELS}: per-patch labels need a segmentation dataset; datasets.{ref.dataset} "
            f"is kind {dataset.kind} ({task})"
        )
    backbone, provenance = load_backbone(cfg.model(ref.model).spec, device="cpu")
    ours = fmt.SAEV_FAMILY.get(provenance["family"])
    if ours is not None and ours != md.family:
        raise SaevShardsError(
            f"{meta}: key family: {md.family!r}, but models.{ref.model} is family {provenance['family']!r}"
        )
    if md.d_model != backbone.d_model:
        raise SaevShardsError(f"{meta}: key d_model: {md.d_model}, models.{ref.model} has width {backbone.d_model}")
    bad = [x for x in md.layers if not 0 <= x < backbone.n_blocks]
    if bad or len(set(md.layers)) != len(md.layers):
        raise SaevShardsError(
            f"{meta}: key layers: {list(md.layers)}: need distinct block numbers 0..{backbone.n_blocks - 1} "
            f"(models.{ref.model} has {backbone.n_blocks} blocks)"
        )
    if backbone.n_registers:
        raise SaevShardsError(
            f"{meta}: key cls_token: saev's token axis has no register tokens, models.{ref.model} has "
            f"{backbone.n_registers}; a store of it holds them (its token layout cannot be expressed)"
        )
    if md.cls_token != bool(backbone.n_cls):
        raise SaevShardsError(
            f"{meta}: key cls_token: {str(md.cls_token).lower()}, models.{ref.model} "
            f"{'has' if backbone.n_cls else 'has no'} CLS token (the store's token axis is the model's)"
        )
    n = md.n_examples
    data = SplitData(task, ("other",), tuple(Sample(f"saev/{i:06d}", Path(md.dataset)) for i in range(n)))
    layout, attrs = layout_and_attrs(cfg, ref, split, data, backbone, provenance)
    if md.content_tokens_per_example != layout.n_patches:
        raise SaevShardsError(
            f"{meta}: key content_tokens_per_example: {md.content_tokens_per_example}, models.{ref.model} at "
            f"crop {cfg.model(ref.model).preprocess.crop} has {layout.grid[0]}x{layout.grid[1]} = {layout.n_patches} patches"
        )
    if tuple(sorted(md.layers)) != layout.layers:
        raise SaevShardsError(
            f"{meta}: key layers: {list(md.layers)} are not the blocks extract.layers {list(cfg.extract.layers)} "
            f"names ({list(layout.layers)}); set extract.layers to {sorted(md.layers)}"
        )
    perm = [md.layers.index(block) for block in layout.layers]
    class_names = _class_names(cfg, ref, split, task, labels)
    if task == "segmentation":
        layout = dataclasses.replace(layout, mask_size=layout.grid[0])
    source = source_record(shard_dir, md, shards, labels is not None)
    hashed = {**attrs["config"], "saev_shards": source}
    attrs.update(
        config_hash=stable_hash(hashed),
        config=hashed,
        title=f"{attrs['title']} (imported from saev shards {source['dir']})",
        class_names=list(class_names),
        saev_shards=source,
        inputs={"saev_shards": source["dir"]},
        image_ids_note="saev's shards name no image files: ids are saev/<example index>",
    )
    if task == "segmentation":
        attrs["pixel_label_note"] = "saev keeps one label per patch: pixel_label is patch_label at one pixel per patch"
    return md, shards, labels, layout, attrs, perm


def _class_names(cfg: Config, ref: CacheRef, split: str, task: str, labels: np.ndarray | None) -> tuple[str, ...]:
    """The dataset's class names where its folder can be read, else ``other`` and the label
    numbers found in ``labels.bin`` (saev's shards carry no class names)."""
    from pipeline.data import DatasetError
    from pipeline.extract import split_data

    try:
        return split_data(cfg, ref.dataset, split).class_names
    except (DatasetError, OSError) as err:
        log.info("import-saev: class names from the labels (dataset %s unreadable: %s)", ref.dataset, err)
    top = int(labels.max()) if labels is not None and labels.size else 0
    return ("other", *(f"class {i}" for i in range(1, top + 1))) if task == "segmentation" else ("?",)


def cast(acts: np.ndarray, dtype: str) -> np.ndarray:
    """float32 ``acts`` as ``dtype`` (round to nearest even, as numpy's ``astype``), through torch:
    its vectorised float16 conversion ran at ~2.1 GB/s of float32 on one core here, numpy's at
    ~0.34 GB/s (32x2x257x384 random values, the same bits out)."""
    import torch

    if np.dtype(dtype) == np.float32:
        return np.ascontiguousarray(acts)
    return torch.from_numpy(np.ascontiguousarray(acts)).to(getattr(torch, np.dtype(dtype).name)).numpy()


def import_saev(cfg: Config, ref: CacheRef, split: str, shard_dir: Path) -> dict[str, Any]:
    """Write (or finish writing) the store of (ref, split) from ``shard_dir``; finalize it."""
    from pipeline.cache import StoreWriter, chunk_ranges, create_or_open, finalize, pending_chunks, write_chunk

    md, shards, labels, layout, attrs, perm = plan(cfg, ref, split, shard_dir)
    store = cfg.store(ref, split)
    group = create_or_open(store, layout, attrs)
    todo = pending_chunks(group, chunk_ranges(layout.n_images, layout.chunk_images))
    writer = StoreWriter.of(store, group)
    side = layout.grid[0]
    identity = perm == list(range(len(perm)))

    def one(chunk: tuple[int, int]) -> None:
        s, e = chunk
        acts = fmt.read_rows(Path(shard_dir), md, shards, s, e)
        arrays = {"acts": cast(acts if identity else acts[:, perm], layout.dtype)}
        if layout.task == "segmentation":
            patch = np.zeros((e - s, layout.n_patches), np.uint16) if labels is None else labels[s:e].astype(np.uint16)
            arrays |= {
                "patch_label": patch,
                "patch_purity": np.ones(patch.shape, np.float16),
                "pixel_label": patch.reshape(e - s, side, side),
            }
        write_chunk(group, s, arrays, writer)

    started = time.perf_counter()
    threads = cfg.extract.write_threads  # `auto` (device: auto leaves it to the job): no forward beside the writers
    threads = available_cpus() if threads == "auto" else int(threads)
    with cf.ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for future in [pool.submit(one, chunk) for chunk in todo]:
            future.result()
    seconds = time.perf_counter() - started
    if todo:
        writer.check()  # replaced after the last chunk write: its chunks went to the deleted store
    summary = finalize(store)
    n_new = sum(e - s for s, e in todo)
    return {
        "store": str(store),
        "source": attrs["saev_shards"]["dir"],
        "n_images": summary["n_images"],
        "chunks_written": len(todo),
        "images_written": n_new,
        "tokens_per_second": round(n_new * layout.n_tokens * len(layout.layers) / seconds, 1) if seconds else 0.0,
        "labels": labels is not None,
    }


def run(ctx, args: argparse.Namespace) -> dict[str, Any]:
    """``python -m pipeline import-saev SHARD_DIR --model M --dataset D --split S [--sentinel F]``;
    the sentinel (the Snakemake rule's output) records the result and the extraction's config
    record (:func:`pipeline.provenance.record`)."""
    from pipeline import atomic
    from pipeline.provenance import record

    result = import_saev(ctx.cfg, CacheRef(args.model, args.dataset), args.split, args.shard_dir)
    if args.sentinel:
        prov = record(ctx.cfg, "extract", model=args.model, dataset=args.dataset, split=args.split)
        atomic.write_json(args.sentinel, {**result, "provenance": prov}, indent=1)
    return result
