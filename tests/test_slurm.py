"""Scale-out: `snakemake --profile slurm` (slurm/config.yaml), checked without a cluster and on a real one.

Fast checks (no cluster): the profile resolves in a dry run from the repository root; its
resources come from the environment and grow with the retry attempt (evaluated by
Snakemake itself); every GPU rule of the workflow asks for a GPU and no CPU rule does; the
test profile (tests/slurm-profile/config.yaml) is the project profile plus the listed changes.

The real run (marked slurm + slow) starts a single-node SLURM with
../shared/tools/start-slurm.sh, runs the tiny project through sbatch with the test profile
and compares the result with a local `--cores 2` run of the same config.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO, write_config

SNAKEMAKE = [sys.executable, "-m", "snakemake"]
PROJECT_PROFILE = REPO / "slurm" / "config.yaml"
TEST_PROFILE = REPO / "tests" / "slurm-profile" / "config.yaml"
START_SLURM = REPO.parent / "shared" / "tools" / "start-slurm.sh"
PROFILE_ENV = (
    "PIPELINE_SLURM_PARTITION",
    "PIPELINE_SLURM_GPU_PARTITION",
    "PIPELINE_SLURM_GPU_MODEL",
    "PIPELINE_SLURM_ACCOUNT",
)

# The test profile = the project profile + these changes (nothing else may differ). Keys are
# paths into the YAML; the GPU rules are those the project profile gives `gpu: 1`.
TEST_PROFILE_ADDED = {
    ("slurm-status-command",): "squeue",  # no slurmdbd on the test cluster: sacct fails
    ("slurm-init-seconds-before-status-checks",): 2,  # jobs last seconds: poll soon
    ("slurm-keep-successful-logs",): True,  # the test reads one SLURM log per job
}
TEST_MEM = "1000 * attempt"  # fits a small CI machine (the project asks 8-32 GB per job)


def profile_overrides(project: dict) -> dict[tuple, object]:
    """The deliberate overrides: less memory everywhere, and no GPU (the test cluster has none)."""
    overrides: dict[tuple, object] = {("default-resources", "mem_mb"): TEST_MEM}
    for rule in gpu_rules_of_profile(project):
        overrides[("set-resources", rule, "gpu")] = 0
        overrides[("set-resources", rule, "gpu_model")] = ""
        overrides[("set-resources", rule, "mem_mb")] = TEST_MEM
    return overrides


def _snakemake(
    args: list[str], cwd: Path, *, env: dict | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(SNAKEMAKE + args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def _env(**values: str) -> dict:
    """os.environ without the profile's variables, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if k not in PROFILE_ENV}
    env.update(values)
    return env


def _flatten(node, prefix: tuple = ()) -> dict[tuple, object]:
    if isinstance(node, dict):
        out: dict[tuple, object] = {}
        for key, value in node.items():
            out.update(_flatten(value, prefix + (key,)))
        return out
    return {prefix: node}


def rendered(path: Path, **env: str) -> dict:
    """A profile as Snakemake reads it: its YTE template evaluated (``__definitions__`` run,
    ``?`` expressions and ``?for`` loops expanded) with only ``env`` of the profile's variables set."""
    import yte

    saved = {k: os.environ.pop(k) for k in PROFILE_ENV if k in os.environ}
    os.environ.update(env)
    try:
        doc = yte.process_yaml(path.read_text(), require_use_yte=True)
    finally:
        for k in env:
            os.environ.pop(k, None)
        os.environ.update(saved)
    doc.pop("__use_yte__", None)
    return doc


def gpu_rules_of_profile(profile: dict) -> set[str]:
    return {rule for rule, res in (profile.get("set-resources") or {}).items() if int(res.get("gpu", 0) or 0) > 0}


def workflow_rules() -> dict[str, bool]:
    """Every rule of the workflow -> whether it asks for a GPU: ``resources: gpu=N`` (N >= 1)
    written in the rule, or ``**resources_of("<step>")`` of a GPU stage of the registry
    (``pipeline.stages``); the probe rules (one per registered kind, built in a loop) from the
    probe-kind registry."""
    from pipeline.probe_kinds import PROBE_KINDS
    from pipeline.stages import STAGES

    rules: dict[str, bool] = {}
    for smk in [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]:
        text = smk.read_text()
        found = list(re.finditer(r"^[ \t]*(?:rule|checkpoint)[ \t]+(\w+)[ \t]*:", text, re.M))
        for m, nxt in zip(found, found[1:] + [None]):
            body = text[m.end() : nxt.start() if nxt else len(text)]
            step = re.search(r"resources_of\(\s*\"([\w-]+)\"\s*\)", body)
            rules[m.group(1)] = bool(re.search(r"\bgpu\s*=\s*[1-9]", body)) or bool(step and STAGES[step.group(1)].gpu)
    for kind in PROBE_KINDS.values():
        rules[kind.rule] = STAGES[kind.step].gpu
    return rules


