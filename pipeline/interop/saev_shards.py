"""saev's sharded activation files (protocol 2.1), as saev 3d73f1f's code writes and reads them.

A shard directory (``src/saev/data/shards.py``: ``Metadata``, ``ShardWriter``, ``LabelsWriter``,
``ShardInfo``, ``IndexMap``) holds:

- ``metadata.json``: the fields of saev's ``Metadata`` dataclass in declaration order (family,
  ckpt, layers, content_tokens_per_example, cls_token, d_model, n_examples, max_tokens_per_shard,
  data, dataset, pixel_agg, dtype, protocol); saev's ``Metadata.load`` accepts no other key;
- ``shards.json``: ``[{"name": "acts000000.bin", "n_examples": E}, ...]``;
- ``acts%06d.bin``: raw little-endian float32, C order, shape (examples_per_shard, L, T, D) with
  ``examples_per_shard = max_tokens_per_shard // (T * L)`` and T = content tokens (+1 for the
  CLS token, which comes first). Every file has that full size, the last one too (saev memmaps
  it ``w+`` at the full shape and its readers memmap it at the full shape); only the first
  ``n_examples`` rows of the last one are data. The writer opens the next shard as soon as one
  is full, so when ``n_examples`` is a multiple of ``examples_per_shard`` the last shard is an
  empty (all-zero, full-size) file with ``n_examples: 0``;
- ``labels.bin`` (optional): uint8 (n_examples, content_tokens_per_example), one label per patch.

The directory is named ``Metadata.hash``: the first 8 hex digits of the SHA-256 of the metadata
serialised by orjson with sorted keys (compact, non-ASCII kept). saev's ``protocol.md`` says
the full digest and the last shard smaller; the code does otherwise and this module follows the
code (docs/differences.md). saev's loaders also require the directory to sit at
``.../saev/shards/<hash>``.

Dimension key: E examples (images) of a shard, L layers, T tokens, D width, P patches.
Reads and writes the shard files with numpy; imports no torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cache.store import CacheError

PROTOCOL = "2.1"
ACTS_NAME = "acts{:06d}.bin"
LABELS = "labels.bin"
METADATA = "metadata.json"
SHARDS = "shards.json"
PIXEL_AGGS = ("majority", "prefer-fg")  # saev's PixelAgg values
# saev 3d73f1f Metadata.family's literal: the families its loaders accept
SAEV_FAMILIES = ("bird-mae", "clip", "dinov2", "dinov3", "fake-clip", "pe-core", "pe-spatial", "siglip")
DEFAULT_MAX_TOKENS_PER_SHARD = 2_400_000  # saev.framework.shards.Config's default
# our model family -> saev's Metadata.family for the same models (ours without one: no saev family)
SAEV_FAMILY = {"dinov2": "dinov2", "dinov2_reg": "dinov2", "dinov3": "dinov3", "clip": "clip", "siglip": "siglip"}


class SaevShardsError(CacheError):
    """A saev shard directory we cannot read or express; the message names the file and key."""


@dataclass(frozen=True)
class SaevMetadata:
    """saev's ``Metadata`` (fields in its declaration order, which ``metadata.json`` keeps)."""

    family: str
    ckpt: str
    layers: tuple[int, ...]
    content_tokens_per_example: int
    cls_token: bool
    d_model: int
    n_examples: int
    max_tokens_per_shard: int
    data: str
    dataset: str
    pixel_agg: str = "majority"
    dtype: str = "float32"
    protocol: str = PROTOCOL

    @property
    def tokens_per_example(self) -> int:
        return self.content_tokens_per_example + int(self.cls_token)

    @property
    def examples_per_shard(self) -> int:
        return self.max_tokens_per_shard // (self.tokens_per_example * len(self.layers))

    @property
    def shard_shape(self) -> tuple[int, int, int, int]:
        """(E, L, T, D) of every shard file."""
        return (self.examples_per_shard, len(self.layers), self.tokens_per_example, self.d_model)

    @property
    def example_bytes(self) -> int:
        return len(self.layers) * self.tokens_per_example * self.d_model * 4

    def to_json(self) -> dict[str, Any]:
        """The metadata.json object (field order kept; layers a list)."""
        out = dataclasses.asdict(self)
        out["layers"] = list(self.layers)
        return out

    @property
    def hash(self) -> str:
        """saev's ``Metadata.hash``: sha256 of ``orjson.dumps(md, option=OPT_SORT_KEYS)``, first 8 hex
        digits. ``json.dumps`` with sorted keys, compact separators and non-ASCII kept gives the
        same bytes for these field types (str, int, bool, list of int)."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def _field(path: Path, doc: dict, key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in doc:
        raise SaevShardsError(f"{path}: key {key} is missing (saev protocol {PROTOCOL} metadata)")
    value = doc[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SaevShardsError(f"{path}: key {key}: {value!r} is not {getattr(kind, '__name__', kind)}")
    return value


def _read_json(path: Path, missing: str) -> Any:
    """The JSON document at ``path``; a :class:`SaevShardsError` saying ``missing`` when there is
    none, or naming the file when it is not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SaevShardsError(missing) from None
    except ValueError as err:
        raise SaevShardsError(f"{path}: not JSON ({err})") from None


