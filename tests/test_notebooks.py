"""The notebooks run top to bottom on caches built here.

* ``notebooks/inspect_cache.ipynb`` executed with nbclient on a tiny store (one seg split)
  pointed to by ``CACHE_STORE``; any cell error fails the test.
* ``notebooks/manipulate.py`` (the marimo app) exported to HTML with ``marimo export html``,
  which runs every cell, against the tiny seg chain of ``test_manipulate.py``: the page holds
  the prediction readout. (``test_browser.py`` drives the served app.)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

from test_manipulate import built_project

from helpers import REPO
from pipeline.config import CacheRef, load_config


def test_inspect_cache_notebook_runs_on_a_fresh_cache(project, tmp_path, monkeypatch):
    import nbclient
    import nbformat

    from pipeline.extract import extract

    cfg = load_config("config.yaml")
    extract(cfg, CacheRef("dino", "seg"), "val", progress=False)
    store = project / "cache" / "dino" / "seg" / "val.zarr"
    nb = nbformat.read(REPO / "notebooks" / "inspect_cache.ipynb", as_version=4)
    monkeypatch.setenv("CACHE_STORE", str(store))  # the kernel inherits the environment
    t0 = time.perf_counter()
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError naming the cell on any error
    seconds = time.perf_counter() - t0
    text = "\n".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    )
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    print(f"notebook executed in {seconds:.1f} s")
    assert "12 of 12 images done, 0 bad, 12 usable" in text  # the tiny val split, `done` read
    assert "layers (block numbers): [1, 2]" in text
    assert "'patch': 16, 'cls': 1" in text
    assert "dask.array" in text  # the statistics were lazy until .compute()
    charts = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "application/vnd.vegalite.v5+json" in o.get("data", {})
        or "vegaEmbed" in str(o.get("data", {}).get("text/html", ""))
    ]
    assert len(charts) >= 2  # the image / patch-norm / patch-label panel and the per-layer statistics


def test_marimo_app_runs_every_cell(tmp_path_factory, tiny_assets, tmp_path):
    built = built_project(tmp_path_factory, tiny_assets)
    out = tmp_path / "manipulate.html"
    app = tmp_path / "manipulate.py"  # a copy: marimo writes a __marimo__/ session cache next to the notebook
    shutil.copy(REPO / "notebooks" / "manipulate.py", app)
    proc = subprocess.run(
        [sys.executable, "-m", "marimo", "export", "html", str(app), "-o", str(out)],
        cwd=built.folder,
        env={**os.environ, "MANIPULATE_CONFIG": "config.yaml", "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    html = out.read_text()
    readout = re.search(r"patches per predicted class: [^<\\]*", html)
    assert readout, "the app's prediction readout is not in the exported page"
    assert "changed 0/16" in readout.group(0)  # nothing moved yet
