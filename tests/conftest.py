"""Shared fixtures: the tiny project's synthetic data and random-init models, built once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers import build_demo_assets, write_config


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_assets")
    build_demo_assets(folder)
    return folder


@pytest.fixture
def project(tmp_path, tiny_assets, monkeypatch) -> Path:
    """A temp folder with the tiny config and a copy of the tiny assets; the cwd for the test."""
    shutil.copytree(tiny_assets / "resources", tmp_path / "resources")
    write_config(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path
