"""Test helpers: a tiny project (config, synthetic data, random-init models) in a temp folder.

Every test that needs a cache builds one with the real generators and loaders, small
enough to run in seconds on 2 cores; the builders live in :mod:`pipeline.testing` (shared
with the benchmarks), this file adds the CLI runner and the end-to-end chain config.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.testing import TINY_CONFIG, benchmark_project, build_demo_assets, deep_update, write_config  # noqa: F401  (the tests import them from here)

REPO = Path(__file__).resolve().parent.parent


def run_cli(args: list[str], cwd: Path, *, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m pipeline ARGS`` in ``cwd``; returns the finished process (stdout/stderr captured)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True, text=True, env=full_env
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"pipeline {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def snakemake(folder: Path, *args: str, timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """``snakemake ARGS`` with the repo's Snakefile in the project ``folder`` (its ``config.yaml``),
    run from there; returns the finished process (stdout/stderr captured), whatever its exit code."""
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(folder), *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


# Snakemake in a fresh interpreter that first calls ``register()`` of a test module (as a plugin's
# own registration would), then plans the workflow: nothing else knows what it registers.
_REGISTERING_DRIVER = (
    "import sys; sys.path.insert(0, {tests!r}); import {module}; {module}.register(); "
    "from snakemake.cli import main; sys.argv = ['snakemake', *sys.argv[1:]]; main()"
)


def plan_registered(module: str, folder: Path, *targets: str) -> subprocess.CompletedProcess:
    """``snakemake -n TARGETS`` of the project ``folder`` after ``tests/<module>.py``'s
    ``register()``; returns the finished process (stdout/stderr captured), whatever its exit code."""
    driver = _REGISTERING_DRIVER.format(tests=str(Path(__file__).parent), module=module)
    args = ["-n", "--snakefile", str(REPO / "Snakefile"), "--directory", str(folder), *targets]
    return subprocess.run(
        [sys.executable, "-c", driver, *args], cwd=folder, capture_output=True, text=True, timeout=600
    )


# The whole chain on the tiny data: one seg cache, a small probe sweep, a small SAE sweep,
# quantify. Used by the end-to-end workflow tests (local and SLURM).
CHAIN_OVERRIDES = {
    "caches": [{"model": "dino", "dataset": "seg"}],
    "extract": {"parts": 2},
    "probes": {
        "seg": {
            "cache": {"model": "dino", "dataset": "seg"},
            "lrs": [1.0e-3, 1.0e-2],
            "weight_decays": [1.0e-3],
            "epochs": 3,
            "batch_size": 256,
            "n_figure_images": 2,
        }
    },
    "sae": {
        "cache": {"model": "dino", "dataset": "seg"},
        "layer": -2,
        "n_tokens": 4096,
        "batch_size": 256,
        "lrs": [3.0e-3],
        "sparsity_coeffs": [1.0e-2],
        "exp_factors": [4],
        "lr_warmup_steps": 2,
        "sparsity_warmup_steps": 4,
        "top_k": 4,
        "gallery_latents": 4,
        "shuffle_buffer": 1024,
    },
    # tiny SAEs have few selective latents: let auto features use any latent that fires
    "quantify": {"scale": -2.0, "manual": {"1": 3}, "batch_size": 8, "max_firing_fraction": 1.0},
}


def chain_config(folder: Path) -> Path:
    """The tiny chain config in ``folder`` (no classification cache: quantify needs seg only)."""
    raw = deep_update(TINY_CONFIG, CHAIN_OVERRIDES)
    raw["demo"]["datasets"].pop("cls")
    raw["demo"]["models"].pop("clip")
    raw["models"].pop("clip")
    raw["datasets"].pop("cls")
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path
