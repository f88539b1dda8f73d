"""Planning benchmark: `snakemake -n` of the demo config (every target) ÷ `python -c pass`.

Runs each command ``--repeats`` times in a fresh temporary project holding a copy of the
repo's ``config.yaml`` (the demo), alternating them, and prints the median wall time of each
and their ratio, then the heavy libraries the dry run imported (``python -X importtime``;
planning must import none of torch, transformers, zarr, altair, xarray, dask).

Snakemake's SLURM executor plugin (a dependency) runs ``scontrol show config`` when it is
imported, where SLURM's tools are on PATH: on a node whose controller does not answer that
waits for scontrol's timeout (9 s here). ``--hide-slurm`` runs the dry run with a PATH that
has no SLURM tools (as on a laptop).

    python benchmarks/bench_plan.py [--repeats 5] [--hide-slurm]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "zarr", "altair", "xarray", "dask")
SLURM_TOOLS = ("sinfo", "scontrol", "sacct", "squeue", "sbatch", "srun", "scancel", "salloc", "sacctmgr")


def _path_without_slurm(folder: Path) -> str:
    """A PATH of links to every program on PATH but SLURM's tools."""
    folder.mkdir()
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if not Path(entry).is_dir():
            continue
        for program in Path(entry).iterdir():
            link = folder / program.name
            if program.name not in SLURM_TOOLS and not link.exists() and os.access(program, os.X_OK):
                link.symlink_to(program)
    return str(folder)


def _seconds(cmd: list[str], cwd: Path, env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hide-slurm", action="store_true", help="no SLURM tools on the dry run's PATH")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "project"
        project.mkdir()
        shutil.copy(REPO / "config.yaml", project / "config.yaml")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        if args.hide_slurm:
            env["PATH"] = _path_without_slurm(Path(tmp) / "bin")
        plan = [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile")]
        plan += ["--directory", str(project), "--cores", "8"]
        bare = [sys.executable, "-c", "pass"]
        _seconds(plan, project, env)  # warm the file cache and snakemake's own metadata folder
        times: dict[str, list[float]] = {"plan": [], "bare": []}
        for _ in range(args.repeats):
            times["plan"].append(_seconds(plan, project, env))
            times["bare"].append(_seconds(bare, project, env))
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", *plan[1:]], cwd=project, env=env, capture_output=True, text=True
        )
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    heavy = sorted(m for m in imported if m.split(".")[0] in HEAVY and "." not in m)
    plan_s, bare_s = statistics.median(times["plan"]), statistics.median(times["bare"])
    print(f"snakemake -n (demo config, every target){' , no SLURM tools on PATH' if args.hide_slurm else ''}")
    print(f"  median of {args.repeats}: {plan_s:.2f} s; python -c pass: {bare_s:.3f} s; ratio {plan_s / bare_s:.0f}x")
    print(f"  heavy libraries imported by planning: {', '.join(heavy) or 'none'}")


if __name__ == "__main__":
    main()
