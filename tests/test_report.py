"""`snakemake --report report.zip` on a tiny project that built everything: the zip holds the
SAE gallery, the proposals and the manipulate figures, with captions that name the model."""

from __future__ import annotations

import shutil
import zipfile

import pytest
from test_manipulate import built_project

from helpers import snakemake


@pytest.mark.slow
def test_report_zip_has_gallery_proposals_and_manipulate_pages(tmp_path_factory, tiny_assets, tmp_path):
    built = built_project(tmp_path_factory, tiny_assets, full=True)
    folder = tmp_path / "project"
    shutil.copytree(built.folder, folder)  # the report run must not write into the shared project
    # Outputs were made in-process, not by Snakemake: mark them up to date so the report takes them as they are.
    proc = snakemake(folder, "--touch", "--cores", "1", "all", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = tmp_path / "report.zip"
    proc = snakemake(folder, "--report", str(report), "all", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with zipfile.ZipFile(report) as z:
        names = z.namelist()
        index = next(n for n in names if n.endswith("report.html"))
        html = z.read(index).decode("utf-8", errors="replace")
    stored = "\n".join(names)
    # the gallery and the proposals come as their index page plus every page and picture beside it
    assert "gallery.html" in html and "proposals.html" in html, (
        "gallery / proposals pages missing from the report index"
    )
    assert any(n.endswith("/latent_0.png") or "/latent_" in n for n in names), stored[:2000]
    for page in ("probabilities.png", "maps.png"):
        assert page in html, f"manipulate {page} missing from the report index"
    # captions say what was used and warn about random weights; no raw config dict in the intro
    assert "dataset" in html and "Random-init weights" in html
    assert "{'resources'" not in html and "{&#39;resources&#39;" not in html
