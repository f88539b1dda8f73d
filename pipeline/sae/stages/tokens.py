"""Token streams of one cached block for the SAE stages: training batches (streamed or
device-resident), held-out batches, per-chunk token rows.

Dimension key: N rows (tokens), D width.

Reads the store; writes nothing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import numpy as np
import torch

from pipeline.cache.reader import CacheReader
from pipeline.cache.stream import (
    DEVICE_MEMORY_FRACTION,
    ChunkDecoder,
    chunk_order,
    fits_on_device,
    group_batches,
    in_background,
    load_tokens,
    resident_batches,
    token_index,
    token_rows,
)
from pipeline.config import ConfigError, SAEConfig

from ..applies import SAEStageError

log = logging.getLogger(__name__)


EVAL_MAX_TOKENS = 1 << 18
"""Held-out tokens (from the VAL store, whole chunks in order) for the sweep's metrics."""
EVAL_BATCH = 8192


def _token_mode(tokens: str) -> str:
    if tokens not in ("patches", "patches+cls"):
        raise ConfigError(f"sae/tokens: {tokens!r} is not one of patches, patches+cls")
    return "patches" if tokens == "patches" else "all"


def token_parts(
    reader: CacheReader, layer: int, *, tokens: str = "patches", shuffle: bool = False, seed: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(acts_ND, image_N, token_N)`` per chunk for ``patches`` or ``patches+cls`` (no registers).

    One store read per chunk; ``token_N`` indexes the store's token axis for ``patches+cls``.
    """
    mode = _token_mode(tokens)
    for acts_ND, image_N, token_N in token_rows(reader, layer, tokens=mode, shuffle=shuffle, seed=seed):
        if mode == "all" and reader.n_prefix > 1:
            keep = (token_N == 0) | (token_N >= reader.n_prefix)
            acts_ND, image_N, token_N = acts_ND[keep], image_N[keep], token_N[keep]
        yield acts_ND, image_N, token_N


def tokens_per_pass(reader: CacheReader, tokens: str) -> int:
    per_image = reader.n_patches + (1 if tokens == "patches+cls" else 0)
    return int(reader.valid.sum()) * per_image


def train_batches(
    reader: CacheReader,
    layer: int,
    *,
    tokens: str,
    n_tokens: int,
    batch_size: int,
    buffer_size: int,
    seed: int,
    workers: int = 2,
    out_dtype: torch.dtype | None = torch.float32,
    pin_memory: bool = False,
) -> Iterator[torch.Tensor]:
    """Shuffled ``[batch, D]`` batches (``out_dtype``; None: the stored dtype) for ``n_tokens`` tokens from the store.

    Seed contract: ``ceil(n_tokens / tokens_per_pass)`` passes; pass p visits every chunk once in
    the order seeded ``seed + p`` (:func:`chunk_order`); the passes' chunk orders, chained, go
    through :func:`group_batches` (seed ``seed``): groups of about ``buffer_size`` rows (whole
    chunks), each permuted, leftovers carried to the next group, so every pass's tokens come out
    exactly once and only the very last batch may be short. The batches depend on the seed, the
    store's chunking, ``batch_size`` and ``buffer_size`` only, not on ``workers`` (tested). Raw
    activations, made on a producer thread (:func:`in_background`); scaling happens on the
    trainer's device. ``sae-train`` asks for the stored dtype (pinned for CUDA): float16 halves
    the bytes gathered and copied to the device, and the trainer's scaling turns it into float32
    in the same op (:func:`pipeline.sae.train.prepare_batch`).
    """
    per_pass = tokens_per_pass(reader, tokens)
    if per_pass == 0:
        raise SAEStageError(f"{reader.path}: no valid image to train on")
    _token_mode(tokens)
    n_passes = math.ceil(n_tokens / per_pass)
    order = (chunk for p in range(n_passes) for chunk in chunk_order(reader, shuffle=True, seed=seed + p))
    yield from in_background(
        group_batches(
            reader,
            layer,
            order,
            token_index(reader, tokens),
            batch_size=batch_size,
            buffer_size=buffer_size,
            seed=seed,
            workers=workers,
            out_dtype=out_dtype,
            pin_memory=pin_memory,
        )
    )


def device_batches(
    reader: CacheReader,
    layer: int,
    *,
    tokens: str,
    n_tokens: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    workers: int = 2,
) -> Iterator[torch.Tensor]:
    """``token_source: device``: the layer's tokens loaded onto ``device`` once (:func:`load_tokens`),
    then float32 batches of a fresh permutation per pass (:func:`resident_batches`, pass p seeded
    ``seed + p``): the same tokens per pass as :func:`train_batches`, in another order. On CPU the
    batches are gathered on a producer thread (:func:`in_background`), as the stream's are."""
    _token_mode(tokens)
    tokens_ND = load_tokens(reader, layer, token_index(reader, tokens), device=device, workers=workers)
    batches = resident_batches(tokens_ND, n_tokens=n_tokens, batch_size=batch_size, seed=seed)
    yield from in_background(batches) if device.type == "cpu" else batches


def token_source(reader: CacheReader, sc: SAEConfig, device: torch.device) -> str:
    """``stream`` or ``device`` for ``sae.token_source`` (see the schema); the size rule is
    :func:`pipeline.cache.stream.fits_on_device` (at most half the device's free memory)."""
    n_bytes = tokens_per_pass(reader, sc.tokens) * reader.d_model * ChunkDecoder(reader).dtype.itemsize
    if sc.token_source == "stream":
        return "stream"
    fits = fits_on_device(n_bytes, device)
    if sc.token_source == "device" and not fits:
        raise ConfigError(
            f"sae/token_source: device: the layer's tokens take {n_bytes / 2**30:.2f} GiB, more than "
            f"{DEVICE_MEMORY_FRACTION:g} of the free memory of {device}; use stream or auto"
        )
    return "device" if fits and (sc.token_source == "device" or device.type == "cuda") else "stream"


def eval_batches(
    reader: CacheReader, layer: int, *, tokens: str, max_tokens: int = EVAL_MAX_TOKENS, batch_size: int = EVAL_BATCH
) -> Iterator[np.ndarray]:
    """Held-out ``[batch, D]`` batches: chunks in order, at most ``max_tokens`` tokens."""
    seen = 0
    for acts_ND, _, _ in token_parts(reader, layer, tokens=tokens):
        acts_ND = acts_ND[: max_tokens - seen]
        for s in range(0, len(acts_ND), batch_size):
            yield acts_ND[s : s + batch_size]
        seen += len(acts_ND)
        if seen >= max_tokens:
            return


def training_batches(
    train: CacheReader, block: int, sc: SAEConfig, dev: torch.device, threads: int
) -> tuple[str, Iterator[torch.Tensor]]:
    """``(source, batches)``: the token stream the sweep trains on, from ``token_source``
    (``device``: every token resident on the device; else groups of chunks permuted, read
    straight from the mapped files of an uncompressed store or decoded on worker threads)."""
    source = token_source(train, sc, dev)
    log.info("tokens from: %s (sae.token_source: %s)", source, sc.token_source)
    if source == "stream" and not ChunkDecoder(train).raw:
        log.info(
            "tokens are decoded on every read (store %s is compressed); a store extracted with "
            "extract.compression: none is read without decoding",
            train.path,
        )
    if source == "device":
        batches = device_batches(
            train,
            block,
            tokens=sc.tokens,
            n_tokens=sc.n_tokens,
            batch_size=sc.batch_size,
            seed=sc.seed,
            device=dev,
            workers=max(2, threads),
        )
    else:
        batches = train_batches(
            train,
            block,
            tokens=sc.tokens,
            n_tokens=sc.n_tokens,
            batch_size=sc.batch_size,
            buffer_size=sc.shuffle_buffer,
            seed=sc.seed,
            workers=max(2, threads),
            out_dtype=None,  # the stored dtype: train_sweep casts inside its scaling, on the device
            pin_memory=dev.type == "cuda",
        )
    return source, batches
