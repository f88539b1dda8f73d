"""One unit convention across tables (pipeline.units), and every CSV column documented in docs/outputs.md.

The CSV checks read every ``*.csv`` under ``results/`` of the tiny project that builds
everything the config can define (``test_manipulate.built_project(full=True)``, shared with
``test_figures``): a column that holds a rate, accuracy, IoU, F1, frequency, probability or
other fraction ends ``_pct`` and holds percent; every column name appears in ``docs/outputs.md``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_manipulate import built_project

from pipeline import units

DOC = Path(__file__).resolve().parents[1] / "docs" / "outputs.md"
# Names that say "this is a rate or a fraction" (what the convention is about) ...
RATE_WORDS = re.compile(r"miou|iou|acc|f1|freq|frac|prob_|probab|variance|rate|dead|dense|cumulative")
# ... except counts (n_*; the SAE sweep's AuxK threshold `dead_tokens`, in tokens), a flag and the
# name of a definition.
NOT_RATES = re.compile(r"^n_|^dead_tokens$|^in_miou$|^miou_definition$")


def test_to_pct_scales_renames_in_place_and_fails_loudly():
    df = pd.DataFrame({"member": [0, 1], "miou": [0.25, np.nan], "loss": [1.0, 2.0], "frac_dead": [0.5, 1.0]})
    out = units.to_pct(df, ["miou"])
    assert list(out.columns) == ["member", "miou_pct", "loss", "frac_dead"]
    assert out["miou_pct"].iloc[0] == 25.0 and np.isnan(out["miou_pct"].iloc[1])
    assert df["miou"].iloc[0] == 0.25  # the input is not changed
    assert units.to_pct(df, {"frac_dead": "dead_pct"})["dead_pct"].tolist() == [50.0, 100.0]
    with pytest.raises(KeyError, match="top1_acc"):
        units.to_pct(df, ["top1_acc"])
    with pytest.raises(ValueError, match="_pct"):
        units.to_pct(df, {"miou": "miou_percent"})


@pytest.fixture(scope="module")
def tables(tmp_path_factory, tiny_assets) -> dict[str, pd.DataFrame]:
    results = built_project(tmp_path_factory, tiny_assets, full=True).folder / "results"
    return {str(p.relative_to(results)): pd.read_csv(p) for p in sorted(results.rglob("*.csv"))}


def test_every_table_has_rates_in_percent_columns(tables):
    names = {Path(k).name for k in tables}
    # every kind of table the pipeline writes is in the tiny project
    assert {
        "sweep.csv",
        "per_class_iou.csv",
        "per_class_accuracy.csv",
        "epochs.csv",
        "history.csv",
        "proposals.csv",
        "quantitative.csv",
        "dimred.csv",
        "pca_variance.csv",
        "latents.csv",
        "probabilities.csv",
    } <= names, names
    problems, n_pct = [], 0
    for name, df in tables.items():
        for col in df.columns:
            if col.endswith(units.PCT):
                n_pct += 1
                values = pd.to_numeric(df[col], errors="coerce").dropna()
                if not values.between(0, 100).all():
                    problems.append(f"{name}: {col} outside 0..100: {values.min()}..{values.max()}")
            elif RATE_WORDS.search(col) and not NOT_RATES.search(col):
                problems.append(f"{name}: {col} reads as a rate or fraction but does not end {units.PCT!r}")
    assert n_pct >= 30, n_pct
    assert not problems, "\n".join(problems)


def test_every_csv_column_is_documented_in_outputs_md(tables):
    documented = set(re.findall(r"`([^`\s]+)`", DOC.read_text()))
    missing = set()
    for name, df in tables.items():
        for col in df.columns:
            # quantify's into_1 … into_3 columns are documented as into_<k>, into_<k>_count
            key = re.sub(r"^into_\d+", "into_<k>", col)
            if key not in documented:
                missing.add(f"{name}: {col}")
    assert not missing, "columns not in docs/outputs.md:\n" + "\n".join(sorted(missing))
