"""Activation statistics with dask: equal to numpy on a tiny store; out-of-core on a big one."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from helpers import REPO, run_cli
from pipeline.cache import StoreLayout, create_or_open, finalize
from pipeline.cache.store import open_group
from pipeline.config import CacheRef, load_config
from pipeline.extract import extract
from pipeline.paths import stats_path
from pipeline.sae.scaling import scaling_from_stats
from pipeline.stats import StatsError, compute_stats, pooled, read_stats

SEG = CacheRef("dino", "seg")


def _numpy_stats(x_ND: np.ndarray) -> dict:
    x = x_ND.astype(np.float64)
    mean = x.mean(0)
    return {
        "n_tokens": x.shape[0],
        "mean": mean,
        "var": x.var(0),
        "mean_norm": np.linalg.norm(x, axis=1).mean(),
        "mean_sq_norm": (x * x).sum(1).mean(),
        "mean_sq_centred_norm": ((x - mean) ** 2).sum(1).mean(),
    }


def _check(found: dict, expected: dict, rtol: float = 1e-10) -> None:
    assert found["n_tokens"] == expected["n_tokens"]
    for key in ("mean", "var", "mean_norm", "mean_sq_norm", "mean_sq_centred_norm"):
        np.testing.assert_allclose(found[key], expected[key], rtol=rtol, atol=1e-12, err_msg=key)


def test_stats_equal_numpy_on_a_tiny_store(project):
    cfg = load_config("config.yaml")
    extract(cfg, SEG, "train", progress=False)
    store = cfg.store(SEG, "train")
    group = open_group(store, mode="r+")
    # mark two images bad: they must not count
    bad = np.zeros(group["bad"].shape, dtype=bool)
    bad[[3, 10]] = True
    group["bad"][:] = bad
    acts = group["acts"][:]
    valid = ~bad

    proc = run_cli(
        ["stats", "--config", "config.yaml", "--model", "dino", "--dataset", "seg", "--split", "train"], project
    )
    path = stats_path(cfg, CacheRef("dino", "seg"), "train")
    assert path.exists() and str(path) in proc.stdout
    stats = read_stats(path, config_hash=group.attrs["config_hash"])
    assert stats["config_hash"] == group.attrs["config_hash"] and stats["store"] == str(store)
    assert stats["n_valid_images"] == valid.sum() == 22
    assert sorted(stats["layers"]) == ["1", "2"]
    for li, block in enumerate((1, 2)):
        patches = acts[valid, li, 1:].reshape(-1, acts.shape[-1])
        cls = acts[valid, li, 0]
        _check(stats["layers"][str(block)]["patches"], _numpy_stats(patches))
        _check(stats["layers"][str(block)]["cls"], _numpy_stats(cls))

        # the SAE scaling: patches, and patches+cls pooled exactly
        scaling = scaling_from_stats(stats, block, "patches")
        ref = _numpy_stats(patches)
        np.testing.assert_allclose(scaling.scalar, np.sqrt(acts.shape[-1] / ref["mean_sq_centred_norm"]), rtol=1e-12)
        both = _numpy_stats(np.concatenate([patches, cls]))
        mean, centred, n = pooled(stats, block, ("patches", "cls"))
        assert n == both["n_tokens"]
        np.testing.assert_allclose(mean, both["mean"], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(centred, both["mean_sq_centred_norm"], rtol=1e-10)

    with pytest.raises(StatsError, match="config hash"):
        read_stats(path, config_hash="0" * 64)
    with pytest.raises(StatsError, match="block 7"):
        compute_stats(store, layers=[7])


def test_scheduler_without_distributed_is_a_clear_error(project, monkeypatch):
    cfg = load_config("config.yaml")
    extract(cfg, SEG, "val", progress=False)
    try:
        import distributed  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("distributed is installed here; the missing-package message cannot be shown")
    proc = run_cli(
        [
            "stats",
            "--config",
            "config.yaml",
            "--model",
            "dino",
            "--dataset",
            "seg",
            "--split",
            "val",
            "--scheduler",
            "tcp://127.0.0.1:8786",
        ],
        project,
        check=False,
    )
    assert proc.returncode == 2
    assert "distributed" in proc.stderr and "--scheduler" in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- out-of-core

N_IMAGES, T, D, CHUNK = 4096, 257, 256, 16  # float32 acts: 4096 · 257 · 256 · 4 B = 1.08 GB


def _chunk_values(start: int, stop: int) -> np.ndarray:
    """Deterministic, compressible float32 values [B, 1, T, D] (small integers + a per-dim offset)."""
    rng = np.random.default_rng(start)
    vals = rng.integers(-8, 8, size=(stop - start, 1, T, D)).astype(np.float32)
    return vals + np.arange(D, dtype=np.float32) / 16 + 100.0  # a large mean, as in residual streams


def _build_big_store(path) -> int:
    ids = tuple(f"img{i:05d}.png" for i in range(N_IMAGES))
    layout = StoreLayout(
        image_ids=ids,
        layers=(0,),
        token_kinds=("cls",) + ("patch",) * (T - 1),
        grid=(16, 16),
        d_model=D,
        dtype="float32",
        chunk_images=CHUNK,
        task="classification",
    )
    attrs = {
        "config_hash": "big" * 8,
        "n_prefix_tokens": 1,
        "n_blocks": 1,
        "grid": [16, 16],
        "task": "classification",
        "class_names": ["a"],
        "model_name": "synthetic",
        "dataset_name": "synthetic",
        "split": "train",
    }
    group = create_or_open(path, layout, attrs)
    for s in range(0, N_IMAGES, CHUNK):
        group["acts"][s : s + CHUNK] = _chunk_values(s, s + CHUNK)
    bad = np.zeros(N_IMAGES, dtype=bool)
    bad[::97] = True
    group["bad"][:] = bad
    group["done"][:] = True
    finalize(path)
    return N_IMAGES * T * D * 4


@pytest.mark.slow
def test_stats_out_of_core(tmp_path):
    store = tmp_path / "big.zarr"
    array_bytes = _build_big_store(store)
    out = tmp_path / "stats.json"
    script = tmp_path / "measure.py"
    script.write_text(
        textwrap.dedent(f"""
        import json, resource
        from pipeline.stats import compute_stats, write_stats
        stats = compute_stats({str(store)!r}, threads=2)
        write_stats(stats, {str(out)!r})
        hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")]
        print(json.dumps({{"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                          "vm_hwm_bytes": int(hwm[0].split()[1]) * 1024 if hwm else None}}))
    """)
    )
    # Linux keeps ru_maxrss across execve, and a child forked from this (big) pytest process starts
    # with the parent's high-water mark; a shell in between forks the measured process from a small one.
    proc = subprocess.run(
        ["/bin/sh", "-c", '"$0" "$1"; exit $?', sys.executable, str(script)], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    peak = measured["peak_rss_bytes"]
    print(
        f"\nacts {array_bytes / 2**20:.0f} MiB; stats subprocess peak RSS {peak / 2**20:.0f} MiB "
        f"(ratio {array_bytes / peak:.1f}x; VmHWM {measured['vm_hwm_bytes'] / 2**20:.0f} MiB)"
    )
    assert peak < array_bytes / 3, f"peak RSS {peak / 2**20:.0f} MiB is not < {array_bytes / 3 / 2**20:.0f} MiB"

    # reference: chunked numpy, float64, plain (unshifted) sums
    valid = ~open_group(store)["bad"][:]
    sums = {k: [0, np.zeros(D), np.zeros(D), 0.0] for k in ("patches", "cls")}
    for s in range(0, N_IMAGES, CHUNK):
        x = _chunk_values(s, s + CHUNK)[valid[s : s + CHUNK], 0].astype(np.float64)
        for kind, rows in (("patches", x[:, 1:].reshape(-1, D)), ("cls", x[:, 0])):
            acc = sums[kind]
            acc[0] += rows.shape[0]
            acc[1] += rows.sum(0)
            acc[2] += (rows * rows).sum(0)
            acc[3] += np.linalg.norm(rows, axis=1).sum()
    stats = json.loads(out.read_text())
    assert stats["n_valid_images"] == valid.sum()
    for kind, (n, s1, s2, snorm) in sums.items():
        mean = s1 / n
        var = s2 / n - mean**2
        found = stats["layers"]["0"][kind]
        _check(
            found,
            {
                "n_tokens": n,
                "mean": mean,
                "var": var,
                "mean_norm": snorm / n,
                "mean_sq_norm": (s2 / n).sum(),
                "mean_sq_centred_norm": var.sum(),
            },
            rtol=1e-8,
        )
