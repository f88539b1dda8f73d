"""Extraction as real processes: SIGKILL at several points then resume, and parallel parts.

Both compare the final ``acts`` with an uninterrupted serial run, exactly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from helpers import REPO, run_cli, write_config

pytestmark = pytest.mark.slow

# 48 images in chunks of 4: 12 chunks, enough that a kill lands mid-way.
BIG = {"demo": {"datasets": {"seg": {"n_train": 48}}}, "extract": {"chunk_images": 4, "batch_size": 2}}
ARGS = ["extract", "--model", "dino", "--dataset", "seg", "--split", "train", "--no-progress"]


@pytest.fixture
def big_project(tmp_path, monkeypatch):
    from helpers import TINY_CONFIG, build_demo_assets, deep_update

    raw = deep_update(TINY_CONFIG, BIG)
    build_demo_assets(tmp_path, raw)
    write_config(tmp_path, BIG)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _done_chunks(store: Path) -> list[int]:
    """Indices of the chunks whose done flags are set (read from zarr; a missing chunk file means not done)."""
    if not (store / "zarr.json").exists():
        return []
    done = zarr.open_array(store / "done", mode="r")[:]
    return [i // 4 for i in range(0, done.size, 4) if done[i : i + 4].all()]


def _chunk_mtimes(store: Path) -> dict[str, int]:
    return {str(p.relative_to(store)): p.stat().st_mtime_ns for p in (store / "acts" / "c").rglob("*") if p.is_file()}


def _start(cwd: Path, extra: list[str] = ()) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *ARGS, *extra],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_when(proc: subprocess.Popen, condition, timeout: float = 120) -> bool:
    """SIGKILL ``proc`` as soon as ``condition()`` holds; False if it finished first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if condition():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.002)
    proc.kill()
    raise AssertionError("extraction neither finished nor reached the kill point in time")


def _final_acts(store: Path) -> np.ndarray:
    return zarr.open_array(store / "acts", mode="r")[:]


def _uninterrupted_run(project: Path, folder: Path) -> np.ndarray:
    """acts of one uninterrupted serial extraction in ``folder`` (same data, same config)."""
    folder.mkdir()
    os.symlink(project / "resources", folder / "resources")
    (folder / "config.yaml").write_text((project / "config.yaml").read_text())
    run_cli(ARGS, folder)
    return _final_acts(folder / "cache" / "dino" / "seg" / "train.zarr")


@pytest.mark.parametrize(
    "concurrency", [{}, {"num_workers": 2, "write_threads": 3}], ids=["default", "2-workers-3-writers"]
)
def test_kill_minus_nine_then_resume_equals_uninterrupted(big_project, tmp_path, concurrency):
    from helpers import deep_update

    store = big_project / "cache" / "dino" / "seg" / "train.zarr"

    expected = _uninterrupted_run(big_project, tmp_path / "reference")  # the tiny config: decoding in-process
    write_config(big_project, deep_update(BIG, {"extract": concurrency}))

    kill_points = [
        ("store created", lambda: (store / "zarr.json").exists()),
        ("one more chunk done", None),
        ("half the chunks done", lambda: len(_done_chunks(store)) >= 6),
    ]
    kills = 0
    for name, condition in kill_points:
        if condition is None:
            before = len(_done_chunks(store))

            def condition(before=before):
                return len(_done_chunks(store)) > before

        done_before = _done_chunks(store)
        mtimes_before = _chunk_mtimes(store) if done_before else {}
        proc = _start(big_project)
        killed = _kill_when(proc, condition)
        kills += killed
        print(f"kill point {name!r}: killed={killed}, chunks done after: {len(_done_chunks(store))}/12")
        # chunks done before this run were not recomputed (their files were not rewritten)
        after = _chunk_mtimes(store)
        for key, mtime in mtimes_before.items():
            if int(key.split("/")[2]) in done_before:  # acts/c/<image chunk>/<layer>/0/0
                assert after[key] == mtime, f"finished chunk file {key} was rewritten"
    assert kills >= 2, "the kills should land before the run finishes"

    done_before = _done_chunks(store)
    proc = run_cli(ARGS, big_project)
    report = __import__("json").loads(proc.stdout)
    assert report["chunks_skipped"] == len(done_before)
    assert report["chunks_computed"] == 12 - len(done_before)
    np.testing.assert_array_equal(_final_acts(store), expected)
    assert zarr.open_group(store, mode="r").attrs["complete"] is True


def test_three_parallel_parts_equal_a_serial_run(big_project, tmp_path):
    procs = [_start(big_project, ["--part", str(i), "--of", "3"]) for i in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    run_cli(["finalize", "--model", "dino", "--dataset", "seg", "--split", "train"], big_project)
    parallel = _final_acts(big_project / "cache" / "dino" / "seg" / "train.zarr")

    serial = _uninterrupted_run(big_project, tmp_path / "serial")
    assert not np.isnan(parallel).any()
    np.testing.assert_array_equal(parallel, serial)


def test_kill_minus_nine_mid_sharded_extraction_then_resume_equals_unsharded(big_project, tmp_path):
    """``extract.shard_images: 8`` (6 shards of 2 chunks): killed while shards are being written,
    resumed, the store holds the values of an uninterrupted unsharded run and verifies clean."""
    from helpers import deep_update
    from pipeline.cache.checksums import scan

    store = big_project / "cache" / "dino" / "seg" / "train.zarr"
    expected = _uninterrupted_run(big_project, tmp_path / "reference")
    write_config(big_project, deep_update(BIG, {"extract": {"shard_images": 8, "write_threads": 2}}))
    kills = 0
    for target in (1, 3):  # shards done when the kill lands (a shard is two done chunks)
        proc = _start(big_project)
        kills += _kill_when(proc, lambda target=target: len(_done_chunks(store)) >= 2 * target)
        assert len(_done_chunks(store)) % 2 == 0  # whole shards only
    assert kills >= 1, "a kill should land before the run finishes"
    done_before = len(_done_chunks(store)) // 2
    report = __import__("json").loads(run_cli(ARGS, big_project).stdout)
    assert (report["chunks_skipped"], report["chunks_computed"]) == (done_before, 6 - done_before)
    np.testing.assert_array_equal(_final_acts(store), expected)
    assert not scan(store).bad and zarr.open_group(store, mode="r").attrs["complete"] is True
