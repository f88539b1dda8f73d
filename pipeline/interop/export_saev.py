"""``export-saev``: one of our stores as a saev shard directory (:mod:`pipeline.interop.saev_shards`).

Reads ``STORE`` (finalized; no config); writes ``OUT_DIR/<hash>/`` with metadata.json,
shards.json, ``acts%06d.bin`` (float32, every file full-size, the last one zero after its
examples, an empty last shard when the images fill the shards exactly: what saev's ShardWriter
writes) and, for a segmentation store, ``labels.bin`` (``patch_label`` as uint8), plus
``pipeline.json`` (which store, and what saev's metadata cannot say; saev reads no such file).
saev's loaders (``indexed.Dataset``, ``ordered.DataLoader``) read it when ``OUT_DIR`` ends in
``saev/shards``, which they require.

What saev cannot express is refused, naming it: register tokens (saev's token axis is [CLS] +
patches), bad images (saev has no row mask), labels above 255 (labels.bin is uint8), a family
saev's ``Metadata`` does not accept. ``metadata.json``'s ``data`` (saev's pickled dataset
config) is empty: we have no saev dataset object to pickle.

Written in a temporary folder beside the output and renamed into place, so a killed export
leaves no half-made directory (re-run it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.interop import saev_shards as fmt
from pipeline.interop.saev_shards import SaevShardsError


def export_saev(store: Path, out_dir: Path, *, max_tokens_per_shard: int | None = None) -> dict:
    """Write ``store`` as saev shards under ``out_dir``; → the shard directory and its numbers.
    ``max_tokens_per_shard``: saev's shard budget (None: saev's default)."""
    max_tokens_per_shard = max_tokens_per_shard or fmt.DEFAULT_MAX_TOKENS_PER_SHARD
    from pipeline.cache import CacheReader
    from pipeline.cache.store import check_finalized

    store = Path(store)
    reader = CacheReader(store)
    check_finalized(store, reader.attrs)
    attrs: dict[str, Any] = reader.attrs  # the store's JSON attrs
    family = attrs.get("model", {}).get("family")
    if family not in fmt.SAEV_FAMILY:
        raise SaevShardsError(
            f"{store}: model family {family!r} has no saev family (saev's Metadata accepts {list(fmt.SAEV_FAMILIES)})"
        )
    if int(attrs.get("n_registers", 0)):
        raise SaevShardsError(
            f"{store}: n_registers {attrs['n_registers']}: saev's token axis holds [CLS] + patches, no registers"
        )
    if reader.n_cls not in (0, 1) or reader.n_prefix != reader.n_cls:
        raise SaevShardsError(f"{store}: n_prefix_tokens {reader.n_prefix}: saev's token axis holds [CLS] + patches")
    if int(attrs.get("n_bad", 0)):
        raise SaevShardsError(
            f"{store}: n_bad {attrs['n_bad']}: the store has unreadable images (bad rows) and saev's shards no row mask"
        )
    labels = None
    if reader.task == "segmentation":
        labels = reader.labels("patch_label")
        if labels.size and int(labels.max()) > 255:
            raise SaevShardsError(f"{store}: patch_label up to {int(labels.max())}: saev's labels.bin is uint8")
    md = fmt.SaevMetadata(
        family=fmt.SAEV_FAMILY[family],
        ckpt=str(attrs["model"].get("source", "")),
        layers=reader.layers,
        content_tokens_per_example=reader.n_patches,
        cls_token=bool(reader.n_cls),
        d_model=reader.d_model,
        n_examples=reader.n_images,
        max_tokens_per_shard=max_tokens_per_shard,
        data="",
        dataset=str(Path(attrs.get("dataset_root", "")).resolve()),
    )
    if md.examples_per_shard < 1:
        raise SaevShardsError(
            f"--max-tokens-per-shard {max_tokens_per_shard}: holds no image of {md.tokens_per_example} tokens x "
            f"{len(md.layers)} layers"
        )
    out_dir = Path(out_dir)
    final = out_dir / md.hash
    if final.exists():
        raise FileExistsError(f"{final} exists (a saev shard directory of the same metadata); delete it to re-export")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{md.hash}.tmp-{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        shards = _write_shards(reader, md, tmp)
        if labels is not None:
            labels.astype(np.uint8).tofile(tmp / fmt.LABELS)
        fmt.write_json(tmp / fmt.METADATA, md.to_json())
        fmt.write_json(tmp / fmt.SHARDS, shards)
        fmt.write_json(
            tmp / "pipeline.json",
            {
                "store": str(store.resolve()),
                "config_hash": attrs.get("config_hash"),
                "image_ids": [str(x) for x in reader.image_ids],
                "class_names": list(reader.class_names),
                "dtype": attrs.get("dtype"),
            },
        )
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "shards": str(final),
        "hash": md.hash,
        "n_examples": md.n_examples,
        "examples_per_shard": md.examples_per_shard,
        "n_shards": len(shards),
        "labels": labels is not None,
    }


def _write_shards(reader, md: fmt.SaevMetadata, folder: Path) -> list[dict]:
    """Every shard file, full-size as saev's ShardWriter makes it, filled from the store's chunks
    (float16 → float32 exactly); → the shards.json entries."""
    entries = []
    n_layers = len(md.layers)
    for i, (start, n) in enumerate(fmt.shard_plan(md)):
        name = fmt.ACTS_NAME.format(i)
        acts = np.memmap(folder / name, mode="w+", dtype="<f4", shape=md.shard_shape)
        for s, e in reader.chunks():
            lo, hi = max(s, start), min(e, start + n)
            if lo >= hi:
                continue
            for li in range(n_layers):
                block = reader.read(md.layers[li], lo, hi)
                acts[lo - start : hi - start, li] = block
        acts.flush()
        del acts
        entries.append({"name": name, "n_examples": n})
    return entries


def run(ctx: None, args: argparse.Namespace) -> dict[str, Any]:
    """``python -m pipeline export-saev STORE OUT_DIR``: takes no config, hence no context."""
    return export_saev(args.store, args.out_dir, max_tokens_per_shard=args.max_tokens_per_shard)
