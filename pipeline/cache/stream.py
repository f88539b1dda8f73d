"""Token streams from a store, for training: flattened rows, shuffled without random row reads.

Dimension key: B images in a chunk, T tokens read per image, D width, N rows.

Random single-row reads from a compressed zarr store are slow (each decodes a
whole chunk), so shuffling is two-level: chunks are visited in a seeded random
order (``CacheReader.iter_chunks(shuffle=True)``) and rows are mixed in a
bounded shuffle buffer spanning several chunks. Everything is seeded: the same
seed and epoch give the same batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from pipeline.cache.reader import CacheReader


def token_rows(
    reader: CacheReader,
    layer: int,
    *,
    tokens: str = "patches",
    shuffle: bool = False,
    seed: int = 0,
    images: np.ndarray | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(acts_ND, image_N, token_N)`` per chunk: every selected token as a row.

    ``token_N`` is the index within the selection (for ``patches``: the patch
    index, row-major on the grid), so labels are ``patch_label[image_N, token_N]``.
    """
    for image_B, acts_BTD in reader.iter_chunks(layer, tokens=tokens, shuffle=shuffle, seed=seed, images=images):
        b, t, d = acts_BTD.shape
        yield acts_BTD.reshape(b * t, d), np.repeat(image_B, t), np.tile(np.arange(t), b)


def shuffle_buffer(
    parts: Iterable[tuple[np.ndarray, ...]],
    *,
    batch_size: int,
    buffer_size: int,
    seed: int,
    drop_last: bool = False,
) -> Iterator[tuple[np.ndarray, ...]]:
    """Re-batch aligned row arrays through a shuffle buffer of about ``buffer_size`` rows.

    When the buffer holds ``buffer_size`` rows it is permuted and half of it is
    emitted as batches; the other half waits to mix with the next parts. With
    ``buffer_size`` <= ``batch_size`` this is plain in-order batching.
    """
    rng = np.random.default_rng(seed)
    mixing = buffer_size > batch_size

    def order(n: int) -> np.ndarray:
        return rng.permutation(n) if mixing else np.arange(n)

    held: list[tuple[np.ndarray, ...]] = []
    n_held = 0

    def emit(arrays: tuple[np.ndarray, ...], n: int) -> Iterator[tuple[np.ndarray, ...]]:
        for s in range(0, n - n % batch_size if drop_last else n, batch_size):
            yield tuple(a[s : s + batch_size] for a in arrays)

    for part in parts:
        held.append(part)
        n_held += len(part[0])
        if n_held < max(buffer_size, batch_size):
            continue
        merged = tuple(np.concatenate(cols) for cols in zip(*held))
        perm = order(n_held)
        keep = min(n_held // 2, buffer_size // 2)
        out_n = (n_held - keep) // batch_size * batch_size  # emit whole batches only
        out_rows, keep_rows = perm[:out_n], perm[out_n:]
        yield from emit(tuple(a[out_rows] for a in merged), out_n)
        held = [tuple(a[keep_rows] for a in merged)]
        n_held = len(keep_rows)
    if n_held:
        merged = tuple(np.concatenate(cols) for cols in zip(*held))
        perm = order(n_held)
        yield from emit(tuple(a[perm] for a in merged), n_held)
