"""Every stage writes exactly what pipeline.layout declares (and so what its Snakemake rule declares).

One test runs each ``python -m pipeline STEP`` (in-process, with the arguments its rule passes) on
the tiny project, in workflow order, and compares the files that step created or rewrote with
``layout.step_outputs``: every declared file written, every declared folder filled, and nothing
else written except what the layout lists as written-but-not-declared (SAE sweep members,
``quantitative/<method>.csv``, a store's or a zarr table's chunk files).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import write_config
from pipeline import layout, stages
from pipeline.config import SPLITS, CacheRef, load_config
from pipeline.probe_kinds import PROBE_KINDS

SEGC = {"model": "dino", "dataset": "seg"}
CLSC = {"model": "clip", "dataset": "cls"}
PROJECT = {  # every section, tiny; two SAE members so the undeclared member files are several
    "extract": {"parts": 2},
    "probes": {
        "seg": {
            "cache": SEGC,
            "lrs": [1e-2],
            "weight_decays": [1e-3],
            "epochs": 2,
            "batch_size": 128,
            "n_figure_images": 2,
        },
        "cls": {"cache": CLSC, "lrs": [1e-2], "weight_decays": [1e-3], "epochs": 3, "batch_size": 16},
    },
    "sae": {
        "cache": SEGC,
        "layer": -2,
        "n_tokens": 1024,
        "batch_size": 128,
        "lrs": [3e-3],
        "sparsity_coeffs": [1e-2, 3e-2],
        "exp_factors": [4],
        "lr_warmup_steps": 2,
        "sparsity_warmup_steps": 4,
        "top_k": 4,
        "gallery_latents": 3,
        "shuffle_buffer": 512,
    },
    "quantify": {"scale": -2.0, "manual": {"1": 3}, "batch_size": 8, "max_firing_fraction": 1.0},
    "dimred": {
        "cache": SEGC,
        "layer": -1,
        "methods": ["pca", "random_projection"],
        "dims": [8],
        "n_fit_tokens": 300,
        "probe_epochs": 1,
        "probe_lr": 1e-2,
        "crf": False,
    },
    "manipulate": {"n_top_latents": 3, "n_top_classes": 2, "examples": [{"name": "first", "image": 0}]},
}


def _snapshot(root: Path) -> dict[Path, int]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath, name)
            out[path.relative_to(root)] = path.stat().st_mtime_ns
    return out


def _written(before: dict[Path, int], after: dict[Path, int]) -> set[Path]:
    return {p for p, t in after.items() if before.get(p) != t}


def _under(path: Path, folders: list[Path]) -> bool:
    return any(path == f or f in path.parents for f in folders)


def _check(step: str, written: set[Path], outs: layout.Outputs) -> None:
    declared_files = set(outs.files)
    missing = sorted(str(p) for p in declared_files - written)
    assert not missing, f"{step}: declared but not written: {missing}"
    for folder in outs.folders:
        assert any(folder in p.parents for p in written), f"{step}: declared folder {folder} got no file"
    missing_extra = sorted(str(p) for p in set(outs.undeclared) - written)
    assert not missing_extra, f"{step}: listed as written-but-undeclared, not written: {missing_extra}"
    allowed_folders = outs.folders + outs.undeclared_folders
    stray = sorted(
        str(p)
        for p in written - declared_files - set(outs.undeclared) - set(outs.shared)
        if not _under(p, allowed_folders)
    )
    assert not stray, f"{step}: wrote files the layout does not list: {stray}"


def _run(project: Path, step: str, args: list[str], **keys) -> set[Path]:
    from pipeline.__main__ import main

    cfg = load_config(project / "config.yaml")
    before = _snapshot(project)
    rc = main([step, "--config", "config.yaml", *args])
    assert rc == 0, f"python -m pipeline {step} {' '.join(args)} returned {rc}"
    written = _written(before, _snapshot(project))
    _check(step, written, stages.STAGES[step].outputs(cfg, **keys))
    return written


def test_every_stage_writes_what_the_layout_declares(tmp_path, monkeypatch):
    write_config(tmp_path, PROJECT)
    monkeypatch.chdir(tmp_path)
    cfg = load_config("config.yaml")
    seen = set()

    for name in cfg.demo["datasets"]:
        _run(tmp_path, "demo-data", ["--name", name], dataset=name)
    for name in cfg.demo["models"]:
        _run(tmp_path, "demo-model", ["--name", name], model=name)
    seen |= {"demo-data", "demo-model"}

    n = cfg.extract.parts
    for ref in cfg.caches:
        for split in SPLITS:
            where = ["--model", ref.model, "--dataset", ref.dataset, "--split", split]
            for part in range(n):
                sentinel = layout.part_sentinel(cfg, ref, split, part, n)
                _run(
                    tmp_path,
                    "extract",
                    [*where, "--part", str(part), "--of", str(n), "--sentinel", str(sentinel), "--no-progress"],
                    model=ref.model,
                    dataset=ref.dataset,
                    split=split,
                    part=part,
                    of=n,
                )
            _run(
                tmp_path,
                "finalize",
                [*where, "--sentinel", str(layout.store_complete(cfg, ref, split))],
                model=ref.model,
                dataset=ref.dataset,
                split=split,
            )
    seen |= {"extract", "finalize"}
    # a store's config hash covers exactly the entries the stage registry lists (float32 forward,
    # lz4 compression, no shards and cpu decode, the values of stores made before those keys
    # existed: not recorded)
    import json

    attrs = json.loads((layout.store_path(cfg, CacheRef(**SEGC), "train") / "zarr.json").read_text())["attributes"]
    assert set(attrs["config"]) == set(stages.STORE_HASHED_KEYS) - {
        "forward_dtype",
        "compression",
        "shard_images",
        "decode",
    }
    assert set(stages.EXTRACT_KEYS) == {k for keys in stages.STORE_HASHED_KEYS.values() for k in keys} | {
        "extract.on_bad_image"
    }

    ref = CacheRef(**SEGC)
    stats_out = layout.stats_path(cfg, ref, "train")
    _run(
        tmp_path,
        "stats",
        ["--model", ref.model, "--dataset", ref.dataset, "--split", "train", "--out", str(stats_out)],
        model=ref.model,
        dataset=ref.dataset,
        split="train",
    )
    seen.add("stats")

    for pk in PROBE_KINDS.values():
        _run(tmp_path, pk.step, ["--no-progress"])
        seen.add(pk.step)

    written = _run(tmp_path, "sae-train", ["--no-progress"])
    assert len([p for p in written if p.parent.name == "members"]) == 4  # 2 members x (.pt, .safetensors)
    _run(tmp_path, "sae-latents", ["--no-progress"])
    _run(tmp_path, "sae-gallery", [])
    _run(tmp_path, "class-f1", [])
    _run(tmp_path, "propose", [])
    written = _run(tmp_path, "quantify", ["--no-progress"])
    assert {p.name for p in written if p.parent == layout.quantify_dir(cfg)} >= {
        f"{m}.csv" for m in cfg.quantify.methods
    }
    _run(tmp_path, "dimred", ["--no-progress"])
    _run(tmp_path, "manipulate", ["--example", "first"], example="first")
    seen |= {"sae-train", "sae-latents", "sae-gallery", "class-f1", "propose", "quantify", "dimred", "manipulate"}

    # every stage the workflow runs was run here
    assert seen == {name for name, stage in stages.STAGES.items() if stage.workflow}

    # every artefact records `layer` as configured and `block` resolved (3-block models: -2 -> 1, -1 -> 2)
    import pandas as pd

    from pipeline.sae.checkpoint import load_checkpoint

    sae_dir = layout.sae_dir(cfg)
    records = {
        "probe-seg best.json": json.loads((layout.probe_dir(cfg, "seg") / "best.json").read_text())["meta"],
        "probe-cls best.json": json.loads((layout.probe_dir(cfg, "cls") / "best.json").read_text())["meta"],
        "dimred projections.json": json.loads((layout.dimred_dir(cfg) / "projections.json").read_text())["meta"],
        "sae.pt": load_checkpoint(sae_dir / "sae.pt")[1]["cfg"],
        "chosen.json": json.loads((sae_dir / "chosen.json").read_text()),
        "latents.json": json.loads((sae_dir / "latents.json").read_text()),
    }
    expected = {"probe-seg best.json": (-1, 2), "probe-cls best.json": (-1, 2), "dimred projections.json": (-1, 2)}
    for name, doc in records.items():
        assert (doc["layer"], doc["block"]) == expected.get(name, (-2, 1)), name
    for table in (layout.quantitative_csv(cfg), layout.dimred_csv(cfg)):
        rows = pd.read_csv(table)
        want = (-2, 1) if table == layout.quantitative_csv(cfg) else (-1, 2)
        assert (rows["layer"] == want[0]).all() and (rows["block"] == want[1]).all(), table


@pytest.mark.parametrize("step", sorted(n for n, s in stages.STAGES.items() if s.workflow))
def test_every_workflow_stage_has_outputs_in_the_layout(step):
    """The rules' outputs come from layout.step_outputs: each workflow stage must have an entry."""
    from helpers import TINY_CONFIG, deep_update
    from pipeline.config import config_from_dict

    cfg = config_from_dict(deep_update(TINY_CONFIG, PROJECT))
    keys = {"model": "dino", "dataset": "seg", "split": "train", "example": "first"}
    outs = stages.STAGES[step].outputs(cfg, **keys)
    assert outs.declared(), f"{step} declares no output"
    # every declared path is under the results, cache or resources folder of the config
    roots = (cfg.paths.results, cfg.paths.cache, cfg.paths.resources)
    assert all(any(r in p.parents for r in roots) for p in outs.declared())


def test_every_probe_kind_has_a_stage_a_sub_command_and_its_files():
    """The probe-kind registry is the one switch: each kind gets its step, CLI sub-command and file list."""
    from pipeline.__main__ import build_parser

    choices = next(a for a in build_parser()._actions if a.dest == "step").choices
    for kind, pk in PROBE_KINDS.items():
        assert pk.step in stages.STAGES and stages.STAGES[pk.step].reads == (f"probes.{kind}",)
        assert pk.step in choices and choices[pk.step].get_default("probe") == kind
        files = layout.probe_files(kind)
        assert set(layout.PROBE_COMMON_FILES) < set(files) and set(pk.files) <= set(files)
