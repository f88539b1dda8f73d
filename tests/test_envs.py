"""envs/*.yaml list the same dependencies as pyproject.toml."""

from __future__ import annotations

import tomllib

import yaml

from helpers import REPO


def test_conda_env_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((REPO / "envs" / "pipeline.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    norm = lambda reqs: sorted(r.replace(" ", "").lower() for r in reqs)  # noqa: E731
    assert norm(pip) == norm(project)
