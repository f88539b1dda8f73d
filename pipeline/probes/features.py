"""Probe inputs from the activation cache: final-normed token vectors with their labels.

Nothing here reads an image or runs a ViT block. A probe reads the cached output of block
``layer`` (the residual stream before the final norm), applies the backbone's final norm
(``Backbone.final_norm``; for CLIP that is ``post_layernorm``, so the CLS row equals HF's
``pooler_output``) and casts to float32. The final norm is a LayerNorm, i.e. per token, so
normalising only the rows a probe uses (patch tokens, or the CLS token) is identical to
normalising every token and then selecting; only those rows are normalised.

- :func:`open_probe_stores` opens the train and val stores of a cache and checks that they
  are finished, belong together, carry the labels the probe needs and agree with the config.
- :class:`FinalNorm` loads the backbone only for its final norm (and checks that its
  weights are the ones the store was made with).
- :func:`patch_train_epochs` streams shuffled, labelled patch rows for
  :func:`pipeline.probes.linear.fit_sweep`: per epoch the store's chunks are read once, in a
  random order (``seed + epoch``), and rows are mixed in a bounded shuffle buffer
  (:func:`pipeline.cache.stream.token_rows` + :func:`pipeline.cache.stream.shuffle_buffer`).
  The final norm runs per chunk on the CPU (large ops are cheaper than many small ones), per
  batch on a GPU (the buffer then holds the stored dtype: half the bytes to move).
- :func:`patch_chunks` yields val patches chunk by chunk, in order (evaluation).
- :func:`cls_rows` reads every image's vector once (the CLS row, or the mean of the patch
  rows for a model without a CLS token; they fit in memory) and
  :func:`in_memory_epochs` shuffles them per epoch.

What the probe stages share beyond their inputs (setup, best member, ``best.json``, the sweep
and epoch files) is :mod:`pipeline.probes.template`.

Store problems (missing, unfinished, no labels, labels out of range, mismatched train/val)
raise :class:`ProbeDataError` (a ``CacheError``) naming the store and what is wrong; config
problems raise ``ConfigError`` naming the key. The CLI prints either as one ``error:`` line.

Dimension key: N rows (patches or images), B images in a chunk, P patches per image,
D width, C classes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from pipeline.cache.reader import CacheReader
from pipeline.cache.store import CacheError
from pipeline.cache.stream import shuffle_buffer, token_rows
from pipeline.config import CacheRef, Config, ConfigError
from pipeline.probes.linear import IGNORE_LABEL

__all__ = [
    "FinalNorm",
    "ProbeDataError",
    "ProbeStores",
    "check_label_range",
    "cls_rows",
    "in_memory_epochs",
    "open_probe_stores",
    "patch_chunks",
    "patch_train_epochs",
    "seg_train_labels",
    "store_record",
]

SEG_ARRAYS = ("patch_label", "patch_purity", "pixel_label")
CLS_ARRAYS = ("label",)


class ProbeDataError(CacheError):
    """A store cannot feed a probe; the message names the store and the culprit."""


@dataclass(frozen=True)
class ProbeStores:
    """The train and val readers of one cache, checked to belong together."""

    ref: CacheRef
    train: CacheReader
    val: CacheReader
    layer: int

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.train.class_names

    @property
    def n_classes(self) -> int:
        return self.train.n_classes

    @property
    def d_model(self) -> int:
        return self.train.d_model

    @property
    def block(self) -> int:
        return self.train.block(self.layer)

    @property
    def random_weights(self) -> bool:
        return self.train.random_weights or self.val.random_weights


def store_record(reader: CacheReader) -> dict:
    """Path and config hash of a store (what a result was computed from)."""
    return {
        "path": str(reader.path),
        "config_hash": reader.attrs.get("config_hash"),
        "n_images": int(reader.n_images),
        "n_valid": int(reader.valid.sum()),
        "finalized": reader.attrs.get("finalized"),
    }


def open_probe_stores(
    cfg: Config, ref: CacheRef, *, layer: int, task: str, n_classes: int | None, key: str
) -> ProbeStores:
    """Open ``(ref, train)`` and ``(ref, val)`` for a ``task`` probe reading block ``layer``.

    ``key`` (``probes/seg`` / ``probes/cls``) names the config section in messages.
    """
    needed = SEG_ARRAYS if task == "segmentation" else CLS_ARRAYS
    readers = {}
    for split in ("train", "val"):
        reader = CacheReader(cfg.store(ref, split))  # missing / unfinished store: CacheError naming it
        if reader.task != task:
            raise ProbeDataError(
                f"{reader.path}: a {reader.task} store, but {key} needs a {task} store "
                f"(missing: {', '.join(n for n in needed if n not in reader.group)})"
            )
        for name in needed:
            if name not in reader.group:
                raise ProbeDataError(f"{reader.path}: the store has no {name!r} array; {key} needs it ({task} labels)")
        reader.layer_index(layer)  # layer not cached: CacheError naming the store and the cached blocks
        if not reader.valid.any():
            raise ProbeDataError(f"{reader.path}: no usable image (every image is marked bad)")
        readers[split] = reader
    train, val = readers["train"], readers["val"]
    for what, a, b in (
        ("class names", train.class_names, val.class_names),
        ("width D", train.d_model, val.d_model),
        ("patch grid", train.grid, val.grid),
        ("cached blocks", train.layers, val.layers),
        (
            "model weights",
            train.attrs.get("model", {}).get("weights_sha256"),
            val.attrs.get("model", {}).get("weights_sha256"),
        ),
    ):
        if a != b:
            raise ProbeDataError(
                f"{train.path} and {val.path}: the train and val stores differ in {what} ({a} vs {b}); re-extract one"
            )
    if n_classes is not None and n_classes != train.n_classes:
        raise ConfigError(
            f"{cfg.source}: key {key}/n_classes: {n_classes}, but the store {train.path} has {train.n_classes} classes "
            f"(incl. 0 = {train.class_names[0]!r}): {', '.join(train.class_names[:8])}{', …' if train.n_classes > 8 else ''}"
        )
    if train.n_classes < 2:
        raise ProbeDataError(f"{train.path}: {train.n_classes} class(es); a probe needs at least 2")
    return ProbeStores(ref, train, val, layer)


def check_label_range(reader: CacheReader, name: str, labels: np.ndarray, image_N: np.ndarray | None = None) -> None:
    """Raise ProbeDataError naming the store, the array, the label and the image if any label is outside [0, C).

    ``labels`` has images on its first axis; ``image_N`` (default: 0 …) are their store indices.
    """
    c = reader.n_classes
    labels = np.asarray(labels)
    bad = (labels < 0) | (labels >= c)
    if bad.any():
        first = np.argwhere(bad)[0]
        image = int(first[0] if image_N is None else image_N[first[0]])
        value = int(labels[tuple(first)])
        raise ProbeDataError(
            f"{reader.path}: {name} holds label {value} (image {image}, {reader.image_ids[image]}), outside [0, {c}) "
            f"for the store's {c} classes; {int(bad.sum())} such values"
        )


class FinalNorm:
    """``cached block output → backbone.final_norm → float32`` on ``device``.

    Loads the backbone (only its final norm is ever run) and checks that its weights hash
    equals the one recorded in the store, so the norm matches the cached activations.
    """

    def __init__(self, cfg: Config, stores: ProbeStores, device: torch.device):
        from pipeline.models import load_backbone  # transformers: when a final norm is built

        model = cfg.model(stores.ref.model)
        self.backbone, self.provenance = load_backbone(model.spec, device=device)
        self.device = device
        stored = stores.train.attrs.get("model", {}).get("weights_sha256")
        found = self.provenance["weights_sha256"]
        if stored and stored != found:
            raise ProbeDataError(
                f"{stores.train.path}: made with model weights sha256 {stored[:12]}…, but models/{model.name} "
                f"({model.spec.source}) now has {found[:12]}…; its final norm would not match the cache. Re-extract."
            )
        if self.backbone.d_model != stores.d_model:
            raise ProbeDataError(
                f"{stores.train.path}: width D={stores.d_model}, but models/{model.name} has D={self.backbone.d_model}"
            )

    def __call__(self, acts: np.ndarray | Tensor) -> Tensor:
        """``[..., D]`` stored activations → final-normed float32 tensor on the device (no grad)."""
        if isinstance(acts, np.ndarray):
            if self.device.type == "cpu" and self.backbone.dtype == torch.float32:
                acts = acts.astype(np.float32, copy=False)  # numpy's float16 -> float32 cast beats torch's on the CPU
            x = torch.from_numpy(np.ascontiguousarray(acts))
        else:
            x = acts
        with torch.no_grad():
            x = x.to(self.device, dtype=self.backbone.dtype, non_blocking=True)
            return self.backbone.final_norm(x).float()


# ---- segmentation: patch rows ---------------------------------------------------------------


def seg_train_labels(reader: CacheReader, *, min_purity: float, train_on_other: bool) -> np.ndarray:
    """Training labels ``int64 [N, P]``: the patch label, or IGNORE_LABEL for excluded patches.

    Excluded: patches of bad images, patches whose purity (fraction of the patch's pixels
    with its majority label) is below ``min_purity``, and, unless ``train_on_other``,
    patches labelled 0 ("other").
    """
    labels_NP = reader.labels("patch_label").astype(np.int64)
    check_label_range(reader, "patch_label", labels_NP[reader.valid], np.flatnonzero(reader.valid))
    purity_NP = reader.labels("patch_purity").astype(np.float32)
    y_NP = labels_NP.copy()
    y_NP[purity_NP < np.float32(min_purity)] = IGNORE_LABEL
    if not train_on_other:
        y_NP[labels_NP == 0] = IGNORE_LABEL
    y_NP[~reader.valid] = IGNORE_LABEL
    if not (y_NP != IGNORE_LABEL).any():
        raise ProbeDataError(
            f"{reader.path}: no training patch left after excluding "
            f"{'' if train_on_other else 'label 0 (other) and '}purity < {min_purity}"
        )
    return y_NP


def patch_train_epochs(
    reader: CacheReader,
    layer: int,
    y_NP: np.ndarray,
    norm: FinalNorm,
    *,
    batch_size: int,
    buffer_size: int,
    seed: int,
) -> Callable[[int], Iterator[tuple[Tensor, Tensor]]]:
    """``epoch_batches`` for fit_sweep: shuffled batches ``(x_ND float32, y_N int64)`` of usable patches.

    Epoch ``e`` reads each chunk holding a usable patch once, in the order seeded by
    ``seed + e``; excluded patches (IGNORE_LABEL) are dropped before the shuffle buffer, so
    every batch holds ``batch_size`` usable patches (the last one may hold fewer).
    """
    images_N = (y_NP != IGNORE_LABEL).any(axis=1)
    # Where the final norm runs: on the CPU, once per chunk (a few large ops beat many small
    # per-batch ones ~4x) and the buffer holds float32; on a GPU, per batch on the device, so
    # the buffer holds the stored dtype and only half the bytes cross to the device.
    per_chunk = norm.device.type == "cpu"

    def rows(epoch_seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for acts_ND, image_N, token_N in token_rows(
            reader, layer, tokens="patches", shuffle=True, seed=epoch_seed, images=images_N
        ):
            y_N = y_NP[image_N, token_N]
            keep_N = y_N != IGNORE_LABEL
            acts_ND = acts_ND[keep_N] if not keep_N.all() else acts_ND
            yield (norm(acts_ND).numpy() if per_chunk else acts_ND), y_N[keep_N]

    def epoch_batches(epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        epoch_seed = seed + epoch
        for x_ND, y_N in shuffle_buffer(
            rows(epoch_seed), batch_size=batch_size, buffer_size=buffer_size, seed=epoch_seed
        ):
            yield (torch.from_numpy(x_ND) if per_chunk else norm(x_ND)), torch.from_numpy(y_N)

    return epoch_batches


def patch_chunks(reader: CacheReader, layer: int, norm: FinalNorm) -> Iterator[tuple[np.ndarray, Tensor]]:
    """``(image_B, x_BPD)`` per chunk in store order, valid images only: final-normed patch tokens."""
    for image_B, acts_BPD in reader.iter_chunks(layer, tokens="patches"):
        yield image_B, norm(acts_BPD)


# ---- classification: CLS rows ---------------------------------------------------------------


def cls_rows(reader: CacheReader, layer: int, norm: FinalNorm) -> tuple[Tensor, np.ndarray, np.ndarray]:
    """Every valid image's final image vector, read once: ``(x_ND float32 on device, y_N int64, image_N)``.

    The image vector is the store's ``image_readout``: the final-normed CLS token, or for a
    model without one (SigLIP) the mean of the final-normed patch tokens.
    """
    labels_N = reader.labels("label").astype(np.int64)
    xs, images = [], []
    for image_B, acts_BTD in reader.iter_chunks(layer, tokens="image"):
        xs.append(norm(acts_BTD).mean(1))  # one CLS token: itself; patches: their mean
        images.append(image_B)
    image_N = np.concatenate(images)
    y_N = labels_N[image_N]
    check_label_range(reader, "label", y_N, image_N)
    return torch.cat(xs), y_N, image_N


def in_memory_epochs(
    x_ND: Tensor, y_N: np.ndarray | Tensor, *, batch_size: int, seed: int
) -> Callable[[int], Iterator[tuple[Tensor, Tensor]]]:
    """``epoch_batches`` over rows held in memory: a fresh permutation seeded ``seed + epoch`` each epoch."""
    y_N = torch.as_tensor(y_N, dtype=torch.long)
    n = len(y_N)

    def epoch_batches(epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        for s in range(0, n, batch_size):
            idx = perm[s : s + batch_size]
            yield x_ND[idx.to(x_ND.device)], y_N[idx]

    return epoch_batches
