"""Provenance: which config keys each step depends on, what its outputs record, hand-run steps
refusing stale inputs, the workflow rerunning exactly the affected rules, and paths with spaces."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import REPO, TINY_CONFIG, build_demo_assets, chain_config, deep_update, run_cli, write_config

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def _cfg(overrides: dict | None = None):
    from pipeline.config import config_from_dict

    return config_from_dict(deep_update(TINY_CONFIG, overrides or {}))


# ---- the table: each step's hash moves with exactly its keys ----------------------------------------
PROBE = {
    "probes": {
        "seg": {"cache": {"model": "dino", "dataset": "seg"}, "lrs": [1.0e-3], "weight_decays": [1.0e-3], "epochs": 1}
    }
}
SAE = {"sae": {"cache": {"model": "dino", "dataset": "seg"}, "layer": -2, "n_tokens": 1024}}
QUANTIFY = {"quantify": {"scale": -2.0}}
FULL = deep_update(deep_update(PROBE, SAE), QUANTIFY)


@pytest.mark.parametrize(
    "edit, changed",
    [
        (
            {"extract": {"dtype": "float16"}},
            {"extract", "stats", "probe-seg", "sae-train", "sae-latents", "class-f1", "quantify"},
        ),
        ({"extract": {"batch_size": 7, "num_workers": 2}}, set()),  # speed only: no rerun
        (
            {"extract": {"compression": "none"}},  # another store (its files), identical numbers
            {"extract", "stats", "probe-seg", "sae-train", "sae-latents", "class-f1", "quantify"},
        ),
        ({"extract": {"compression": "lz4"}}, set()),  # the default, written out
        ({"extract": {"shard_images": 0, "decode": "cpu"}}, set()),  # defaults: the hashes of before the keys
        (
            {"extract": {"shard_images": 4}},  # another layout, identical numbers
            {"extract", "stats", "probe-seg", "sae-train", "sae-latents", "class-f1", "quantify"},
        ),
        (
            {"extract": {"decode": "cuda"}},  # other pixels
            {"extract", "stats", "probe-seg", "sae-train", "sae-latents", "class-f1", "quantify"},
        ),
        (
            {"models": {"dino": {"preprocess": {"resize": 64}}}},
            {"extract", "stats", "probe-seg", "sae-train", "sae-latents", "class-f1", "quantify"},
        ),
        ({"probes": {"seg": {"lrs": [1.0e-2]}}}, {"probe-seg", "quantify"}),
        ({"sae": {"exp_factors": [8]}}, {"sae-train", "sae-latents", "class-f1", "quantify"}),
        ({"sae": {"gallery_latents": 3}}, set()),  # the gallery is not among these steps
        ({"quantify": {"scale": -1.0}}, {"quantify"}),
        ({"quantify": {"thresholds": [0.0]}}, {"class-f1", "quantify"}),
        ({"threads": 1, "device": "cuda", "paths": {"results": "elsewhere"}}, set()),
    ],
)
def test_step_hash_changes_with_exactly_the_keys_the_step_reads(edit, changed):
    from pipeline.provenance import step_hash

    steps = {
        "extract": {"model": "dino", "dataset": "seg", "split": "train"},
        "stats": {"model": "dino", "dataset": "seg", "split": "train"},
        "probe-seg": {},
        "sae-train": {},
        "sae-latents": {},
        "class-f1": {},
        "quantify": {},
    }
    before, after = _cfg(FULL), _cfg(deep_update(FULL, edit))
    moved = {s for s, keys in steps.items() if step_hash(before, s, **keys) != step_hash(after, s, **keys)}
    assert moved == changed


def test_record_lists_the_keys_and_a_default_equals_its_explicit_value():
    from pipeline.provenance import record

    rec = record(_cfg(FULL), "probe-seg")
    assert rec["config"]["probes.seg.lrs"] == [1.0e-3]
    assert rec["config"]["extract.dtype"] == "float32"  # upstream keys ride along
    assert rec["config"]["models.dino.preprocess.crop"] == 56
    assert not any(k.startswith(("sae.", "quantify.", "paths.")) for k in rec["config"])
    explicit = deep_update(FULL, {"probes": {"seg": {"min_purity": 0.5, "seed": 0}}})  # the defaults, written out
    assert record(_cfg(explicit), "probe-seg")["hash"] == rec["hash"]


# ---- plan-time checks: quantify and layers fail before any job --------------------------------------
@pytest.mark.parametrize(
    "edit, match",
    [
        ({**PROBE, **QUANTIFY}, r"key quantify: needs both an `sae` and a `probes: seg` section"),
        (deep_update(FULL, {"probes": {"seg": {"layer": -2}}}), r"key probes/seg/layer must be -1"),
        (deep_update(FULL, {"sae": {"layer": 0}}), r"key sae/layer: 0 is not cached; add it to extract.layers"),
        (deep_update(FULL, {"sae": {"layer": 5}}), r"key sae/layer: 5 is not a block of dino \(3 blocks\)"),
    ],
)
def test_plan_checks_fail_at_dag_build_time(edit, match):
    from pipeline.config import ConfigError
    from pipeline.plan import check_plan

    with pytest.raises(ConfigError, match=match):
        check_plan(_cfg(edit))


def test_plan_check_compares_layers_as_block_numbers():
    from pipeline.plan import check_plan

    check_plan(_cfg(deep_update(FULL, {"sae": {"layer": 1}})))  # block 1 = layer -2 of a 3-block model: cached


def test_quantify_and_the_workflow_refuse_a_config_without_a_quantify_section(tmp_path):
    from pipeline.config import ConfigError
    from pipeline.plan import require_quantify

    with pytest.raises(ConfigError, match="key quantify: missing"):
        require_quantify(_cfg(deep_update(PROBE, SAE)))
    # SAE and probe on different caches: an error naming both keys when the workflow is planned
    write_config(
        tmp_path,
        deep_update(
            FULL,
            {
                "caches": [{"model": "dino", "dataset": "seg"}, {"model": "clip", "dataset": "seg"}],
                "probes": {"seg": {"cache": {"model": "clip", "dataset": "seg"}}},
            },
        ),
    )
    proc = subprocess.run(
        SNAKEMAKE + ["-n", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert (
        "key sae/cache and probes/seg/cache must name the same (model, dataset) for quantify"
        in proc.stdout + proc.stderr
    )


# ---- a hand-run step refuses stale upstream outputs -------------------------------------------------
@pytest.fixture(scope="module")
def probed(tmp_path_factory, tiny_assets):
    """The tiny seg cache extracted and a one-member probe fitted, by the CLI."""
    import shutil

    folder = tmp_path_factory.mktemp("stale")
    shutil.copytree(tiny_assets / "resources", folder / "resources")
    over = deep_update(FULL, {"caches": [{"model": "dino", "dataset": "seg"}]})
    write_config(folder, over)
    for split in ("train", "val"):
        run_cli(["extract", "--model", "dino", "--dataset", "seg", "--split", split, "--no-progress"], folder)
    run_cli(["probe-seg", "--no-progress"], folder)
    return folder, over


def test_hand_run_step_refuses_a_probe_made_from_another_config(probed):
    folder, over = probed
    best = folder / "results/probes/seg/dino/seg/best.json"
    recorded = json.loads(best.read_text())["meta"]["provenance"]
    assert recorded["step"] == "probe-seg" and recorded["config"]["probes.seg.lrs"] == [1.0e-3]
    write_config(folder, deep_update(over, {"probes": {"seg": {"lrs": [1.0e-2]}}}), name="edited.yaml")
    proc = run_cli(["quantify", "--config", "edited.yaml", "--no-progress"], folder, check=False)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert str(Path("results/probes/seg/dino/seg/best.json")) in lines[0]
    assert "probes.seg.lrs ([0.001] -> [0.01])" in lines[0]
    assert json.loads(best.read_text())["meta"]["provenance"] == recorded  # nothing overwritten


def test_hand_run_step_refuses_a_store_extracted_with_another_dtype(probed):
    folder, over = probed
    write_config(folder, deep_update(over, {"extract": {"dtype": "float16"}}), name="f16.yaml")
    proc = run_cli(["probe-seg", "--config", "f16.yaml", "--no-progress"], folder, check=False)
    assert proc.returncode == 2
    assert re.fullmatch(
        r"error: cache/dino/seg/train\.zarr: extracted with another config .*extract\.dtype \(\"float32\" -> \"float16\"\).*\n",
        proc.stderr,
    ), proc.stderr
    # the same config as the store: the check lets it through (stats reads only the store)
    ok = run_cli(["stats", "--model", "dino", "--dataset", "seg", "--split", "train"], folder)
    stats = json.loads((folder / "results/stats/dino/seg/train.json").read_text())
    assert stats["provenance"]["step"] == "stats" and ok.returncode == 0


# ---- the workflow: exactly the affected rules rerun -------------------------------------------------
def _planned(folder: Path, *extra: str) -> dict[str, int]:
    """Rule -> job count of `snakemake -n` (the default target) in ``folder``."""
    proc = subprocess.run(
        SNAKEMAKE + ["-n", "--snakefile", str(REPO / "Snakefile"), "--directory", str(folder), *extra],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


DIMRED = {
    "dimred": {
        "cache": {"model": "dino", "dataset": "seg"},
        "layer": -1,
        "dims": [32, 4],
        "n_fit_tokens": 2000,
        "probe_epochs": 1,
        "probe_lr": 1.0e-2,
    }
}
DOWNSTREAM_OF_SAE = {"sae_train": 1, "sae_latents": 1, "sae_gallery": 1, "class_f1": 1, "propose": 1, "quantify": 1}


def _run_planned(folder: Path, rules: list[str], *extra: str) -> None:
    """Run ``rules``' planned jobs as `snakemake --touch` (missing outputs made empty first), which
    records each job's params in .snakemake/metadata as a real run does: the planning under test
    reads only those records and file times, so the jobs need not compute anything (the real
    steps' records and refusals are tested above and in test_workflow.py)."""
    base = SNAKEMAKE + ["--snakefile", str(REPO / "Snakefile"), "--directory", str(folder), *extra]
    summary = subprocess.run(base + ["-n", "--summary"], cwd=folder, capture_output=True, text=True, timeout=600)
    assert summary.returncode == 0, summary.stderr[-3000:]
    for line in summary.stdout.splitlines()[1:]:
        out = folder / line.split("\t")[0]
        if not out.exists() and "." in out.name:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.touch()
        elif not out.exists():  # a folder output (the SAE gallery, the proposals pages): --touch stamps inside it
            out.mkdir(parents=True)
    touched = subprocess.run(
        base + ["--touch", "--forcerun", *rules, "--cores", "1"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert touched.returncode == 0, touched.stderr[-3000:]


@pytest.mark.slow
def test_editing_one_key_reruns_exactly_the_affected_rules(tmp_path):
    path = chain_config(tmp_path)
    base = deep_update(
        yaml.safe_load(path.read_text()), {**DIMRED, "quantify": {"methods": ["random_vector", "manual_feature"]}}
    )
    path.write_text(yaml.safe_dump(base, sort_keys=False))
    _run_planned(tmp_path, list(_planned(tmp_path)))
    assert _planned(tmp_path) == {}
    # the same file passed explicitly, by relative and by absolute path: nothing reruns
    assert _planned(tmp_path, "--configfile", "config.yaml") == {}
    assert _planned(tmp_path, "--configfile", str(path)) == {}

    cases = [
        (
            {"extract": {"dtype": "float16"}},
            {"extract_part": 4, "finalize_cache": 2, "stats": 1, "probe_seg": 1, "dimred": 1, **DOWNSTREAM_OF_SAE},
        ),
        ({"extract": {"batch_size": 5}}, {}),
        ({"probes": {"seg": {"lrs": [1.0e-2]}}}, {"probe_seg": 1, "quantify": 1}),
        ({"sae": {"exp_factors": [2]}}, DOWNSTREAM_OF_SAE),
        ({"sae": {"gallery_latents": 3}}, {"sae_gallery": 1}),
        ({"quantify": {"scale": -1.0}}, {"quantify": 1}),
        ({"quantify": {"n_proposals": 2}}, {"propose": 1}),
        ({"dimred": {"probe_lr": 1.0e-3}}, {"dimred": 1}),
    ]
    for edit, expected in cases:
        path.write_text(yaml.safe_dump(deep_update(base, edit), sort_keys=False))
        planned = _planned(tmp_path)
        planned.pop("all", None)
        assert planned == expected, f"after {edit}: {planned}"
    # the README's file target: a sweep edit (new member names) and a new method still rerun
    for edit, expected in (
        ({"sae": {"lrs": [1.0e-3]}}, {"sae_train": 1, "sae_latents": 1, "class_f1": 1, "quantify": 1}),
        ({"quantify": {"methods": ["random_vector", "auto_feature", "manual_feature"]}}, {"quantify": 1}),
    ):
        path.write_text(yaml.safe_dump(deep_update(base, edit), sort_keys=False))
        assert _planned(tmp_path, "results/quantitative.csv") == expected, edit
    path.write_text(yaml.safe_dump(base, sort_keys=False))

    # a second config sharing the cache (own results, another probe) plans no extraction ...
    other = deep_update(base, {"paths": {"results": "results_b"}, "probes": {"seg": {"epochs": 2}}})
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(other, sort_keys=False))
    planned = _planned(tmp_path, "--configfile", "b.yaml")
    assert not {"demo_dataset", "demo_model", "extract_part", "finalize_cache"} & set(planned), planned
    assert set(planned) >= {"probe_seg", "sae_train", "quantify", "dimred"}  # its own results
    # ... and after it has run, the first config still has nothing to do
    _run_planned(tmp_path, list(planned), "--configfile", "b.yaml")
    assert _planned(tmp_path) == {}


def test_a_local_model_folders_weight_files_are_extraction_inputs(tmp_path):
    """A non-demo local model folder: its config.json and weight files are extraction inputs,
    so a newer weights file reschedules extraction (Snakemake's mtime trigger)."""
    from pipeline.provenance import weights_inputs

    build_demo_assets(tmp_path)
    raw = deep_update(TINY_CONFIG, {"models": {"dino": {"source": str(tmp_path / "resources/models/dino")}}})
    raw["demo"]["models"].pop("dino")
    from pipeline.config import config_from_dict

    files = weights_inputs(config_from_dict(raw), "dino")
    assert [Path(f).name for f in files] == ["config.json", "model.safetensors"]


# ---- spaces in paths --------------------------------------------------------------------------------
SPACED = {
    "paths": {"resources": "res dir", "cache": "cache dir", "results": "results dir"},
    "models": {"dino": {"source": "res dir/models/dino"}, "clip": {"source": "res dir/models/clip"}},
    "datasets": {"seg": {"root": "res dir/data/seg"}, "cls": {"root": "res dir/data/cls"}},
    "caches": [{"model": "dino", "dataset": "seg"}],
}


@pytest.mark.slow
def test_paths_with_spaces_are_quoted_in_every_rule(tmp_path):
    write_config(tmp_path, deep_update(TINY_CONFIG, SPACED), name="my config.yaml")
    args = ["--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path), "--configfile", "my config.yaml"]
    dry = subprocess.run(
        SNAKEMAKE + ["-n", "-p", "cache", *args], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert dry.returncode == 0, dry.stderr[-3000:]
    commands = [line for line in dry.stdout.splitlines() if " -m pipeline " in line]
    assert commands and all(
        f"--config '{tmp_path / 'my config.yaml'}'" in c for c in commands
    )  # Snakemake makes it absolute
    assert any("--sentinel 'cache dir/dino/seg/train.parts/0-of-1.json'" in c for c in commands)
    real = subprocess.run(
        SNAKEMAKE + ["--cores", "2", "cache", *args], cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert real.returncode == 0, real.stdout[-3000:] + real.stderr[-3000:]
    done = json.loads((tmp_path / "cache dir/dino/seg/val.complete.json").read_text())
    assert done["complete"] is True and done["n_images"] == 12
    assert done["provenance"]["config"]["extract.dtype"] == "float32"