def read_metadata(shard_dir: Path) -> SaevMetadata:
    """``metadata.json`` of ``shard_dir``, checked as saev's ``Metadata`` checks it (every field
    present, float32, protocol 2.1, at least one example per shard)."""
    path = Path(shard_dir) / METADATA
    doc = _read_json(path, f"{shard_dir}: no {METADATA} (not a saev shard directory)")
    if not isinstance(doc, dict):
        raise SaevShardsError(f"{path}: not a JSON object")
    protocol = _field(path, doc, "protocol", str)
    if protocol != PROTOCOL:
        raise SaevShardsError(f"{path}: key protocol: {protocol!r}; only saev protocol {PROTOCOL!r} is read")
    dtype = _field(path, doc, "dtype", str)
    if dtype != "float32":
        raise SaevShardsError(f"{path}: key dtype: {dtype!r}; saev protocol {PROTOCOL} shards are float32")
    layers = _field(path, doc, "layers", list)
    if not layers or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
        raise SaevShardsError(f"{path}: key layers: {layers!r} is not a non-empty list of integers")
    pixel_agg = doc.get("pixel_agg", "majority")
    if pixel_agg not in PIXEL_AGGS:
        raise SaevShardsError(f"{path}: key pixel_agg: {pixel_agg!r} is not one of {list(PIXEL_AGGS)}")
    md = SaevMetadata(
        family=_field(path, doc, "family", str),
        ckpt=_field(path, doc, "ckpt", str),
        layers=tuple(layers),
        content_tokens_per_example=_field(path, doc, "content_tokens_per_example", int),
        cls_token=_field(path, doc, "cls_token", bool),
        d_model=_field(path, doc, "d_model", int),
        n_examples=_field(path, doc, "n_examples", int),
        max_tokens_per_shard=_field(path, doc, "max_tokens_per_shard", int),
        data=_field(path, doc, "data", str),
        dataset=_field(path, doc, "dataset", str),
        pixel_agg=pixel_agg,
        dtype=dtype,
        protocol=protocol,
    )
    for key in ("content_tokens_per_example", "d_model", "n_examples"):
        if getattr(md, key) < 1:
            raise SaevShardsError(f"{path}: key {key}: {getattr(md, key)} must be at least 1")
    if md.examples_per_shard < 1:
        raise SaevShardsError(
            f"{path}: key max_tokens_per_shard: {md.max_tokens_per_shard} holds no example of "
            f"{md.tokens_per_example} tokens x {len(md.layers)} layers"
        )
    return md


@dataclass(frozen=True)
class ShardFile:
    name: str
    n_examples: int
    start: int  # global index of its first example


