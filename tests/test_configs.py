"""Every shipped config validates (the demo and the real experiments)."""

from __future__ import annotations

import pytest

from helpers import REPO
from pipeline.config import load_config

CONFIGS = [REPO / "config.yaml", *sorted((REPO / "configs").glob("*.yaml"))]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_is_valid(path):
    cfg = load_config(path)
    assert cfg.caches
