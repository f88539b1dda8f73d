"""The activation cache: zarr stores of ViT residual-stream activations (see store.py for the layout)."""

from pipeline.cache.reader import CacheReader, open_cache
from pipeline.cache.store import (
    CacheError,
    CacheIncompleteError,
    CacheMismatchError,
    ChunkCorruptError,
    ForeignWriterError,
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

__all__ = [
    "CacheError",
    "CacheIncompleteError",
    "CacheMismatchError",
    "CacheReader",
    "ChunkCorruptError",
    "ForeignWriterError",
    "InputsChangedError",
    "StoreLayout",
    "StoreWriter",
    "chunk_ranges",
    "create_or_open",
    "finalize",
    "open_cache",
    "part_chunks",
    "pending_chunks",
    "write_chunk",
]
