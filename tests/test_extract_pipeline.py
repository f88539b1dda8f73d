"""The pipelined extractor (issue 11): forward precision in the store and its hash, concurrency
that does not change a bit, ``auto`` counts from the CPUs really available, the stage report."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import zarr

from helpers import REPO, write_config
from pipeline.cache import CacheMismatchError, open_cache
from pipeline.config import CacheRef, load_config
from pipeline.extract import extract, write_part_sentinel

SEG = CacheRef("dino", "seg")


def test_forward_dtype_is_recorded_and_hashed(project):
    f32 = extract(
        load_config(write_config(project, {"extract": {"forward_dtype": "float32"}})), SEG, "val", progress=False
    )
    path = load_config("config.yaml").store(SEG, "val")
    f32_attrs = dict(zarr.open_group(path, mode="r").attrs)
    f32_acts = zarr.open_array(path / "acts", mode="r")[:]
    assert f32.forward_dtype == f32_attrs["forward_dtype"] == "float32"

    # auto on CPU is float32: the same store, reused (and stores from before the key keep their hash)
    auto = extract(
        load_config(write_config(project, {"extract": {"forward_dtype": "auto"}})), SEG, "val", progress=False
    )
    assert auto.chunks_computed == 0 and "forward_dtype" not in f32_attrs["config"]

    # another precision is never reused silently
    bf16_cfg = load_config(write_config(project, {"extract": {"forward_dtype": "bfloat16"}}))
    with pytest.raises(CacheMismatchError, match="differing keys: forward_dtype"):
        extract(bf16_cfg, SEG, "val", progress=False)

    import shutil

    shutil.rmtree(path)
    bf16 = extract(bf16_cfg, SEG, "val", progress=False)
    attrs = dict(zarr.open_group(path, mode="r").attrs)
    assert bf16.forward_dtype == attrs["forward_dtype"] == attrs["config"]["forward_dtype"] == "bfloat16"
    assert attrs["config_hash"] != f32_attrs["config_hash"]
    bf16_acts = zarr.open_array(path / "acts", mode="r")[:]
    assert not np.array_equal(bf16_acts, f32_acts)  # autocast really ran in bfloat16
    rel = np.linalg.norm(bf16_acts - f32_acts) / np.linalg.norm(f32_acts)
    assert 0 < rel < 0.05, rel


def test_many_workers_and_writer_threads_are_bit_identical_to_one_and_one(project):
    stores = {}
    for name, extra in {
        "1x1": {"num_workers": 1, "write_threads": 1},
        "4x3": {"num_workers": 4, "write_threads": 3},
    }.items():
        cfg = load_config(
            write_config(project, {"paths": {"cache": f"cache-{name}"}, "extract": {"batch_size": 2, **extra}})
        )
        report = extract(cfg, SEG, "train", progress=False)
        assert (report.num_workers, report.write_threads) == (extra["num_workers"], extra["write_threads"])
        stores[name] = cfg.store(SEG, "train")
    one, many = (zarr.open_group(stores[k], mode="r") for k in ("1x1", "4x3"))
    for key in ("acts", "done", "bad", "patch_label", "patch_purity", "pixel_label"):
        a, b = one[key][:], many[key][:]
        assert a.tobytes() == b.tobytes(), key
    assert open_cache(stores["4x3"]).attrs["complete"] is True


AUTO_SCRIPT = """
import json, os, sys
os.sched_setaffinity(0, {0})
from pipeline.config import load_config
from pipeline.config import CacheRef
from pipeline.extract import extract
cfg = load_config("config.yaml")
report = extract(cfg, CacheRef("dino", "seg"), "val", progress=False)
print(json.dumps({"threads": cfg.threads, "num_workers": cfg.extract.num_workers, "write_threads": cfg.extract.write_threads, "report_threads": report.threads}))
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs an affinity mask")
def test_auto_counts_follow_a_restricted_affinity_mask(project):
    write_config(project, {"threads": "auto", "extract": {"num_workers": "auto", "write_threads": "auto"}})
    proc = subprocess.run(
        [sys.executable, "-c", AUTO_SCRIPT],
        cwd=project,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    # device: cpu -> decode in the extracting process, one writer
    assert counts == {"threads": 1, "num_workers": 0, "write_threads": 1, "report_threads": 1}
    # SLURM's --cpus-per-task caps it as well
    from pipeline.config import resolve_auto_counts

    os.environ["SLURM_CPUS_PER_TASK"] = "1"
    try:
        assert resolve_auto_counts({"threads": "auto", "num_workers": "auto", "batch_size": 3}, "cpu") == {
            "threads": 1,
            "num_workers": 0,
            "batch_size": 3,
        }
    finally:
        del os.environ["SLURM_CPUS_PER_TASK"]


@pytest.mark.parametrize(("cpus", "workers", "writers"), [(1, 1, 1), (2, 1, 1), (8, 5, 2), (16, 11, 4), (64, 16, 4)])
def test_auto_counts_on_a_gpu_give_decoders_the_cores_writers_leave(monkeypatch, cpus, workers, writers):
    import pipeline.config as config
    import pipeline.cpus as cpus_module

    monkeypatch.setattr(cpus_module, "available_cpus", lambda: cpus)
    monkeypatch.setattr(config, "_gpu_device", lambda device: device == "cuda")
    auto = {"threads": "auto", "num_workers": "auto", "write_threads": "auto"}
    assert config.resolve_auto_counts(auto, "cuda") == {
        "threads": cpus,
        "num_workers": workers,
        "write_threads": writers,
    }
    assert config.resolve_auto_counts(auto, "cpu") == {"threads": cpus, "num_workers": 0, "write_threads": 1}
    # explicit counts are kept
    assert config.resolve_auto_counts({**auto, "num_workers": 3}, "cuda")["num_workers"] == 3


def test_stage_report_in_log_and_sentinel(project, caplog, tmp_path):
    import logging

    cfg = load_config(write_config(project, {"extract": {"num_workers": 1, "write_threads": 2}}))
    with caplog.at_level(logging.INFO, logger="pipeline.extract"):
        report = extract(cfg, SEG, "train", progress=False)
    stages = report.stages
    rates = {k.removesuffix("_img_s"): v for k, v in stages.items() if k.endswith("_img_s") and k != "extract_img_s"}
    assert set(rates) == {"decode", "forward", "write"} and all(v > 0 for v in rates.values())
    assert stages["bound_by"] == min(rates, key=rates.get)
    assert stages["extract_img_s"] == round(report.images_per_second, 2)
    line = next(r.getMessage() for r in caplog.records if "stages:" in r.getMessage())
    assert f"bounded by {stages['bound_by']}" in line and "decode" in line and "write" in line
    sentinel = tmp_path / "part.json"
    write_part_sentinel(sentinel, report)
    assert json.loads(sentinel.read_text())["stages"] == stages


AUTO_PLAN_SCRIPT = """
import json, sys
from pipeline.config import load_config
from pipeline.stages import rule_threads
cfg = load_config("config.yaml")
print(json.dumps({
    "torch": "torch" in sys.modules,
    "threads_auto": cfg.threads_auto,
    "extract": [cfg.extract.num_workers, cfg.extract.write_threads],
    "local": rule_threads(cfg, "sae-train"),
    "remote": rule_threads(cfg, "sae-train", remote=True),
    "remote_capped": rule_threads(cfg, "sae-train", remote=True, max_threads=3),
    "remote_light": rule_threads(cfg, "finalize", remote=True),
    "cpu": [cfg.extract.resolved("cpu").num_workers, cfg.extract.resolved("cpu").write_threads],
}))
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs an affinity mask")
def test_auto_counts_under_device_auto_are_left_to_the_job_and_planning_imports_no_torch(project):
    """`device: auto`: reading the config decides nothing that needs torch (is there a GPU?), so
    extraction's auto counts stay `auto` until the job resolves them for its device; `threads:
    auto` is this machine's CPUs locally, REMOTE_AUTO_THREADS on a cluster executor."""
    from pipeline.stages import REMOTE_AUTO_THREADS

    write_config(
        project, {"threads": "auto", "device": "auto", "extract": {"num_workers": "auto", "write_threads": "auto"}}
    )
    script = "import os; os.sched_setaffinity(0, {0})\n" + AUTO_PLAN_SCRIPT
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=project,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {
        "torch": False,
        "threads_auto": True,
        "extract": ["auto", "auto"],
        "local": 1,  # the affinity mask's one CPU
        "remote": REMOTE_AUTO_THREADS,
        "remote_capped": 3,
        "remote_light": 1,
        "cpu": [0, 1],
    }


def test_an_extraction_under_device_auto_resolves_its_auto_counts(project):
    cfg = load_config(
        write_config(project, {"device": "auto", "extract": {"num_workers": "auto", "write_threads": "auto"}})
    )
    assert (cfg.extract.num_workers, cfg.extract.write_threads) == ("auto", "auto")
    report = extract(cfg, SEG, "val", progress=False)  # CPU here: decode in-process, one writer
    assert (report.num_workers, report.write_threads) == (0, 1)
