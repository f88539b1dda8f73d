"""A probe kind is one record in pipeline.probe_kinds plus the module that fits it (issue 14).

A throwaway third kind (``toy``, below: a section dataclass, a schema node and ``run_toy``,
which writes the files its record declares) is registered at test time, and nothing else is
edited: the config accepts and checks ``probes.toy`` with the node's defaults,
``python -m pipeline`` has a ``probe-toy`` step that writes what the layout lists and records
its provenance, and the Snakemake workflow plans a ``probe_toy`` rule. The probe-key checks
themselves (an unknown key, an unknown kind) are checked for the real kinds too.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import plan_registered, write_config
from pipeline import layout, provenance
from pipeline.__main__ import main as cli_main
from pipeline.config import CacheRef, ConfigError, load_config, schema_default
from pipeline.config_schema import default
from pipeline.probe_kinds import PROBE_KINDS, ProbeKind, configured, probe_section
from pipeline.stages import STAGES

TOY_SCHEMA: dict[str, Any] = yaml.safe_load("""
type: object
additionalProperties: false
required: [cache]
properties:
  cache: {$ref: "#/$defs/cache_ref"}
  layer: {type: integer, default: -1}
  scale: {type: number, exclusiveMinimum: 0, default: 2.5}
""")


@dataclass(frozen=True)
class ToyProbeConfig:
    cache: CacheRef
    layer: int = default("layer", TOY_SCHEMA)
    scale: float = default("scale", TOY_SCHEMA)


def run_toy(cfg, *, out_dir=None, progress=True, ctx=None) -> dict:
    """The toy kind's fit: write every file its record declares, ``best.json`` with provenance."""
    out = Path(out_dir) if out_dir is not None else layout.probe_dir(cfg, "toy")
    out.mkdir(parents=True, exist_ok=True)
    for name in layout.probe_files("toy"):
        (out / name).write_text("toy\n")
    section = probe_section(cfg, "toy")
    best = {"scale": section.scale, "meta": {"provenance": provenance.record(cfg, "probe-toy")}}
    (out / "best.json").write_text(json.dumps(best))
    return {"scale": section.scale}


TOY = ProbeKind(
    "toy",
    "segmentation",
    ToyProbeConfig,
    TOY_SCHEMA,
    "test_probe_kinds:run_toy",
    files=("toy.txt",),
    help="toy probe registered by tests/test_probe_kinds.py (config: probes.toy)",
    reads="nothing",
)
TOY_SECTION = {"cache": {"model": "dino", "dataset": "seg"}}


def register() -> None:
    """Add the toy kind to the registry (the only change a new kind makes outside its fit module)."""
    PROBE_KINDS["toy"] = TOY


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(PROBE_KINDS, "toy", TOY)
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # run_toy's module, for run_kind's import


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_config_accepts_and_checks_the_registered_kind(toy, tmp_path):
    path = write_config(tmp_path, {"probes": {"toy": TOY_SECTION}})
    cfg = load_config(path)
    assert [pk.name for pk in configured(cfg)] == ["toy"]
    assert probe_section(cfg, "toy") == ToyProbeConfig(CacheRef("dino", "seg"), layer=-1, scale=2.5)
    assert schema_default("probes/toy/scale") == 2.5  # the kind's node is part of the config schema

    write_config(tmp_path, {"probes": {"toy": {**TOY_SECTION, "scale": 0}}})
    with pytest.raises(ConfigError, match=r"config\.yaml: key probes/toy/scale: 0 is less than or equal"):
        load_config(path)
    write_config(tmp_path, {"probes": {"toy": {**TOY_SECTION, "scael": 1.0}}})
    with pytest.raises(ConfigError, match=r"config\.yaml: key probes/toy: .*'scael' was unexpected"):
        load_config(path)
    write_config(tmp_path, {"probes": {"toy": {"cache": {"model": "clip", "dataset": "cls"}}}})
    with pytest.raises(ConfigError, match=r"key probes/toy/cache/dataset: 'cls' is a classification dataset"):
        load_config(path)


