"""The benchmarks run end to end at toy sizes and print the rows the README quotes.

Their figures are machine-dependent and not asserted; what is asserted holds on any machine:
every reader of ``bench_sae`` section 1 reads the same tokens (else its ratios compare
different work), the cache stays within half the bytes of raw float32, and the ratio lines
the README and the issues quote are printed with a number.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _run(script: str, *args: str, tmp_path: Path) -> str:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _number(out: str, label: str) -> float:
    m = re.search(re.escape(label) + r"\s+([0-9.]+)", out)
    assert m, f"no line {label!r} in:\n{out}"
    return float(m.group(1))


def test_bench_sae_stream_rows_compare_the_same_tokens(tmp_path):
    out = _run(
        "bench_sae.py",
        "--skip-demo-sweeps",
        "--wide-images",
        "32",  # one whole chunk: an uncompressed store pads a last partial chunk on disk
        "--read-passes",
        "2",
        "--read-repeats",
        "1",
        "--sweep-tokens",
        "64",
        "--kinds-width",
        "32",
        "--kinds-tokens",
        "2048",
        "--kinds-repeats",
        "1",
        "--json",
        str(tmp_path / "rows.json"),
        tmp_path=tmp_path,
    )
    read = json.loads((tmp_path / "rows.json").read_text())["read"]
    assert read["tokens"] == 2 * 32 * 256  # 2 passes over 32 images of 256 patch tokens
    assert read["tokens_read"] == dict.fromkeys(
        ("saev", "none", "lz4", "none32", "lz432", "previous", "device"), read["tokens"]
    )
    # compression none: exactly float16's half of saev's float32 (CLS + patches) plus the 4-byte
    # CRC32C that ends each chunk file (store format 2); lz4 below it
    raw_f32 = read["disk_bytes"]["none"] / read["bytes_ratio"]["none"]
    assert read["disk_bytes"]["none"] == raw_f32 / 2 + 4 * read["chunk_files"]["none"]
    assert read["bytes_ratio"]["none"] == pytest.approx(0.5, abs=1e-6)
    assert read["bytes_ratio"]["lz4"] < 0.5
    for label in (
        "ratio stream (none) / saev layout",
        "ratio stream (lz4) / saev layout",
        "ratio float32 batches (none) / saev",
        "ratio float32 batches (lz4) / saev",
        "ratio device mode / saev layout",
    ):
        assert _number(out, label) > 0
    assert re.search(r"streamed [0-9,]+ tok/s, in memory [0-9,]+ tok/s: ratio [0-9.]+", out), out
    # section 3: every kind trained on the same tokens, each rate ÷ relu's
    kinds = json.loads((tmp_path / "rows.json").read_text())["kinds"]
    assert kinds["tokens"] == 2048 and set(kinds["tok_s"]) == {
        "relu",
        "topk",
        "batchtopk",
        "topk+auxk",
        "batchtopk+auxk",
        "topk+matryoshka",
    }
    assert kinds["ratio_to_relu"]["relu"] == 1.0
    for label in ("ratio topk / relu", "ratio batchtopk / relu"):
        assert _number(out, label) > 0


def test_bench_extract_prints_the_stage_limit_ratio_per_round(tmp_path):
    out = _run(
        "bench_extract.py",
        "--hidden",
        "48",
        "--layers",
        "2",
        "--images",
        "8",
        "--batch-size",
        "4",
        "--chunk-images",
        "4",
        "--repeats",
        "2",
        tmp_path=tmp_path,
    )
    rounds = re.search(
        r"extraction ÷ stage limit, median of rounds\s+([0-9.]+)\s+>= 0.9\s+\(each round: ([^)]*)\)", out
    )
    assert rounds, out
    each = [float(x) for x in rounds.group(2).split(", ")]
    assert len(each) == 2
    assert float(rounds.group(1)) == pytest.approx(sum(each) / 2, abs=0.006)  # the median of two rounds
    assert _number(out, "cache bytes ÷ raw float32 bytes") <= 0.5


def test_bench_saev_import_prints_rate_and_size_ratios(tmp_path):
    out = _run(
        "bench_saev_import.py",
        *("--images", "20", "--per-shard", "8", "--width", "48", "--repeats", "1", "--json"),
        tmp_path=tmp_path,
    )
    doc = json.loads(out[: out.rindex("}") + 1])
    assert doc["tokens"] == 20 * 2 * 257 and doc["shard_bytes"] == 3 * 8 * 2 * 257 * 48 * 4  # 8 + 8 + 4 (padded)
    assert _number(out, "import rate / plain read") > 0
    # float16 of float32, Blosc'd: at most half the shards' bytes on any machine
    assert _number(out, "store bytes / shard bytes") <= 0.5
