"""The config schema is the one owner of every default (issue 14).

Each dataclass field of ``pipeline.config``, and of every probe kind's section
(``pipeline.probe_kinds``), with a default must take it from the schema
(``default("<yaml key>"[, <kind's schema node>])``; ``None`` / ``()`` only where absence means
"not given") and agree
with it value for value and type for type (a float written ``-6`` in the schema would change
every provenance hash); ``config_from_dict`` keeps no literal fallback of its own.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json

import pytest

from pipeline import config as config_module
from pipeline import probe_kinds
from pipeline.config import (
    DatasetConfig,
    DimredConfig,
    ExtractConfig,
    ManipulateConfig,
    ManipulateExample,
    Paths,
    QuantifyConfig,
    SAEConfig,
    SAESource,
    config_from_dict,
    schema_default,
    schema_node,
    to_jsonable,
)

SECTIONS = {  # dataclass -> its YAML key in the schema
    Paths: "paths",
    DatasetConfig: "datasets/*",
    ExtractConfig: "extract",
    **{pk.section: f"probes/{kind}" for kind, pk in probe_kinds.PROBE_KINDS.items()},
    SAESource: "sae/source",
    SAEConfig: "sae",
    QuantifyConfig: "quantify",
    DimredConfig: "dimred",
    ManipulateExample: "manipulate/examples/[]",
    ManipulateConfig: "manipulate",
}
YAML_NAMES = {(ManipulateExample, "target_class"): "class"}
# Fields that are not YAML keys of their section (filled from several keys, or the mapping's name).
NOT_KEYS = {
    (DatasetConfig, "name"),
    (DatasetConfig, "splits"),
    (SAESource, "kind"),
    (SAESource, "cache"),
    (SAESource, "path"),
    (SAESource, "repo"),
    (SAEConfig, "source"),
    (ManipulateConfig, "examples"),
}


def _fields_with_defaults():
    for cls, section in SECTIONS.items():
        for f in dataclasses.fields(cls):
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                continue
            value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            yield cls, f.name, f"{section}/{YAML_NAMES.get((cls, f.name), f.name)}", value


def _typed(value):
    return json.dumps(to_jsonable(value))  # 1e9 vs 1000000000, -6 vs -6.0 differ here, as in provenance hashes


@pytest.mark.parametrize(
    "cls, name, key, value", list(_fields_with_defaults()), ids=lambda v: v if isinstance(v, str) else None
)
def test_every_dataclass_default_is_the_schemas(cls, name, key, value):
    if (cls, name) in NOT_KEYS:
        assert value in (None, ()), f"{cls.__name__}.{name} is not a YAML key; its default can only say 'not given'"
        return
    node = schema_node(key)
    if value is None or value == ():  # "not given" (chosen later): the schema must not promise a value
        assert node.get("default") is None, f"{key}: schema default {node['default']!r}, dataclass None"
        return
    assert "default" in node, f"{key}: the dataclass has {value!r}, the schema no default"
    assert _typed(value) == _typed(schema_default(key)), f"{key}: dataclass {value!r} vs schema {node['default']!r}"


@pytest.mark.parametrize("module", [config_module, probe_kinds], ids=lambda m: m.__name__)
def test_no_default_is_written_twice(module):
    """Dataclass defaults (pipeline.config's and the probe kinds' sections) are ``default(...)``
    calls (or None / () for "not given"), and ``config_from_dict`` and its helpers fall back on
    no literal value."""
    tree = ast.parse(inspect.getsource(module))
    problems = []
    classes = {c.__name__ for c in SECTIONS}
    assert module is config_module or classes & {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name in classes:
            for stmt in node.body:
                if not (isinstance(stmt, ast.AnnAssign) and stmt.value is not None):
                    continue
                v = stmt.value
                is_default_call = isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "default"
                not_given = (isinstance(v, ast.Constant) and v.value is None) or (
                    isinstance(v, ast.Tuple) and not v.elts
                )
                if not (is_default_call or not_given):
                    problems.append(f"{node.name}.{stmt.target.id}: {ast.unparse(v)}")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("get", "pop")
            and len(node.args) == 2
        ):
            fallback = node.args[1]
            if isinstance(fallback, ast.Constant) and fallback.value is not None:
                problems.append(f"line {node.lineno}: {ast.unparse(node)}")
    assert not problems, "defaults outside the schema:\n" + "\n".join(problems)


def test_a_minimal_config_gets_the_schemas_defaults(tmp_path):
    raw = {
        "paths": {},
        "models": {"m": {"family": "dinov2", "source": "x"}},
        "datasets": {"d": {"kind": "ade20k", "root": "r"}},
        "extract": {},
        "caches": [{"model": "m", "dataset": "d"}],
        "probes": {"seg": {"cache": {"model": "m", "dataset": "d"}}},
        "sae": {"cache": {"model": "m", "dataset": "d"}, "layer": -2, "source": {"checkpoint": "c.pt"}},
        "quantify": {},
        "dimred": {"cache": {"model": "m", "dataset": "d"}},
        "manipulate": {"examples": [{"name": "e", "image": 0}]},
    }
    cfg = config_from_dict(raw)
    assert cfg.threads == schema_default("threads") and cfg.device == schema_default("device")
    assert str(cfg.paths.results) == schema_default("paths/results")
    assert cfg.datasets["d"].val_fraction == schema_default("datasets/*/val_fraction")
    assert cfg.extract.layers == schema_default("extract/layers")
    assert cfg.probes["seg"].lrs == schema_default("probes/seg/lrs")
    assert cfg.sae.max_l0 == schema_default("sae/max_l0") and cfg.sae.source.scaling == schema_default(
        "sae/source/scaling"
    )
    assert cfg.quantify.thresholds == schema_default("quantify/thresholds") and cfg.quantify.manual == {}
    assert cfg.dimred.dims == schema_default("dimred/dims")
    assert cfg.manipulate.examples[0].split == schema_default("manipulate/examples/[]/split")