# ---- fast checks: no cluster ----------------------------------------------------------


def test_dry_run_finds_the_profile_from_the_repo_root():
    """`snakemake --profile slurm -n` from the repo root resolves the profile and plans jobs."""
    proc = _snakemake(["--profile", "slurm", "-n"], REPO, env=_env())
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "This was a dry-run" in out
    # the profile's resources reached the plan: GPU rule vs CPU rule
    extract = re.search(r"rule extract_part:.*?resources: ([^\n]*)", out, re.S)
    finalize = re.search(r"rule finalize_cache:.*?resources: ([^\n]*)", out, re.S)
    assert extract and finalize, out[-4000:]
    assert "mem_mb=16000" in extract.group(1) and "gpu=1" in extract.group(1), extract.group(1)
    assert "mem_mb=8000" in finalize.group(1) and "gpu=" not in finalize.group(1), finalize.group(1)


def test_dry_run_reads_partition_account_and_gpu_model_from_the_environment():
    env = _env(
        PIPELINE_SLURM_PARTITION="cpuq",
        PIPELINE_SLURM_GPU_PARTITION="gpuq",
        PIPELINE_SLURM_GPU_MODEL="a100",
        PIPELINE_SLURM_ACCOUNT="lab42",
    )
    proc = _snakemake(["--profile", "slurm", "-n", "cache"], REPO, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    extract = re.search(r"rule extract_part:.*?resources: ([^\n]*)", out, re.S).group(1)
    finalize = re.search(r"rule finalize_cache:.*?resources: ([^\n]*)", out, re.S).group(1)
    for want in ("slurm_partition=gpuq", "gpu_model=a100", "slurm_account=lab42", "gpu=1"):
        assert want in extract, extract
    for want in ("slurm_partition=cpuq", "slurm_account=lab42"):
        assert want in finalize, finalize
    assert "gpu=" not in finalize and "gpu_model" not in finalize, finalize


def test_resources_grow_with_the_attempt_as_snakemake_evaluates_them(tmp_path):
    """A real (local-executor) run with the project profile: each rule fails once, is retried,
    and asks for twice the memory and time on attempt 2; env variables fill partition and GPU model."""
    (tmp_path / "Snakefile").write_text(
        'rule all:\n    input: "cpu.done", "gpu.done"\n\n'
        "def once(name):\n"
        '    return f"echo {{resources.mem_mb}} {{resources.runtime}} {{resources.slurm_partition}} >> {name}.tries; "'
        ' + f"if [ ! -e {name}.failed ]; then touch {name}.failed; exit 1; fi; touch {{output}}"\n\n'
        'rule finalize_cache:\n    output: "cpu.done"\n    shell: once("cpu")\n\n'
        'rule extract_part:\n    output: "gpu.done"\n    resources: gpu=1\n'
        '    shell: "echo {resources.gpu} {resources.gpu_model} >> gpu.gres; " + once("gpu")\n'
    )
    env = _env(PIPELINE_SLURM_PARTITION="cpuq", PIPELINE_SLURM_GPU_PARTITION="gpuq", PIPELINE_SLURM_GPU_MODEL="h100")
    proc = _snakemake(["--profile", str(REPO / "slurm"), "--executor", "local", "--cores", "1"], tmp_path, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert (tmp_path / "cpu.tries").read_text().split("\n")[:2] == ["8000 60 cpuq", "16000 120 cpuq"]
    assert (tmp_path / "gpu.tries").read_text().split("\n")[:2] == ["16000 240 gpuq", "32000 480 gpuq"]
    assert (tmp_path / "gpu.gres").read_text().split("\n")[0] == "1 h100"


def test_every_gpu_rule_asks_for_a_gpu_and_no_cpu_rule_does():
    project = rendered(PROJECT_PROFILE, PIPELINE_SLURM_GPU_PARTITION="gpuq", PIPELINE_SLURM_GPU_MODEL="a100")
    rules = workflow_rules()
    assert {"extract_part", "finalize_cache", "demo_dataset"} <= set(rules), sorted(rules)
    in_profile = gpu_rules_of_profile(project)
    gpu_rules = {r for r, gpu in rules.items() if gpu}
    assert gpu_rules <= in_profile, (
        f"GPU rules missing from slurm/config.yaml set-resources: {sorted(gpu_rules - in_profile)}"
    )
    cpu_rules = {r for r, gpu in rules.items() if not gpu}
    assert not in_profile & cpu_rules, f"CPU rules given a GPU by slurm/config.yaml: {sorted(in_profile & cpu_rules)}"
    for rule in in_profile:
        res = project["set-resources"][rule]
        assert res["slurm_partition"] == "gpuq" and res["gpu_model"] == "a100", rule


def test_test_profile_is_the_project_profile_plus_listed_changes():
    project = rendered(PROJECT_PROFILE)
    test = _flatten(rendered(TEST_PROFILE))
    flat = _flatten(project)
    overrides = profile_overrides(project)
    for key in overrides:
        assert key in flat, f"override {'/'.join(key)} is not a key of slurm/config.yaml"
    for key in TEST_PROFILE_ADDED:
        assert key not in flat, f"{'/'.join(key)} is in slurm/config.yaml: list it as an override, not an addition"
    expected = {**flat, **overrides, **TEST_PROFILE_ADDED}
    problems = [
        f"{'/'.join(map(str, k))}: test profile has {test.get(k, '<missing>')!r}, expected {v!r}"
        for k, v in expected.items()
        if test.get(k, "<missing>") != v
    ]
    problems += [
        f"{'/'.join(map(str, k))}: in the test profile only, and not a listed change" for k in test if k not in expected
    ]
    assert not problems, "tests/slurm-profile/config.yaml drifted from slurm/config.yaml:\n" + "\n".join(problems)


# ---- the real cluster ----------------------------------------------------------------

SEG_CACHE = {"model": "dino", "dataset": "seg"}
BASE_OVERRIDES = {"caches": [SEG_CACHE], "extract": {"parts": 2}, "threads": 1}
# Sections for results/quantitative.csv (probe -> SAE -> interventions), as small as they go.
QUANTIFY_OVERRIDES = {
    "probes": {
        "seg": {
            "cache": SEG_CACHE,
            "lrs": [1e-2],
            "weight_decays": [1e-3],
            "epochs": 3,
            "batch_size": 64,
            "shuffle_buffer": 256,
            "n_figure_images": 1,
        }
    },
    "sae": {
        "cache": SEG_CACHE,
        "layer": -2,
        "n_tokens": 1024,
        "batch_size": 128,
        "lrs": [1e-3],
        "sparsity_coeffs": [4e-4],
        "exp_factors": [2],
        "lr_warmup_steps": 2,
        "sparsity_warmup_steps": 2,
        "shuffle_buffer": 256,
        "top_k": 2,
        "gallery_latents": 2,
    },
    # every latent may be chosen (the tiny SAE's latents fire often), so auto_feature rows have numbers too
    "quantify": {
        "methods": ["random_vector", "auto_feature"],
        "thresholds": [0.0],
        "max_firing_fraction": 1.0,
        "batch_size": 4,
    },
}
QUANT_TARGET, CACHE_TARGET = "results/quantitative.csv", "cache"
TEST_PARTITIONS = {"cpu": "pipeline_cpu", "gpu": "pipeline_gpu"}  # made on the test cluster: routing is visible
SLURM_RUN_LIMIT = {QUANT_TARGET: 720, CACHE_TARGET: 480}  # seconds, then SIGKILL (a hung plugin ignores SIGTERM)
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")


def _cannot_run_slurm() -> str | None:
    if not sys.platform.startswith("linux"):
        return f"needs Linux for a local SLURM cluster (this is {sys.platform})"
    if not Path("/etc/debian_version").exists():
        return "start-slurm.sh installs SLURM with apt on Debian 12; this machine is not Debian"
    if os.geteuid() != 0:
        return "start-slurm.sh must run as root (it installs packages and starts slurmctld/slurmd/munged)"
    if shutil.which("apt-get") is None:
        return "apt-get not found: start-slurm.sh cannot install SLURM"
    if not START_SLURM.exists():
        return f"{START_SLURM} not found (the shared SLURM start script)"
    for tool in ("timeout", "nice"):
        if shutil.which(tool) is None:
            return f"coreutils `{tool}` not found (the test runs snakemake under it)"
    return None


def _start_cluster() -> None:
    """Start (or reuse) the cluster without changing a running one's accounting or partition name."""
    env = dict(os.environ)
    conf = Path("/etc/slurm/slurm.conf")
    text = conf.read_text() if conf.exists() else ""
    env["SLURM_ACCOUNTING"] = "dbd" if "accounting_storage/slurmdbd" in text else "none"  # none: faster
    part = re.search(r"^PartitionName=(\S+)", text, re.M)
    env["SLURM_PARTITION"] = part.group(1) if part else "debug"
    proc = subprocess.run(["bash", str(START_SLURM)], capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"start-slurm.sh failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    node = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()
    for name in TEST_PARTITIONS.values():
        if subprocess.run(["scontrol", "show", "partition", name], capture_output=True).returncode != 0:
            subprocess.run(
                ["scontrol", "create", f"PartitionName={name}", f"Nodes={node}", "State=UP", "MaxTime=INFINITE"],
                check=True,
                capture_output=True,
                text=True,
            )


def _job_records(ids: list[str], workdir: Path) -> dict[str, dict[str, str]]:
    """JobId -> {JobState, Partition, Tres, ...} of finished jobs: sacct with slurmdbd, else the jobcomp file."""
    acct = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", ",".join(ids), "-o", "JobIDRaw,State,Partition,AllocTRES"],
        capture_output=True,
        text=True,
    )
    records: dict[str, dict[str, str]] = {}
    if acct.returncode == 0 and acct.stdout.strip():
        for line in acct.stdout.splitlines():
            job, state, part, tres = line.split("|")[:4]
            records[job] = {"JobState": state.split()[0], "Partition": part, "Tres": tres}
        return records
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    loc = re.search(r"^JobCompLoc\s*=\s*(\S+)", config, re.M)
    assert loc and Path(loc.group(1)).exists(), "neither sacct nor a jobcomp file records finished jobs"
    for line in Path(loc.group(1)).read_text().splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if fields.get("JobId") in ids and Path(fields.get("WorkDir", "/")).resolve() == workdir.resolve():
            records[fields["JobId"]] = fields
    return records


def _choose_target(folder: Path) -> str:
    """results/quantitative.csv when the workflow has a rule for it, else the cache target."""
    write_config(folder, {**BASE_OVERRIDES, **QUANTIFY_OVERRIDES})
    proc = _snakemake(["-n", "--snakefile", str(REPO / "Snakefile"), "--directory", str(folder), QUANT_TARGET], folder)
    if proc.returncode == 0:
        return QUANT_TARGET
    write_config(folder, BASE_OVERRIDES)
    return CACHE_TARGET


def _assert_same_results(target: str, slurm_dir: Path, local_dir: Path) -> None:
    if target == QUANT_TARGET:
        import pandas as pd

        a, b = pd.read_csv(slurm_dir / QUANT_TARGET), pd.read_csv(local_dir / QUANT_TARGET)
        pd.testing.assert_frame_equal(a, b, check_exact=True)
        assert len(a) == 2 and a["n_classes"].gt(0).all(), a  # both methods measured something
        if "device" in a:
            assert a["device"].astype(str).str.startswith("cpu").all(), a["device"]
    import xarray as xr

    for split in ("train", "val"):
        a = xr.open_zarr(slurm_dir / "cache" / "dino" / "seg" / f"{split}.zarr")
        b = xr.open_zarr(local_dir / "cache" / "dino" / "seg" / f"{split}.zarr")
        assert set(a.data_vars) == set(b.data_vars) and "acts" in a.data_vars
        for name in a.data_vars:
            va, vb = a[name].values, b[name].values
            if name == "fingerprint":  # each project generated its own files: same bytes, other mtimes
                keep = [f != "mtime_ns" for f in a["fingerprint_field"].values]
                va, vb = va[:, keep], vb[:, keep]
            assert np.array_equal(va, vb), f"{split}.zarr {name} differs between SLURM and local"


@pytest.mark.slurm
@pytest.mark.slow
def test_profile_runs_the_tiny_project_through_sbatch_and_matches_a_local_run(tmp_path):
    reason = _cannot_run_slurm()
    if reason:
        pytest.skip(reason)
    t0 = time.monotonic()
    _start_cluster()
    t_cluster = time.monotonic() - t0

    slurm_dir, local_dir = tmp_path / "slurm", tmp_path / "local"
    slurm_dir.mkdir()
    local_dir.mkdir()
    target = _choose_target(slurm_dir)
    shutil.copy(slurm_dir / "config.yaml", local_dir / "config.yaml")

    # The local reference run goes alongside, niced: the SLURM run mostly waits on polling,
    # and its jobs (the critical path) get the CPUs first.
    local_log = tmp_path / "local-run.log"
    with local_log.open("w") as sink:
        local = subprocess.Popen(
            [
                "nice",
                "-n",
                "15",
                *SNAKEMAKE,
                "--cores",
                "2",
                "--snakefile",
                str(REPO / "Snakefile"),
                "--directory",
                str(local_dir),
                target,
            ],
            cwd=local_dir,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=_env(),
        )
    env = _env(PIPELINE_SLURM_PARTITION=TEST_PARTITIONS["cpu"], PIPELINE_SLURM_GPU_PARTITION=TEST_PARTITIONS["gpu"])
    cmd = [
        "timeout",
        "-s",
        "KILL",
        str(SLURM_RUN_LIMIT[target]),
        *SNAKEMAKE,
        "--profile",
        str(TEST_PROFILE.parent),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(slurm_dir),
        target,
    ]
    submitted: list[tuple[str, str]] = []
    proc = None
    try:
        t1 = time.monotonic()
        proc = subprocess.run(cmd, cwd=slurm_dir, capture_output=True, text=True, env=env)
        t_slurm = time.monotonic() - t1
        out = proc.stdout + proc.stderr
        submitted = SUBMITTED.findall(out)
        assert proc.returncode == 0, f"snakemake --profile (rc {proc.returncode}, {t_slurm:.0f} s):\n{out[-6000:]}"
        local.wait(timeout=900)
        assert local.returncode == 0, "local run failed:\n" + local_log.read_text()[-4000:]
    finally:
        if local.poll() is None:
            local.kill()
            local.wait()
        # a failed or killed run may leave its jobs queued: cancel exactly those
        if submitted and (proc is None or proc.returncode != 0):
            subprocess.run(["scancel", *[job for job, _ in submitted]], capture_output=True)
    t_total = time.monotonic() - t0

    # every job went through sbatch: one SLURM job id and one SLURM log per job
    ids = [job for job, _ in submitted]
    assert ids and len(set(ids)) == len(ids), out[-4000:]
    log_root = slurm_dir / ".snakemake" / "slurm_logs"  # rule_<rule>/[<wildcards>/]<job id>.log
    logs = sorted(log_root.rglob("*.log"))
    assert sorted(p.stem for p in logs) == sorted(ids), (ids, logs)
    by_rule: dict[str, list[tuple[str, str]]] = {}
    for p in logs:
        parts = p.relative_to(log_root).parts
        rule = parts[0].removeprefix("rule_")
        by_rule.setdefault(rule, []).append((parts[1] if len(parts) == 3 else "", p.stem))
        assert f"rule {rule}:" in p.read_text(), p
    # extraction: 2 parts per split, each its own SLURM job, then one finalize job per split
    parts = dict(by_rule.get("extract_part", []))
    assert sorted(parts) == ["dino_seg_train_0_2", "dino_seg_train_1_2", "dino_seg_val_0_2", "dino_seg_val_1_2"], (
        by_rule
    )
    assert len(set(parts.values())) == 4, parts
    assert len(by_rule.get("finalize_cache", [])) == 2, by_rule

    # SLURM's own record: completed, in the partition the environment chose, no GPU asked
    records = _job_records(ids, slurm_dir)
    assert sorted(records) == sorted(ids), f"SLURM has no record of {sorted(set(ids) - set(records))}"
    project = rendered(PROJECT_PROFILE)
    gpu_rules = gpu_rules_of_profile(project)
    for rule, jobs in by_rule.items():
        for _, job in jobs:
            rec = records[job]
            assert rec["JobState"] == "COMPLETED", (rule, rec)
            assert rec["Partition"] == TEST_PARTITIONS["gpu" if rule in gpu_rules else "cpu"], (rule, rec)
            assert "gpu" not in rec.get("Tres", ""), (rule, rec)
            assert "mem=1000M" in rec["Tres"], (rule, rec)  # the test profile's mem_mb, attempt 1

    # the steps say which device they ran on
    for part in sorted((slurm_dir / "cache" / "dino" / "seg").glob("*.parts/*.json")):
        assert json.loads(part.read_text())["device"].startswith("cpu"), part

    _assert_same_results(target, slurm_dir, local_dir)
    summary = {
        "target": target,
        "slurm_jobs": {rule: sorted(job for _, job in jobs) for rule, jobs in sorted(by_rule.items())},
        "seconds": {"cluster_start": round(t_cluster, 1), "slurm_run": round(t_slurm, 1), "total": round(t_total, 1)},
    }
    print("slurm run:", json.dumps(summary))