def read_shards(shard_dir: Path, md: SaevMetadata) -> list[ShardFile]:
    """``shards.json``, checked as saev's readers need it: every shard but the last holds
    ``examples_per_shard`` examples (saev maps a global index to shard ``i // examples_per_shard``),
    the names are ``acts000000.bin``, ``acts000001.bin``, … in order, the counts sum to
    ``n_examples``, and each file holds at least its examples (full-size, as saev writes it, or
    cut after its last example)."""
    shard_dir = Path(shard_dir)
    path = shard_dir / SHARDS
    doc = _read_json(path, f"{shard_dir}: no {SHARDS} (saev writes it as each shard is closed)")
    if not isinstance(doc, list) or not all(isinstance(e, dict) for e in doc):
        raise SaevShardsError(f"{path}: not a JSON list of shard objects")
    out, start, eps = [], 0, md.examples_per_shard
    for i, entry in enumerate(doc):
        name, n = entry.get("name"), entry.get("n_examples")
        if name != ACTS_NAME.format(i):
            raise SaevShardsError(f"{path}: entry {i} key name: {name!r}, expected {ACTS_NAME.format(i)!r}")
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= eps:
            raise SaevShardsError(f"{path}: entry {i} ({name}) key n_examples: {n!r} is not in 0..{eps}")
        if i < len(doc) - 1 and n != eps:
            raise SaevShardsError(
                f"{path}: entry {i} ({name}) key n_examples: {n}; every shard but the last holds "
                f"examples_per_shard = {eps} examples"
            )
        file = shard_dir / name
        if n:
            size = file.stat().st_size if file.exists() else None
            if size is None:
                raise SaevShardsError(f"{file}: missing (listed in {SHARDS})")
            if size < n * md.example_bytes:
                raise SaevShardsError(
                    f"{file}: {size} bytes, too short for its {n} examples of {md.example_bytes} bytes "
                    f"(layers {list(md.layers)}, {md.tokens_per_example} tokens, d_model {md.d_model}, float32)"
                )
        out.append(ShardFile(name, n, start))
        start += n
    if start != md.n_examples:
        raise SaevShardsError(
            f"{path}: the shards hold {start} examples, {METADATA} key n_examples says {md.n_examples}"
        )
    return out


def read_rows(shard_dir: Path, md: SaevMetadata, shards: list[ShardFile], start: int, stop: int) -> np.ndarray:
    """Examples [start, stop) as float32 [B, L, T, D], read from the shard files they lie in."""
    parts = []
    for shard in shards:
        lo, hi = max(start, shard.start), min(stop, shard.start + shard.n_examples)
        if lo >= hi:
            continue
        shape = (shard.n_examples, *md.shard_shape[1:])
        # copy-on-write ("c", as saev's indexed reader): a writable view (torch reads it without
        # a copy) that never writes to the file
        acts = np.memmap(Path(shard_dir) / shard.name, mode="c", dtype="<f4", shape=shape)
        parts.append(np.asarray(acts[lo - shard.start : hi - shard.start]))
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def read_labels(shard_dir: Path, md: SaevMetadata) -> np.ndarray | None:
    """``labels.bin`` as uint8 [N, P] (a memmap), or None where the directory has none."""
    path = Path(shard_dir) / LABELS
    if not path.exists():
        return None
    want = md.n_examples * md.content_tokens_per_example
    if path.stat().st_size != want:
        raise SaevShardsError(
            f"{path}: {path.stat().st_size} bytes; n_examples x content_tokens_per_example = {want} uint8 labels"
        )
    return np.memmap(path, mode="r", dtype=np.uint8, shape=(md.n_examples, md.content_tokens_per_example))


def shard_plan(md: SaevMetadata) -> list[tuple[int, int]]:
    """(start, n_examples) of each shard saev's ShardWriter writes for ``md``: full shards, then
    the rest, which is an empty shard when ``n_examples`` is a multiple of ``examples_per_shard``
    (the writer opens the next shard the moment one is full)."""
    eps = md.examples_per_shard
    full = md.n_examples // eps
    return [(i * eps, eps) for i in range(full)] + [(full * eps, md.n_examples - full * eps)]


def write_json(path: Path, obj: Any) -> None:
    """saev's ``helpers.jdump(..., option=OPT_INDENT_2)``: two-space indent, non-ASCII kept."""
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False), encoding="utf-8")
