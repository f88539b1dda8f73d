"""Every chart under results/ of a tiny project that builds everything the config can define.

The project (``test_manipulate.built_project(full=True)``: seg + cls probes, SAE sweep, latent
stats, gallery, class F1, proposals, quantify, dimred, manipulate) is built in-process once
per session (about 15 s on 2 CPU cores; ``snakemake all`` on the same config takes minutes,
mostly interpreter start-ups). For every ``*.html`` that embeds a Vega-Lite chart:

* a PNG or SVG twin with the same stem exists (static copies for papers and slides);
* every x / y encoding with a field has an axis title (in one of the layers that share the
  axis; Vega-Lite merges them), unless the axis is hidden;
* every colour encoding uses a palette from :mod:`pipeline.plots` (a ``scheme`` that is
  ``SEQUENTIAL_SCHEME``, or a ``range`` of Okabe-Ito / mask colours),
  never Vega's default category10;
* class fields hold class names, not bare ids.

HTML pages that are not charts (the SAE gallery, the proposals page) are listed, not checked.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from test_manipulate import built_project

from pipeline.plots import OKABE_ITO, SEQUENTIAL_SCHEME
from pipeline.probes.figures import class_colours

ALLOWED_SCHEMES = {SEQUENTIAL_SCHEME}
ALLOWED_COLOURS = {c.lower() for c in OKABE_ITO} | {
    "#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb)) for rgb in class_colours(64)
}
SPEC = re.compile(r"const spec = (\{.*\});\s*\n")
COMPOSITES = ("layer", "hconcat", "vconcat", "concat")


def chart_spec(html: str) -> dict | None:
    """The Vega-Lite spec altair's ``save(..., inline=True)`` embeds, or None for a non-chart page."""
    m = SPEC.search(html)
    return json.loads(m.group(1)) if m else None


def _title(enc: dict) -> str | None:
    if enc.get("title"):
        return enc["title"]
    axis = enc.get("axis")
    if isinstance(axis, dict) and axis.get("title"):
        return axis["title"]
    return None


def _views(spec: dict, inherited: dict | None = None):
    """(path, view, encoding incl. inherited channels, sibling layers) for every unit or layer group."""
    enc = {**(inherited or {}), **spec.get("encoding", {})}
    yield "", spec, enc
    for key in COMPOSITES:
        for i, sub in enumerate(spec.get(key, [])):
            for path, view, sub_enc in _views(sub, enc if key == "layer" else None):
                yield f"/{key}{i}{path}", view, sub_enc
    if "spec" in spec:  # facet / repeat
        for path, view, sub_enc in _views(spec["spec"], enc):
            yield f"/spec{path}", view, sub_enc


def axis_problems(spec: dict) -> list[str]:
    """x / y fields without a title anywhere in the layer group that shares the axis."""
    problems = []

    def group(spec: dict, inherited: dict, path: str):
        enc = {**inherited, **spec.get("encoding", {})}
        if "layer" in spec:
            units = [(f"{path}/layer{i}", {**enc, **s.get("encoding", {})}, s) for i, s in enumerate(spec["layer"])]
        else:
            units = [(path, enc, spec)]
        for key in ("hconcat", "vconcat", "concat"):
            for i, sub in enumerate(spec.get(key, [])):
                group(sub, {}, f"{path}/{key}{i}")
        if "spec" in spec:
            group(spec["spec"], enc, f"{path}/spec")
        if any(k in spec for k in ("hconcat", "vconcat", "concat")) or ("spec" in spec and "layer" not in spec):
            return
        for ch in ("x", "y"):
            used = [(p, e[ch]) for p, e, _ in units if ch in e and isinstance(e[ch], dict) and e[ch].get("field")]
            if not used:
                continue
            if all(e.get("axis", {}) is None for _, e in used):
                continue  # hidden axis (e.g. an image panel)
            if not any(_title(e) for _, e in used):
                problems.append(f"{used[0][0] or '/'} {ch}: field {used[0][1]['field']!r} has no axis title")

    group(spec, {}, "")
    return problems


def colour_problems(spec: dict) -> list[str]:
    problems = []
    for path, _view, enc in _views(spec):
        for ch in ("color", "fill", "stroke"):
            e = enc.get(ch)
            if not isinstance(e, dict) or "field" not in e:
                continue
            scale = e.get("scale") or {}
            scheme = scale.get("scheme")
            scheme = scheme.get("name") if isinstance(scheme, dict) else scheme
            colours = [str(c).lower() for c in scale.get("range", [])] if isinstance(scale.get("range"), list) else []
            if scheme in ALLOWED_SCHEMES or (colours and set(colours) <= ALLOWED_COLOURS):
                continue
            what = (
                f"scheme {scheme!r}"
                if scheme
                else (f"range {colours}" if colours else "Vega's default palette (category10)")
            )
            problems.append(f"{path or '/'} {ch} ({e['field']!r}): {what} is not a pipeline.plots palette")
    return problems


