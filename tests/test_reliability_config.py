"""Issue 24, config: every number of the schema refuses NaN and ±inf at load (generated from the
schema, not listed by hand), and names are anchored at the end and limited in length."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, config_from_dict, load_schema
from pipeline.config_schema import node_at, resolve

REPO = Path(__file__).resolve().parent.parent


def _base() -> dict:
    """The demo config: it has every section, so only the planted key can be wrong."""
    return yaml.safe_load((REPO / "config.yaml").read_text())


def _is_number(node: dict) -> bool:
    kind = node.get("type")
    return kind == "number" or (isinstance(kind, list) and "number" in kind)


def number_keys(node: dict, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every YAML key of the schema whose value is a number (``[]`` = an item of a list, ``*`` =
    any name of a mapping), found by walking the schema (``$ref`` and ``oneOf`` branches too)."""
    node = resolve(node)
    found = [path] if _is_number(node) else []
    for branch in node.get("oneOf", []) + node.get("anyOf", []):
        found += number_keys(branch, path)
    for key, sub in node.get("properties", {}).items():
        found += number_keys(sub, path + (key,))
    if isinstance(node.get("additionalProperties"), dict):
        found += number_keys(node["additionalProperties"], path + ("*",))
    if isinstance(node.get("items"), dict):
        found += number_keys(node["items"], path + ("[]",))
    return list(dict.fromkeys(found))


NUMBER_KEYS = number_keys(load_schema())


def _plant(raw: dict, key: tuple[str, ...], value: float) -> str:
    """Set ``key`` of ``raw`` to ``value`` (a list item: the list ``[value]``); return the key
    path the error must name (``*`` taken as an existing name, ``[]`` as item 0)."""
    node, named = raw, []
    for i, part in enumerate(key):
        last = i == len(key) - 1
        nxt = key[i + 1] if not last else None
        if part == "*":
            part = next(iter(node)) if node else "x"
        if part == "[]":
            continue  # handled by the parent below
        named.append(part)
        if last:
            node[part] = value
        elif nxt == "[]" and i + 1 == len(key) - 1:  # a list of numbers: as long as it must be
            n = node_at(load_schema(), "/".join(key[:-1])).get("minItems", 1)
            node[part] = [value] + [1.0] * (n - 1)
            named.append("0")
            break
        elif nxt == "[]":
            node = node.setdefault(part, [{}])[0]
            named.append("0")
        else:
            node = node.setdefault(part, {})
    return "/".join(named)


def test_the_schema_walk_finds_the_float_lists():
    flat = {"/".join(k) for k in NUMBER_KEYS}
    for expected in (
        "sae/lrs/[]",
        "sae/max_l0",
        "quantify/thresholds/[]",
        "probes/seg/lrs/[]",
        "datasets/*/val_fraction",
    ):
        assert expected in flat, expected
    assert len(NUMBER_KEYS) > 15


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("key", NUMBER_KEYS, ids=["/".join(k) for k in NUMBER_KEYS])
def test_every_number_refuses_nan_and_inf(key, value):
    raw = copy.deepcopy(_base())
    if key[:3] == ("sae", "kinds", "[]"):  # an entry of a kind that has the key (momentum: batchtopk)
        from pipeline.sae_kinds import KINDS

        kind = next(
            n
            for n, spec in KINDS.items()
            if key[3] in spec.params or (key[3] == "auxk" and spec.auxk) or key[3] == "matryoshka"
        )
        raw["sae"]["kinds"] = [{"kind": kind}]
    where = _plant(raw, key, value)
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw, source="planted.yaml")
    assert f"key {where}: " in str(info.value)
    assert "not a finite number" in str(info.value)


def test_finite_numbers_still_pass():
    raw = _base()
    raw["sae"]["lrs"] = [1e-3, 2.5]
    assert config_from_dict(raw).sae.lrs == (1e-3, 2.5)


@pytest.mark.parametrize("section", ["models", "datasets"])
@pytest.mark.parametrize(
    "name,ok",
    [("dino\n", False), ("dino\n\n", False), ("a" * 65, False), ("a" * 300, False), ("a" * 64, True), ("x-1_b", True)],
    ids=["newline", "two-newlines", "65-chars", "300-chars", "64-chars", "plain"],
)
def test_names_are_anchored_and_limited(section, name, ok):
    raw = _base()
    old = "dinov2_demo" if section == "models" else "demo_seg"
    raw[section][name] = raw[section].pop(old)
    for ref in raw["caches"]:
        ref.update({k: name for k in ("model", "dataset") if ref[k] == old})
    for sec in ("probes",):
        for kind in raw[sec].values():
            kind["cache"].update({k: name for k in ("model", "dataset") if kind["cache"][k] == old})
    for sec in ("sae", "dimred"):
        raw[sec]["cache"].update({k: name for k in ("model", "dataset") if raw[sec]["cache"][k] == old})
    raw.pop("demo")  # the demo's own names must match the datasets'
    if ok:
        assert name in getattr(config_from_dict(raw), section)
        return
    with pytest.raises(ConfigError, match=rf"key {section}: .*(does not match|is too long)"):
        config_from_dict(raw)


def test_manipulate_example_name_is_anchored():
    raw = _base()
    raw["manipulate"]["examples"][0]["name"] = "val4\n"
    with pytest.raises(ConfigError, match=r"key manipulate/examples/0/name: .* does not match"):
        config_from_dict(raw)
