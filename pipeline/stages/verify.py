"""``verify STORE [--mark-not-done]``: check every chunk of a store against its CRC32C (:mod:`pipeline.cache.checksums`).

A hand-run tool (no config). Reads every chunk file of ``STORE``; prints a summary. With
``--mark-not-done`` writes ``done = False`` for the images of corrupt chunks and deletes the
store's sentinels (``layout.store_sentinels``), so the extraction recomputes just them.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from pipeline import layout


def run(ctx: None, args: argparse.Namespace) -> None:
    """``verify STORE``: check every chunk, print the summary; corrupt chunks end in a
    ChunkCorruptError (one ``error:`` line) unless ``--mark-not-done`` marks their images."""
    from pipeline.cache.checksums import mark_not_done, scan
    from pipeline.cache.store import ChunkCorruptError, open_group

    store = Path(args.store)
    open_group(store)  # not a store: CacheError naming it
    result = scan(store)
    summary = result.summary()
    n_bad = len(result.bad)
    print(
        f"{store}: {summary['chunks_checked']} chunks checked: {summary['chunks_checked'] - n_bad} ok, {n_bad} corrupt"
    )
    if not result.checksummed:
        print("  (a store made before chunk checksums: chunks were decoded, so flipped bits go unnoticed)")
    for b in result.bad:
        held = f"images {b.images[0]}..{b.images[1] - 1}" if b.images else "no per-image rows"
        print(f"  corrupt: {b.array} chunk {'.'.join(map(str, b.index))} ({held}): {b.why}")
    if not n_bad:
        return
    images = summary["corrupt_images"]
    print(f"  corrupt images: {len(images)} ({_ranges(images)})")
    if not args.mark_not_done:
        raise ChunkCorruptError(
            f"{store}: {n_bad} corrupt chunks ({len(images)} images); re-run with --mark-not-done to re-extract "
            "just them, or delete the store"
        )
    marked = mark_not_done(store, result)
    for sentinel in layout.store_sentinels(store):  # so snakemake reschedules the extraction
        shutil.rmtree(sentinel) if sentinel.is_dir() else sentinel.unlink(missing_ok=True)
    print(
        f"  marked {len(marked)} images not done ({_ranges(marked)}); re-run the extraction "
        "(snakemake, or `python -m pipeline extract` for each part, then finalize) to recompute them"
    )


def _ranges(values: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1..3, 7"``."""
    out, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            out.append(f"{start}..{v}" if v != start else str(v))
            start = None
    return ", ".join(out)
