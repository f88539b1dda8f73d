"""The config schema file and the dataclass defaults read from it.

Reads ``pipeline/schemas/config.schema.yaml`` (JSON Schema draft 2020-12, shipped in the
package; the file Snakemake's ``validate`` reads) once; writes nothing. The file holds every
section but the probe kinds' (``probes.<kind>``): each kind's node is its
:class:`pipeline.probe_kinds.ProbeKind`'s ``schema``, and :func:`pipeline.config.load_schema`
merges them in. Both :mod:`pipeline.config` and :mod:`pipeline.probe_kinds` build their
dataclasses with :func:`default`, so this module imports neither.
"""

from __future__ import annotations

import functools
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml

# Ships inside the package (package-data), so a wheel install validates like a clone does.
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"


# PyYAML's C parser where it was built with libyaml (safe_load's Python parser costs ~0.1 s of
# every dry run on the schemas alone); the same safe constructors and resolvers either way.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load(text)``, parsed by libyaml when PyYAML has it."""
    return yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506  (a safe loader)


@functools.cache
def schema_file() -> dict:
    """The schema file as parsed (shared: callers copy before changing it)."""
    return load_yaml(SCHEMA_PATH.read_text())


def resolve(node: dict) -> dict:
    """``node`` with its local ``$ref`` (``#/$defs/...`` of the schema file) merged in; the node's own keys win."""
    while "$ref" in node:
        target: Any = schema_file()
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def node_at(root: dict, key: str) -> dict:
    """The schema of YAML key ``key`` below ``root`` (``sae/max_l0``; ``*`` = any name of a
    mapping such as ``datasets/*``, ``[]`` = an item of a list), ``$ref`` resolved; a key found
    only in a ``oneOf`` branch (``sae/source/scaling``) is taken from the first branch that has it."""
    node = root
    for part in key.split("/"):
        node = resolve(node)
        if part == "*":
            node = node["additionalProperties"]
        elif part == "[]":
            node = node["items"]
        else:
            branches = [node] + [resolve(b) for b in node.get("oneOf", [])]
            found = [b["properties"][part] for b in branches if part in b.get("properties", {})]
            if not found:
                raise KeyError(f"{SCHEMA_PATH.name}: no key {key!r}")
            node = found[0]
    return resolve(node)


def frozen(value: Any) -> Any:
    """Lists as tuples, as the dataclasses hold them."""
    return tuple(frozen(v) for v in value) if isinstance(value, list) else value


def default_value(key: str, root: dict) -> Any:
    """The ``default:`` of YAML key ``key`` below the schema node ``root`` (lists as tuples, as the
    dataclasses hold them); KeyError when the key has none."""
    found = node_at(root, key)
    if "default" not in found:
        raise KeyError(f"{SCHEMA_PATH.name}: key {key!r} has no default")
    return frozen(found["default"])


def default(key: str, node: dict | None = None) -> Any:
    """A dataclass field whose default is the schema's ``default:`` of YAML key ``key``, read
    below ``node`` (a probe kind's ``schema``; None: the schema file)."""
    value = default_value(key, schema_file() if node is None else node)
    if isinstance(value, dict):
        return field(default_factory=lambda: dict(value))
    return field(default=value)