def test_an_unregistered_kind_is_refused(tmp_path):
    path = write_config(tmp_path, {"probes": {"toy": TOY_SECTION}})
    with pytest.raises(ConfigError, match=r"config\.yaml: key probes: .*'toy' was unexpected"):
        load_config(path)


@pytest.mark.parametrize(
    "probes, where",
    [
        ({"seg": {**TOY_SECTION, "bogus": 1}}, r"key probes/seg: .*'bogus' was unexpected"),
        ({"foo": TOY_SECTION}, r"key probes: .*'foo' was unexpected"),
    ],
    ids=["unknown-key", "unknown-kind"],
)
def test_bad_probe_keys_are_one_error_line(tmp_path, capsys, probes, where):
    path = write_config(tmp_path, {"probes": probes})
    assert cli_main(["probe-seg", "--config", str(path)]) == 2
    line = _error_line(capsys)
    assert str(path) in line and re.search(where, line), line


def test_the_step_writes_what_the_layout_lists(toy, tmp_path, capsys, monkeypatch):
    path = write_config(tmp_path, {"probes": {"toy": TOY_SECTION}})
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    assert "probe-toy" in capsys.readouterr().out

    cfg = load_config(path)
    stage = STAGES["probe-toy"]
    assert stage.reads == ("probes.toy",) and stage.gpu and stage.configured(cfg)
    declared = stage.outputs(cfg).declared()
    folder = Path("results/probes/toy/dino/seg")  # relative, as the config says
    assert sorted(declared) == sorted(folder / n for n in (*layout.PROBE_COMMON_FILES, "toy.txt"))

    monkeypatch.chdir(tmp_path)  # the config's paths are relative to the project
    assert cli_main(["probe-toy", "--config", str(path), "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out) == {"scale": 2.5}
    assert all(Path(p).is_file() for p in declared)
    provenance.check_output(cfg, "probe-toy")  # recorded with the config it was made from
    write_config(tmp_path, {"probes": {"toy": {**TOY_SECTION, "scale": 3.0}}})
    with pytest.raises(provenance.StaleInputError, match=r"probes\.toy\.scale \(2\.5 -> 3\.0\)"):
        provenance.check_output(load_config(path), "probe-toy")


def _plan(tmp_path: Path, *targets: str) -> subprocess.CompletedProcess:
    return plan_registered("test_probe_kinds", tmp_path, *targets)


def test_the_workflow_plans_a_rule_for_the_registered_kind(tmp_path):
    write_config(tmp_path, {"probes": {"toy": TOY_SECTION}})
    proc = _plan(tmp_path, "probes")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "probe_toy" in out and "results/probes/toy/dino/seg/toy.txt" in out, out

    write_config(tmp_path, {"probes": {"toy": {**TOY_SECTION, "scael": 1.0}}})
    proc = _plan(tmp_path, "probes")
    assert proc.returncode != 0
    assert "probes/toy" in proc.stdout + proc.stderr and "scael" in proc.stdout + proc.stderr


def test_the_slurm_profiles_give_the_registered_kind_its_gpu_resources(toy):
    from test_slurm import PROJECT_PROFILE, TEST_PROFILE, rendered

    project = rendered(PROJECT_PROFILE, PIPELINE_SLURM_GPU_PARTITION="gpuq", PIPELINE_SLURM_GPU_MODEL="a100")
    assert project["set-resources"]["probe_toy"] == {
        "gpu": 1,
        "gpu_model": "a100",
        "slurm_partition": "gpuq",
        "mem_mb": "16000 * attempt",
        "runtime": "240 * attempt",
    }
    assert rendered(TEST_PROFILE)["set-resources"]["probe_toy"]["gpu"] == 0  # the test cluster has no GPU
