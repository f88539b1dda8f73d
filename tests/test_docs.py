"""Every fenced ```python block in README.md and docs/*.md runs against a demo-layout cache.

The cache is the demo's (``cache/dinov2_demo/demo_seg/{train,val}.zarr``, the demo model's
blocks 4 and 5, 224 px images, a 16 x 16 patch grid) with fewer images, built once in-process
with the test helpers. Blocks of one file run in order in one namespace, in that project
folder, as a reader would paste them. A block preceded by ``<!-- docs-test: skip (why) -->``
is left out; only blocks that need a dask cluster may be.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from helpers import REPO, build_demo_assets

FENCE = re.compile(r"(?P<skip><!-- docs-test: skip \((?P<why>[^)]*)\) -->\n)?```python\n(?P<code>.*?)```", re.S)
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def python_blocks(path: Path) -> list[tuple[str, str | None]]:
    """``(code, why_skipped)`` for each fenced python block of ``path``."""
    return [(m["code"], m["why"]) for m in FENCE.finditer(path.read_text(encoding="utf-8"))]


@pytest.fixture(scope="module")
def demo_project(tmp_path_factory) -> Path:
    """The demo config with 8 train / 4 val images, its seg caches extracted and train stats written."""
    from pipeline.config import CacheRef, load_config
    from pipeline.extract import extract
    from pipeline.stats import run_stats

    folder = tmp_path_factory.mktemp("docs_demo")
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    raw["demo"]["datasets"] = {"demo_seg": {**raw["demo"]["datasets"]["demo_seg"], "n_train": 8, "n_val": 4}}
    raw["demo"]["models"] = {"dinov2_demo": raw["demo"]["models"]["dinov2_demo"]}
    raw["caches"] = [{"model": "dinov2_demo", "dataset": "demo_seg"}]
    raw["extract"].update(parts=1, num_workers=0, chunk_images=4, batch_size=4)
    for key in ("probes", "sae", "quantify", "dimred", "manipulate"):
        raw.pop(key, None)
    (folder / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    build_demo_assets(folder, raw)
    import os

    here = os.getcwd()
    os.chdir(folder)
    try:
        cfg = load_config("config.yaml")
        for split in ("train", "val"):
            extract(cfg, CacheRef("dinov2_demo", "demo_seg"), split, progress=False)
        run_stats(cfg, "dinov2_demo", "demo_seg", "train")
    finally:
        os.chdir(here)
    return folder


def test_docs_have_python_blocks_and_skip_only_cluster_ones():
    blocks = {p.name: python_blocks(p) for p in DOCS}
    assert len(blocks["README.md"]) >= 1 and len(blocks["cache.md"]) >= 3
    for name, found in blocks.items():
        for code, why in found:
            assert why is None or "distributed" in code, f"{name}: only blocks that need a dask cluster may be skipped"


@pytest.mark.slow  # extraction of 12 demo images at 224 px: ~1 min idle, 6 min on a loaded 2-core machine
@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_python_blocks_run_against_the_demo_cache(doc, demo_project, monkeypatch):
    blocks = [code for code, why in python_blocks(doc) if why is None]
    if not blocks:
        pytest.skip(f"{doc.name} has no python block")
    monkeypatch.chdir(demo_project)
    namespace: dict = {"__name__": "__docs__"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"{doc.name} python block {i + 1}", "exec"), namespace)
        except Exception as err:  # name the block, show its code
            raise AssertionError(
                f"{doc.name}, python block {i + 1} raised {type(err).__name__}: {err}\n{code}"
            ) from err
