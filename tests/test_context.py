"""RunContext: threads and device set once; stores handed out only through the provenance check."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import TINY_CONFIG, deep_update
from pipeline.config import CacheRef, config_from_dict
from pipeline.context import RunContext
from pipeline.provenance import StaleInputError


def _cfg(tmp_path, **overrides):
    raw = deep_update(TINY_CONFIG, {"paths": {"cache": str(tmp_path / "cache")}, **overrides})
    return config_from_dict(raw)


def test_start_caps_torch_threads_and_resolves_the_device(tmp_path):
    before = torch.get_num_threads()
    try:
        ctx = RunContext.start(_cfg(tmp_path, threads=1))
        assert ctx.threads == 1 == torch.get_num_threads()
        assert ctx.device == torch.device("cpu")  # TINY_CONFIG: device cpu
        assert RunContext.start(_cfg(tmp_path, threads=1), device="cpu").device.type == "cpu"
    finally:
        torch.set_num_threads(before)


def test_store_refuses_a_store_extracted_with_another_config(tmp_path):
    cfg = _cfg(tmp_path, threads=1)
    ref = CacheRef("dino", "seg")
    store = cfg.store(ref, "train")
    store.mkdir(parents=True)
    attrs = {"config": {"model": {"family": "clip", "source": "resources/models/dino", "revision": None}}}
    (store / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attrs}))
    ctx = RunContext(cfg, 1, torch.device("cpu"))
    with pytest.raises(StaleInputError, match=r"models\.dino\.family"):
        ctx.store(ref, "train")
