"""The units of every table (CSV) the pipeline writes: one convention, one owner.

Rates, accuracies, IoU / mIoU, F1, firing frequencies, explained variance, probabilities and
other fractions are written as PERCENT (0–100) in columns whose name ends ``_pct``; other
units are named the same way (``_s`` seconds). ``docs/outputs.md`` lists every column.

Metric functions (:mod:`pipeline.metrics`) and the JSON outputs (``best.json``,
``chosen.json``, ``summary.json``, ...) keep fractions in [0, 1]: the conversion happens once,
here, when a table is built for writing; charts read the same ``_pct`` columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pandas as pd

__all__ = ["PCT", "pct_name", "to_pct"]

PCT = "_pct"


def pct_name(column: str) -> str:
    """The table name of fraction ``column`` in percent: ``pixel_miou`` → ``pixel_miou_pct``."""
    return column + PCT


def to_pct(table: pd.DataFrame, columns: Iterable[str] | Mapping[str, str]) -> pd.DataFrame:
    """A copy of ``table`` with each fraction column × 100 and renamed (in the same place):
    ``<name>_pct``, or the name a mapping ``{column: new name}`` gives (it must end ``_pct``).

    Every named column must exist (a renamed metric fails here, not silently in a reader).
    """
    names = dict(columns) if isinstance(columns, Mapping) else {c: pct_name(c) for c in columns}
    missing = [c for c in names if c not in table.columns]
    if missing:
        raise KeyError(f"no column(s) {missing} to convert to percent; have {list(table.columns)}")
    wrong = [n for n in names.values() if not n.endswith(PCT)]
    if wrong:
        raise ValueError(f"percent column name(s) {wrong} must end {PCT!r}")
    out = table.copy()
    for c in names:
        out[c] = pd.to_numeric(out[c]) * 100.0
    return out.rename(columns=names)
