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


def test_every_stage_runs_a_registry_target_taking_ctx_and_args():
    import importlib
    import inspect

    from pipeline.stages import STAGES

    for name, stage in STAGES.items():
        module, func = stage.target.split(":")
        fn = getattr(importlib.import_module(module), func)
        assert list(inspect.signature(fn).parameters) == ["ctx", "args"], name


def test_main_starts_the_context_with_the_stage_threads_and_device_flag(tmp_path, monkeypatch):
    """`python -m pipeline STEP`: one RunContext per step, threads as the stage's rule reserves
    (1 for demo-data, the config's 2 capped at the CPUs for sae-train), `--device` passed on."""
    from helpers import write_config
    from pipeline import provenance
    from pipeline.__main__ import main
    from pipeline.runtime import available_cpus
    from pipeline.sae.stages import train as sae_train
    from pipeline.stages import demo_data

    config = write_config(tmp_path)
    seen = {}

    def record(ctx, args):
        seen[args.step] = (ctx.threads, ctx.requested_device, torch.get_num_threads(), ctx.cfg.source)
        return {}

    monkeypatch.setattr(demo_data, "run", record)
    monkeypatch.setattr(sae_train, "run", record)
    monkeypatch.setattr(provenance, "check_cli_step", lambda args, cfg: None)  # no upstream outputs here
    before = torch.get_num_threads()
    try:
        assert main(["demo-data", "--config", str(config), "--name", "seg"]) == 0
        assert main(["sae-train", "--config", str(config), "--device", "cpu"]) == 0
    finally:
        torch.set_num_threads(before)
    assert seen["demo-data"] == (1, None, 1, config)
    n = min(2, available_cpus())
    assert seen["sae-train"] == (n, "cpu", n, config)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_the_device_is_resolved_on_first_use_only(tmp_path, monkeypatch):
    """device: cuda without a GPU fails the steps that use a device, not those that use none."""
    from helpers import write_config
    from pipeline.__main__ import main
    from pipeline.runtime import DeviceError

    with pytest.raises(DeviceError, match="device: cuda"):
        _ = RunContext.start(_cfg(tmp_path, threads=1, device="cuda")).device
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, {"device": "cuda"})
    before = torch.get_num_threads()
    try:
        assert main(["demo-data", "--config", str(config), "--name", "seg"]) == 0
    finally:
        torch.set_num_threads(before)
    assert (tmp_path / "resources/data/seg/.complete").is_file()
