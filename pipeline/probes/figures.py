"""Figures for probe sweeps: hyper-parameter sweep, per-class bars, confusion heat-map, masks.

Charts are altair, saved by :func:`pipeline.plots.save_chart` as ``stem.html``, ``.png`` and
``.svg``; the segmentation figure is a PIL-drawn PNG. Palettes are colour-blind safe
(Okabe-Ito, viridis). Charts read the tables as written: metric columns in percent (0–100,
``_pct`` columns, :mod:`pipeline.units`); with ``percent=True`` (the default) axis titles say
"(%)" and the per-class axis runs 0–100.

Dimension key: C classes, H/W pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from pipeline import atomic
from pipeline.plots import (
    OKABE_ITO,
    OTHER_COLOUR,
    RANDOM_WEIGHTS_NOTE,
    SEQUENTIAL_SCHEME,
    category_colours,
    class_palette,
    hex_rgb,
    label_font,
    save_chart,
    title_with_note,
)
from pipeline.probes.linear import best_member

__all__ = [
    "OTHER_COLOUR",
    "SegmentationLayout",
    "class_colours",
    "confusion_chart",
    "per_class_chart",
    "segmentation_figure",
    "sweep_chart",
]

# The colour each sequential scheme gives 0 (vega's definitions), for empty heat-map cells.
_SCHEME_ZERO = {"viridis": "#440154"}


def _check_stem(stem: str | Path) -> Path:
    # A stem like "lr0.001" is refused: wherever it is handled as a path, Path.suffix reads ".001"
    # as its extension (save_chart itself appends ".html" etc. and would keep the dot).
    stem = Path(stem)
    if stem.suffix:
        raise ValueError(f"figure stem {stem.name!r} contains a dot; use a name without one (e.g. lr1e-3).")
    return stem


def sweep_chart(
    df: pd.DataFrame,
    stem: str | Path,
    *,
    metric: str,
    metric_title: str,
    random_weights: bool,
    percent: bool = True,
) -> list[Path]:
    """``metric`` against learning rate (log axis), one panel per weight decay (shared y axis,
    so lines that would lie on top of each other stay visible); the best member (highest
    ``metric``, :func:`pipeline.probes.linear.best_member`) ringed.

    ``df`` is a :func:`pipeline.probes.linear.sweep_table` (columns ``lr``, ``weight_decay``,
    ``metric``). ``percent``: the metric is in percent (a ``_pct`` column).
    """
    stem = _check_stem(stem)
    for col in ("lr", "weight_decay", metric):
        if col not in df.columns:
            raise KeyError(f"sweep table has no column {col!r}; have {list(df.columns)}.")
    data = df.copy()
    data["weight decay"] = data["weight_decay"].map(lambda v: f"{v:g}")
    data["best"] = False
    if "member" in data.columns and data[metric].notna().any():
        data.loc[data["member"] == best_member(data, metric), "best"] = True
    wd_order = [f"{v:g}" for v in sorted(data["weight_decay"].unique(), reverse=True)]
    fmt = ".1f" if percent else ".4g"
    axis_title = f"{metric_title} (%)" if percent else metric_title
    # ticks at the swept rates only, written 1e-3 (default log ticks run into each other in a narrow panel)
    x = alt.X(
        "lr:Q",
        scale=alt.Scale(type="log"),
        title="learning rate (AdamW; log scale)",
        axis=alt.Axis(values=sorted(data["lr"].unique().tolist()), format=".0e", labelOverlap="greedy"),
    )
    y = alt.Y(f"{metric}:Q", scale=alt.Scale(zero=False), title=axis_title)
    base = alt.Chart(data).encode(
        x=x,
        y=y,
        color=alt.Color(
            "weight decay:N", sort=wd_order, scale=alt.Scale(domain=wd_order, range=OKABE_ITO), title="weight decay"
        ),
        tooltip=[
            alt.Tooltip("lr:Q", title="learning rate", format=".1e"),
            alt.Tooltip("weight_decay:Q", title="weight decay", format=".1e"),
            alt.Tooltip(f"{metric}:Q", title=axis_title, format=fmt),
        ]
        + ([alt.Tooltip("member:Q", title="member")] if "member" in data.columns else []),
    )
    best = (
        alt.Chart(data)
        .transform_filter(alt.datum.best == True)  # noqa: E712 (a Vega expression)
        .mark_point(shape="circle", size=300, filled=False, color="black", strokeWidth=2)
        .encode(x=x, y=y)
    )
    n_wd = len(wd_order)
    chart = (
        alt.layer(base.mark_line(), base.mark_point(filled=True, size=60), best)
        .properties(width=420 if n_wd == 1 else max(200, 600 // n_wd), height=280)
        .facet(column=alt.Column("weight decay:N", sort=wd_order, title="weight decay"))
        .properties(title=title_with_note(f"{metric_title} vs learning rate (ringed: best member)", random_weights))
    )
    return save_chart(chart, stem)


def per_class_chart(
    df_per_class: pd.DataFrame,
    stem: str | Path,
    *,
    value: str,
    title: str,
    random_weights: bool,
    label: str = "class_name",
    value_title: str | None = None,
    percent: bool = True,
) -> list[Path]:
    """Horizontal bars of ``value`` per class (``label`` column), best first.

    Rows with NaN ``value`` (classes absent from the ground truth) are left out; the subtitle
    says how many. ``percent``: ``value`` is in percent (a ``_pct`` column; axis 0–100).
    """
    stem = _check_stem(stem)
    for col in (label, value):
        if col not in df_per_class.columns:
            raise KeyError(f"per-class table has no column {col!r}; have {list(df_per_class.columns)}.")
    data = df_per_class[[label, value]].copy()
    n_nan = int(data[value].isna().sum())
    data = data.dropna(subset=[value]).sort_values(value, ascending=False)
    value_title = value_title or (f"{value.removesuffix('_pct')} (%)" if percent else value)
    subtitle = [RANDOM_WEIGHTS_NOTE] if random_weights else []
    if n_nan:
        subtitle.append(f"{n_nan} classes with no value (absent from ground truth) left out")
    chart = (
        alt.Chart(data)
        .mark_bar(color=OKABE_ITO[4])
        .encode(
            x=alt.X(
                f"{value}:Q",
                title=value_title,
                # ticks every 20 %: vega's default 10 % ticks ran into each other at this width
                axis=alt.Axis(values=[0, 20, 40, 60, 80, 100]) if percent else alt.Axis(tickCount=5),
                scale=alt.Scale(domain=[0, 100]) if percent and data[value].between(0, 100).all() else alt.Scale(),
            ),
            y=alt.Y(f"{label}:N", sort="-x", title="class"),
            tooltip=[
                alt.Tooltip(f"{label}:N", title="class"),
                alt.Tooltip(f"{value}:Q", format=".1f" if percent else ".4g"),
            ],
        )
        .properties(width=360, height=alt.Step(14), title=alt.TitleParams(title, subtitle=subtitle))
    )
    return save_chart(chart, stem)


def confusion_chart(
    conf: np.ndarray,
    class_names: Sequence[str],
    stem: str | Path,
    *,
    random_weights: bool,
    title: str = "Confusion matrix",
) -> list[Path]:
    """Heat-map of ``conf`` [C_true, C_pred] with each row normalised to sum to 1.

    A ``[C, C + 1]`` matrix (from :func:`pipeline.metrics.matched_confusion`) gets an
    "(unmatched)" last column. Cells with no samples are not stored (a 151-class matrix would
    otherwise be 23k marks); the plot background is the colour scale's 0 so they read as 0.
    """
    stem = _check_stem(stem)
    conf = np.asarray(conf)
    c = len(class_names)
    if conf.ndim != 2 or conf.shape[0] != c or conf.shape[1] not in (c, c + 1):
        raise ValueError(f"conf must be [{c}, {c}] or [{c}, {c + 1}] for {c} class names; got {conf.shape}.")
    pred_names = list(class_names) + (["(unmatched)"] if conf.shape[1] == c + 1 else [])
    row_sum = conf.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = conf / np.where(row_sum > 0, row_sum, 1)
    # Drop empty cells only when the background can show them as 0 (viridis' first colour).
    zero_fill = _SCHEME_ZERO.get(SEQUENTIAL_SCHEME)
    t_idx, p_idx = np.nonzero(conf) if zero_fill else np.indices(conf.shape).reshape(2, -1)
    data = pd.DataFrame(
        {
            "true class": [class_names[i] for i in t_idx],
            "predicted class": [pred_names[j] for j in p_idx],
            "count": conf[t_idx, p_idx],
            "fraction of true class": frac[t_idx, p_idx],
        }
    )
    size = max(240, min(14 * c, 2400))
    chart = (
        alt.Chart(data)
        .mark_rect()
        .encode(
            x=alt.X("predicted class:N", sort=pred_names, title="predicted class"),
            y=alt.Y("true class:N", sort=list(class_names), title="true class"),
            color=alt.Color(
                "fraction of true class:Q",
                scale=alt.Scale(scheme=SEQUENTIAL_SCHEME, domain=[0, 1]),
                title="fraction of row",
                legend=alt.Legend(format=".0%"),
            ),
            tooltip=[
                "true class:N",
                "predicted class:N",
                alt.Tooltip("count:Q", format=","),
                alt.Tooltip("fraction of true class:Q", format=".1%"),
            ],
        )
        .properties(
            width=size,
            height=size,
            title=alt.TitleParams(
                title,
                subtitle=([RANDOM_WEIGHTS_NOTE] if random_weights else []) + ["rows normalised to 1"],
            ),
        )
    )
    if zero_fill:
        chart = chart.configure_view(fill=zero_fill)
    return save_chart(chart, stem)


def class_colours(n_classes: int, class_names: Sequence[str] | None = None) -> np.ndarray:
    """``uint8 [C, 3]`` mask colours (:func:`pipeline.plots.class_palette`): ADE20K's own palette
    for its 150 classes, else a distinct colour per class; class 0 dark grey."""
    return class_palette(n_classes, class_names)


LEGEND_TITLE = "classes in these masks (0 = other, dark grey)"
COLUMNS = ("image", "ground truth", "prediction")


@dataclass(frozen=True)
class SegmentationLayout:
    """Where :func:`segmentation_figure` drew things: ``cells[row][col] = (left, top, right, bottom)``."""

    path: Path
    size: tuple[int, int]
    cells: tuple[tuple[tuple[int, int, int, int], ...], ...]


def _resize_nearest(mask_HW: np.ndarray, h: int, w: int) -> np.ndarray:
    if mask_HW.shape == (h, w):
        return mask_HW
    rows = (np.arange(h) * mask_HW.shape[0]) // h
    cols = (np.arange(w) * mask_HW.shape[1]) // w
    return mask_HW[rows[:, None], cols[None, :]]


def segmentation_figure(
    images: list[np.ndarray],
    true_masks: list[np.ndarray],
    pred_masks: list[np.ndarray],
    class_names: Sequence[str],
    path: str | Path,
    *,
    random_weights: bool,
    title: str = "Linear-probe segmentation",
) -> SegmentationLayout:
    """PNG grid: one row per image, columns image | ground truth | prediction, plus a legend.

    Images are ``uint8 [H, W, 3]``; masks are integer class maps, resized to their image with
    nearest-neighbour when their size differs (e.g. patch-level predictions). The legend lists
    every class present in the shown masks. Returns the layout (cell boxes) of what was drawn.
    """
    path = Path(path)
    if not (len(images) == len(true_masks) == len(pred_masks)) or not images:
        raise ValueError(
            f"need the same non-zero number of images, true and predicted masks; got "
            f"{len(images)}, {len(true_masks)}, {len(pred_masks)}."
        )
    n_classes = len(class_names)
    colours_C3 = class_colours(n_classes, class_names)
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    present: set[int] = set()
    for i, (img, t, p) in enumerate(zip(images, true_masks, pred_masks)):
        img = np.asarray(img)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"image {i} must be uint8 [H, W, 3]; got {img.dtype} {img.shape}.")
        h, w = img.shape[:2]
        masks = []
        for kind, m in (("true", t), ("predicted", p)):
            m = np.asarray(m)
            if m.ndim != 2 or m.dtype.kind not in "iu":
                raise ValueError(f"{kind} mask {i} must be a 2-D integer array; got {m.dtype} {m.shape}.")
            if m.size and (m.min() < 0 or m.max() >= n_classes):
                bad = int(m.min()) if m.min() < 0 else int(m.max())
                raise ValueError(f"{kind} mask {i} holds class {bad}, outside [0, {n_classes}).")
            m = _resize_nearest(m, h, w)
            present.update(np.unique(m).tolist())
            masks.append(colours_C3[m])
        rows.append((img, masks[0], masks[1]))

    pad, font, small = 8, label_font(16), label_font(13)
    line = 20
    max_w = max(r[0].shape[1] for r in rows)
    header_lines = [title] + ([RANDOM_WEIGHTS_NOTE] if random_weights else [])
    legend_title = LEGEND_TITLE
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max(
        [int(probe.textlength(header_lines[0], font=font))]
        + [int(probe.textlength(s, font=small)) for s in header_lines[1:] + [legend_title]]
    )
    # a column is as wide as its image or its header, whichever is wider (headers must not run together)
    col_w = max([max_w] + [int(probe.textlength(name, font=small)) + 4 for name in COLUMNS])
    width = max(pad + 3 * (col_w + pad), text_w + 2 * pad)
    top = pad + line * len(header_lines) + pad + line  # title block, then column headers
    # Legend: swatch + "id name" entries in as many columns as fit.
    legend = sorted(present)
    labels = [f"{k} {class_names[k]}" for k in legend]
    entry_w = 14 + 6 + max(int(probe.textlength(s, font=small)) for s in labels) + 16
    n_cols = max(1, (width - 2 * pad) // entry_w)
    legend_rows = -(-len(legend) // n_cols)
    body_h = sum(r[0].shape[0] + pad for r in rows)
    height = top + body_h + line + legend_rows * 18 + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = pad
    for j, text in enumerate(header_lines):
        draw.text((pad, y), text, fill=(0, 0, 0) if j == 0 else hex_rgb(OKABE_ITO[5]), font=font if j == 0 else small)
        y += line
    for col, name in enumerate(COLUMNS):
        draw.text((pad + col * (col_w + pad), top - line), name, fill=(0, 0, 0), font=small)
    cells = []
    y = top
    for img, true_rgb, pred_rgb in rows:
        h, w = img.shape[:2]
        row_cells = []
        for col, arr in enumerate((img, true_rgb, pred_rgb)):
            x = pad + col * (col_w + pad)
            canvas.paste(Image.fromarray(np.ascontiguousarray(arr)), (x, y))
            row_cells.append((x, y, x + w, y + h))
        cells.append(tuple(row_cells))
        y += h + pad
    draw.text((pad, y), legend_title, fill=(0, 0, 0), font=small)
    y += line
    for i, (k, text) in enumerate(zip(legend, labels)):
        x = pad + (i % n_cols) * entry_w
        yy = y + (i // n_cols) * 18
        draw.rectangle((x, yy + 1, x + 13, yy + 14), fill=tuple(int(v) for v in colours_C3[k]), outline=(0, 0, 0))
        draw.text((x + 20, yy), text, fill=(0, 0, 0), font=small)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(path) as tmp:
        canvas.save(tmp, format="PNG")
    return SegmentationLayout(path=path, size=(width, height), cells=tuple(cells))


def epoch_chart(
    table: pd.DataFrame,
    stem: str | Path,
    *,
    metric: str,
    metric_title: str,
    best_slug: str,
    random_weights: bool,
    percent: bool = True,
) -> list[Path]:
    """Per-epoch curves of a probe sweep (``epoch_table``): training loss and ``metric``, one line
    per member, the best member thick and black; saved via ``save_chart``. ``percent``: ``metric``
    is in percent (a ``_pct`` column)."""
    data = table.copy()
    data["best"] = data["slug"] == best_slug
    long = data.melt(id_vars=["epoch", "slug", "best"], value_vars=["train_loss", metric], var_name="term")
    long["term"] = long["term"].map({"train_loss": "training loss", metric: metric_title + (" (%)" if percent else "")})
    base = alt.Chart().encode(
        x=alt.X("epoch:O", title="epoch"),
        y=alt.Y("value:Q", title="value (term in the panel's title)", scale=alt.Scale(zero=False)),
        detail="slug:N",
        tooltip=[alt.Tooltip("slug:N", title="member"), "epoch:O", alt.Tooltip("value:Q", format=".4g")],
    )
    others = (
        base.transform_filter(~alt.datum.best)
        .mark_line(point=True, opacity=0.6)
        .encode(
            color=alt.Color("slug:N", title="member (lr, wd)", scale=category_colours(sorted(data["slug"].unique())))
        )
    )
    best = base.transform_filter(alt.datum.best).mark_line(point=True, color="black", strokeWidth=3)
    chart = (
        alt.layer(others, best, data=long)
        .properties(width=320, height=200)
        .facet(column=alt.Column("term:N", title=None))
        .resolve_scale(y="independent")
        .properties(title=title_with_note(f"Probe sweep per epoch (black: best member {best_slug})", random_weights))
    )
    return save_chart(chart, stem)