def class_name_problems(spec: dict) -> list[str]:
    """Nominal class fields whose values are bare numbers."""
    datasets = spec.get("datasets", {})
    problems = []
    for path, _view, enc in _views(spec):
        for ch, e in enc.items():
            if not isinstance(e, dict) or e.get("type") not in ("nominal", "ordinal"):
                continue
            field = str(e.get("field", ""))
            if "class" not in field or field.endswith("_id"):
                continue
            values = [row.get(field) for rows in datasets.values() for row in rows if field in row]
            if values and all(isinstance(v, (int, float)) or str(v).strip().isdigit() for v in values):
                problems.append(f"{path or '/'} {ch}: {field!r} holds ids ({values[:3]}…), not class names")
    return problems


@pytest.fixture(scope="module")
def results(tmp_path_factory, tiny_assets) -> Path:
    return built_project(tmp_path_factory, tiny_assets, full=True).folder / "results"


def test_every_chart_has_a_static_twin_axis_titles_and_safe_palettes(results):
    pages = sorted(results.rglob("*.html"))
    charts, others, problems = [], [], []
    for page in pages:
        spec = chart_spec(page.read_text())
        rel = page.relative_to(results)
        if spec is None:
            others.append(str(rel))
            continue
        charts.append(str(rel))
        twins = [page.with_suffix(ext) for ext in (".png", ".svg")]
        if not any(t.exists() and t.stat().st_size > 0 for t in twins):
            problems.append(f"{rel}: no PNG or SVG twin")
        problems += [f"{rel}: {p}" for p in axis_problems(spec) + colour_problems(spec) + class_name_problems(spec)]
    static_only = sorted(
        str(p.relative_to(results))
        for p in results.rglob("*.png")
        if not p.with_suffix(".html").exists() and not {"gallery", "proposals"} & set(p.parts)
    )
    print(f"{len(charts)} charts checked:", *charts, sep="\n  ")
    print("non-chart pages:", others)
    print("PNG-only figures (PIL image grids, no chart to embed):", static_only)
    expected = {
        "probes/seg/dino/seg/sweep.html",
        "probes/seg/dino/seg/per_class_iou.html",
        "probes/cls/clip/cls/sweep.html",
        "probes/cls/clip/cls/confusion.html",
        "sae/dino/seg/layer-2/sweep.html",
        "quantitative/chart.html",
        "dimred/linear.html",
        "dimred/cluster.html",
        "dimred/pca_variance.html",
        "manipulate/first/probabilities.html",
        "manipulate/named/probabilities.html",
    }
    assert expected <= set(charts), f"charts missing: {sorted(expected - set(charts))}"
    assert not problems, "\n".join(problems)


def test_the_checks_catch_bad_charts():
    """The checker itself: an untitled axis, the default palette and numeric class ids are caught."""
    import altair as alt
    import pandas as pd

    df = pd.DataFrame({"class": [1, 2], "v": [0.1, 0.2]})
    bad = alt.Chart(df).mark_bar().encode(x="v:Q", y="class:N", color="class:N").to_dict()
    assert axis_problems(bad) and colour_problems(bad) and class_name_problems(bad)
    good = (
        alt.Chart(df.assign(**{"class": ["cat", "dog"]}))
        .mark_bar()
        .encode(
            x=alt.X("v:Q", title="value (%)"),
            y=alt.Y("class:N", title="class"),
            color=alt.Color("class:N", scale=alt.Scale(range=OKABE_ITO[:2])),
        )
        .to_dict()
    )
    assert not axis_problems(good) and not colour_problems(good) and not class_name_problems(good)
    layered = (
        alt.Chart(df).mark_point().encode(x=alt.X("v:Q", title="value"), y=alt.Y("v:Q", title="value"))
        + alt.Chart(df).mark_line().encode(x="v:Q", y="v:Q")
    ).to_dict()
    assert not axis_problems(layered)  # one titled layer titles the shared axis
    hidden = alt.Chart(df).mark_point().encode(x=alt.X("v:Q", axis=None), y=alt.Y("v:Q", title="value")).to_dict()
    assert not axis_problems(hidden)
    assert np.all([c.startswith("#") for c in ALLOWED_COLOURS])
