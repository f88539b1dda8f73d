"""Progress lines: format, rate bound, the SAE sweep's training line, and a rule's log in a real run."""

from __future__ import annotations

import logging
import re

import pytest
import torch

from helpers import REPO, chain_config, snakemake
from pipeline.progress import Progress, SAESweepProgress

# WHAT: done/total unit (pct%), rate unit/s, elapsed h:mm:ss, ETA h:mm:ss[ | k=v ...]
LINE = re.compile(
    r"(?P<what>.+?): (?P<done>[\d.]+)/(?P<total>[\d.]+) (?P<unit>[^()]+?) \((?P<pct>[\d.]+)%\), "
    r"(?P<rate>[\d.e+-]+) (?P=unit)/s, elapsed \d+:\d\d:\d\d, ETA (\d+:\d\d:\d\d|\?)(?P<info> \| .*)?"
)


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "pipeline.progress"]


def test_lines_have_what_done_total_rate_and_eta(caplog):
    caplog.set_level(logging.INFO, logger="pipeline.progress")
    with Progress("reading", 4, "img", interval=0, terminal=False) as bar:
        for i in range(4):
            bar.update(1, {"chunk": i})
    lines = _lines(caplog)
    assert lines[0] == "reading: start, 4 img to do"
    matches = [LINE.fullmatch(line.removesuffix(" done")) for line in lines[1:]]
    assert all(matches), lines
    assert [m["done"] for m in matches] == ["1", "2", "3", "4", "4"]
    assert [m["pct"] for m in matches[:4]] == ["25.0", "50.0", "75.0", "100.0"]
    assert matches[1]["info"] == " | chunk=1"
    assert lines[-1].endswith(" done")


def test_lines_are_rate_bounded(caplog):
    caplog.set_level(logging.INFO, logger="pipeline.progress")
    calls = []
    bar = Progress("fast loop", 1000, "it", interval=3600, terminal=False)
    for _ in range(1000):
        bar.update(1, lambda: calls.append(1) or {"x": 1})
    bar.close()
    # a start and an end line; no line (and no info computed) in between within the interval
    assert len(_lines(caplog)) == 2 and calls == []


def test_disabled_progress_is_silent(caplog):
    caplog.set_level(logging.INFO, logger="pipeline.progress")
    with Progress("quiet", 3, interval=0, enabled=False, terminal=False) as bar:
        bar.update(3)
    assert _lines(caplog) == []


def test_sae_sweep_line_reports_step_loss_l0_dead_and_best_member(caplog):
    from pipeline.sae.train import SAEHparams, TrainConfig, train_sweep

    caplog.set_level(logging.INFO, logger="pipeline.progress")
    torch.manual_seed(0)
    x = torch.randn(2048, 8)
    members = [
        SAEHparams(lr=1e-3, sparsity_coeff=1e-3, exp_factor=2),
        SAEHparams(lr=1e-2, sparsity_coeff=1.0, exp_factor=2),
    ]
    cfg = TrainConfig(n_tokens=2048, batch_size=256, lr_warmup_steps=1, sparsity_warmup_steps=1)
    watch = SAESweepProgress(cfg.n_tokens, [m.label for m in members], max_l0=1e9, interval=0, terminal=False)
    trained = train_sweep(list(x.split(256)), 8, members, cfg, data_mean_D=None, progress=False, on_step=watch)
    watch.close()
    lines = [LINE.fullmatch(line.removesuffix(" done")) for line in _lines(caplog)[1:]]
    assert len(lines) == 9 and all(lines)  # 8 steps + the end line
    assert lines[0]["what"] == "SAE sweep (2 members)" and lines[0]["unit"] == "tok"
    fields = dict(re.findall(r"(\w+)=(\S+)", lines[-2]["info"]))
    assert fields["step"] == "8"
    for key in ("loss", "mse", "l1", "L0", "dead"):
        assert float(fields[key]) >= 0
    assert 0 <= float(fields["L0"]) <= 16 and 0 <= float(fields["dead"]) <= 1
    # best = the lower-MSE member (every member passes max_l0 here); its MSE is that member's last step
    best = int(re.search(r"best=member (\d)", lines[-2]["info"])[1])
    last_mse = [float(t.history["mse"][-1]) for t in trained]
    assert best == min(range(2), key=last_mse.__getitem__)
    assert float(fields["mse"]) == pytest.approx(last_mse[best], rel=1e-3)


@pytest.mark.slow
def test_rule_logs_show_progress_during_a_short_run(tmp_path):
    """`snakemake sae` on the tiny chain: extraction, stats, SAE training and latent stats log progress lines."""
    chain_config(tmp_path)
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO), "PIPELINE_PROGRESS_SECONDS": "0"}
    proc = snakemake(tmp_path, "--cores", "2", "sae", env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check_rule_logs(tmp_path / "logs")


def progress_lines(path) -> list[re.Match]:
    """Lines of the pipeline.progress logger in a log file, parsed (time / level / logger prefix cut)."""
    found = [line.split(" INFO pipeline.progress: ", 1) for line in path.read_text().splitlines()]
    return [m for m in (LINE.fullmatch(f[1].removesuffix(" done")) for f in found if len(f) == 2) if m]


def check_rule_logs(logs) -> None:
    extract = progress_lines(logs / "extract" / "dino" / "seg" / "train-0-of-2.log")
    assert extract and extract[0]["what"].startswith("extract ") and extract[0]["unit"] == "img"
    assert progress_lines(logs / "stats" / "dino" / "seg" / "train.log")[-1]["unit"] == "task"
    train = progress_lines(next((logs / "sae").rglob("train.log")))
    assert len(train) >= 16  # 4096 tokens / 256 per step, one line per step at interval 0
    assert re.search(r"step=\d+ loss=\S+ mse=\S+ l1=\S+ L0=\S+ dead=\S+ best=member 0", train[-2]["info"])
    latents = progress_lines(next((logs / "sae").rglob("latents.log")))
    assert latents[-1]["what"] == "latent stats" and latents[-1]["done"] == latents[-1]["total"]
