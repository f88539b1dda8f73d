"""The Snakemake workflow: dry runs of the repo's own config and a real run of a tiny one."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO, write_config

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def _snakemake(args: list[str], cwd, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(SNAKEMAKE + args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_dry_run_of_the_cache_target_on_the_demo_config():
    proc = _snakemake(["-n", "cache"], REPO)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    for rule in ("demo_dataset", "demo_model", "extract_part", "finalize_cache"):
        assert rule in out, f"{rule} missing from the plan:\n{out}"


HEAVY = ("torch", "transformers", "zarr", "altair", "xarray", "dask")


def test_planning_imports_no_torch_transformers_zarr_or_altair(tmp_path):
    """A dry run of everything the demo config defines (every section: caches, probes, SAE,
    dimred, quantify, manipulate) imports none of the heavy libraries: they are the jobs'."""
    (tmp_path / "config.yaml").write_text((REPO / "config.yaml").read_text())
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile"),
         "--directory", str(tmp_path), "--cores", "8"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rule manipulate" in proc.stdout and "rule quantify" in proc.stdout  # the whole plan was built
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "pipeline.layout" in imported and "pipeline.plan" in imported  # the workflow's own modules were timed
    heavy = sorted(m for m in imported if m.split(".")[0] in HEAVY)
    assert not heavy, f"planning imported {heavy[:10]}"


def test_schema_validation_names_the_key(tmp_path):
    write_config(tmp_path, {"extract": {"chunk_images": 0}})
    proc = _snakemake(["-n", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path), "cache"], tmp_path)
    assert proc.returncode != 0
    assert "chunk_images" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_real_run_builds_finalized_caches_in_parts(tmp_path):
    write_config(tmp_path, {"caches": [{"model": "dino", "dataset": "seg"}], "extract": {"parts": 2}})
    proc = _snakemake(
        ["--cores", "2", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path), "cache"], tmp_path
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for split, n in (("train", 24), ("val", 12)):
        parts = sorted((tmp_path / "cache" / "dino" / "seg" / f"{split}.parts").glob("*.json"))
        assert [p.name for p in parts] == ["0-of-2.json", "1-of-2.json"]
        computed = sum(json.loads(p.read_text())["images_computed"] for p in parts)
        assert computed == n  # the two parts together did every image once
        summary = json.loads((tmp_path / "cache" / "dino" / "seg" / f"{split}.complete.json").read_text())
        assert summary["complete"] is True and summary["n_images"] == n

    import xarray as xr

    ds = xr.open_zarr(tmp_path / "cache" / "dino" / "seg" / "train.zarr")
    assert ds.acts.shape == (24, 2, 17, 32) and not np.isnan(ds.acts.values).any()
    # a second run has nothing to do
    again = _snakemake(
        ["--cores", "2", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path), "cache"], tmp_path
    )
    assert "Nothing to be done" in again.stdout + again.stderr
    # nor with the same config file passed explicitly (the rules' params hold no config path)
    again = _snakemake(
        [
            "-n",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(tmp_path),
            "cache",
            "--configfile",
            "config.yaml",
        ],
        tmp_path,
    )
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.slow
def test_whole_chain_to_quantitative_csv(tmp_path):
    """`snakemake results/quantitative.csv` from nothing: demo data and models, extraction in
    parts, statistics, probe sweep, SAE sweep, latent stats, class F1, quantification."""
    import pandas as pd

    from helpers import chain_config

    chain_config(tmp_path)
    proc = _snakemake(
        [
            "--cores",
            "2",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(tmp_path),
            "results/quantitative.csv",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = pd.read_csv(tmp_path / "results" / "quantitative.csv")
    assert summary["method"].tolist() == ["random_vector", "random_feature", "auto_feature", "manual_feature"]
    assert (
        (summary["block"] == 1).all()
        and (summary["layer"] == -2).all()
        and (summary["scale"] == -2.0).all()
        and summary["random_weights"].all()
    )
    auto = pd.read_csv(tmp_path / "results" / "quantitative" / "auto_feature.csv")
    assert (
        len(auto)
        == summary.loc[summary.method == "auto_feature", "n_classes"].item()
        + summary.loc[summary.method == "auto_feature", "n_skipped"].item()
    )
    rated = auto[auto.status == "evaluated"]
    assert len(rated) >= 1
    # the per-class table and the summary agree
    assert summary.loc[summary.method == "auto_feature", "target_change_rate_mean_pct"].item() == pytest.approx(
        rated.target_change_rate_pct.mean(), abs=1e-3
    )
    manual = pd.read_csv(tmp_path / "results" / "quantitative" / "manual_feature.csv", dtype={"latent": str})
    assert manual.loc[manual.class_id == 1, "latent"].tolist() in (["3"], [])  # class 1 if predicted at all
    assert (manual.status == "skipped").sum() == summary.loc[summary.method == "manual_feature", "n_skipped"].item()
    for ext in ("html", "png", "svg"):
        assert (tmp_path / "results" / "quantitative" / f"chart.{ext}").stat().st_size > 1000

    # the Snakemake report bundles the charts and tables with their captions
    report = tmp_path / "report.html"
    proc = _snakemake(
        [
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--report",
            str(report),
            "results/quantitative.csv",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = report.read_text(errors="replace")
    assert "interventions" in text and "percentage of target-class patches" in text


def test_lint_is_clean():
    proc = _snakemake(["--lint"], REPO)
    assert (
        proc.returncode == 0 and "Congratulations, your workflow is in a good condition" in proc.stdout + proc.stderr
    ), proc.stdout[-3000:]
