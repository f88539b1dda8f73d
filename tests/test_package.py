"""The package as users get it: light imports, and a non-editable wheel that works on its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

HEAVY = ("torch", "transformers")


def _modules_after(code: str) -> list[str]:
    """The heavy modules imported by ``code`` in a fresh interpreter (repo on the path)."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_reading_a_config_imports_no_torch_or_transformers():
    assert _modules_after("from pipeline.config import load_config; load_config('config.yaml')") == []


def test_help_and_a_config_error_import_no_torch_or_transformers():
    code = (
        "import contextlib, io\n"
        "from pipeline.__main__ import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
        "with contextlib.redirect_stderr(io.StringIO()) as err:\n"
        "    rc = main(['stats', '--config', 'no-such.yaml', '--model', 'm', '--dataset', 'd', '--split', 'train'])\n"
        "assert rc == 2 and err.getvalue().startswith('error: no-such.yaml: config file not found'), err.getvalue()\n"
    )
    assert _modules_after(code) == []


def test_the_schema_lives_inside_the_package():
    import pipeline
    from pipeline.config import SCHEMA_PATH

    assert SCHEMA_PATH.is_file() and SCHEMA_PATH.parent.parent == Path(pipeline.__file__).parent
    assert not (REPO / "workflow" / "schemas").exists()  # one copy


@pytest.mark.slow
def test_a_wheel_install_runs_help_and_a_step_on_the_demo_config(tmp_path):
    """`pip install .` (not editable) into a fresh venv that sees the installed dependencies;
    outside the repository, `python -m pipeline --help` and `demo-data` on the demo config work."""
    wheels, venv, work = tmp_path / "wheels", tmp_path / "venv", tmp_path / "work"
    src = tmp_path / "src"  # a clean copy: the build must not leave build/ or *.egg-info in the repo
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".snakemake", "cache", "results", "resources", "logs", "build", "*.egg-info", "__pycache__"
        ),
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = lambda args, **kw: subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, **kw)  # noqa: E731

    built = run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(src)]
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = wheels.glob("vit_cache_pipeline-*.whl")
    made = run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)])
    assert made.returncode == 0, made.stderr
    py = str(venv / "bin" / "python")
    installed = run([py, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)])
    assert installed.returncode == 0, installed.stderr[-3000:]

    work.mkdir()
    shutil.copy(REPO / "config.yaml", work / "config.yaml")
    where = run(
        [py, "-c", "import pipeline, pipeline.config as c; print(pipeline.__file__); print(c.SCHEMA_PATH.is_file())"],
        cwd=work,
    )
    assert where.returncode == 0, where.stderr
    location, schema_found = where.stdout.split()
    assert Path(location).is_relative_to(venv) and schema_found == "True"
    helped = run([py, "-m", "pipeline", "--help"], cwd=work)
    assert helped.returncode == 0 and "demo-data" in helped.stdout and "quantify" in helped.stdout
    step = run([py, "-m", "pipeline", "demo-data", "--config", "config.yaml", "--name", "demo_cls"], cwd=work)
    assert step.returncode == 0, step.stderr[-3000:]
    images = [p for p in (work / "resources/data/demo_cls").rglob("*") if p.suffix in (".png", ".jpg")]
    assert len(images) == 5 * 40  # n_classes x n_per_class of the demo config
