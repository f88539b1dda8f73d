"""Manipulate's pictures: class-probability bars before / after, and the before | after patch maps.

Pure drawing: tables and arrays in, charts and PIL images out (no model, no store).
"""

from __future__ import annotations

from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from pipeline.plots import OKABE_ITO, RANDOM_WEIGHTS_NOTE, hex_rgb, label_font, save_chart
from pipeline.probes.figures import LEGEND_TITLE, class_colours


def probability_bars(
    table: pd.DataFrame, *, title: str, random_weights: bool, subtitle: list[str] | None = None
) -> alt.Chart:
    """Horizontal bars: each class's probability before and after the edit (``prob_*_pct``, percent)."""
    long = table.melt(
        id_vars=["class_name"],
        value_vars=["prob_before_pct", "prob_after_pct"],
        var_name="state",
        value_name="probability",
    )
    long["state"] = long["state"].map({"prob_before_pct": "before", "prob_after_pct": "after"})
    order = table.sort_values("prob_before_pct", ascending=False)["class_name"].tolist()
    return (
        alt.Chart(long)
        .mark_bar()
        .encode(
            x=alt.X(
                "probability:Q",
                title="probability (%)",
                axis=alt.Axis(values=[0, 25, 50, 75, 100]),
                scale=alt.Scale(domain=[0, 100]),
            ),
            y=alt.Y("class_name:N", sort=order, title="class"),
            yOffset=alt.YOffset("state:N", sort=["before", "after"]),
            color=alt.Color(
                "state:N",
                sort=["before", "after"],
                title="prediction",
                scale=alt.Scale(domain=["before", "after"], range=[OKABE_ITO[1], OKABE_ITO[5]]),
            ),
            tooltip=[
                alt.Tooltip("class_name:N", title="class"),
                alt.Tooltip("state:N", title="prediction"),
                alt.Tooltip("probability:Q", format=".1f", title="probability (%)"),
            ],
        )
        .properties(
            width=360,
            height=alt.Step(12),
            title=alt.TitleParams(title, subtitle=([RANDOM_WEIGHTS_NOTE] if random_weights else []) + (subtitle or [])),
        )
    )


def probability_chart(
    table: pd.DataFrame, stem: Path, *, title: str, random_weights: bool, subtitle: list[str] | None = None
) -> list[Path]:
    """:func:`probability_bars` saved as ``stem.html``, ``.png`` and ``.svg``."""
    return save_chart(probability_bars(table, title=title, random_weights=random_weights, subtitle=subtitle), stem)


def _grid(mask_P: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    return np.asarray(mask_P).reshape(grid)


def before_after_image(
    image: np.ndarray | None,
    before_P: np.ndarray,
    after_P: np.ndarray,
    grid: tuple[int, int],
    class_names: tuple[str, ...] | list[str],
    *,
    title: str,
    lines: list[str] = (),
    random_weights: bool = False,
    min_size: int = 224,
) -> Image.Image:
    """image | before | after (patch maps in class colours, changed patches outlined) + legend."""
    rows, cols = grid
    colours = class_colours(len(class_names), class_names)
    side = max(min_size, image.shape[0] if image is not None else 0)
    cell = max(1, side // rows)
    side = cell * rows
    maps = [_grid(before_P, grid), _grid(after_P, grid)]
    changed = maps[0] != maps[1]
    panels = []
    if image is not None:
        panels.append(("image", Image.fromarray(image).resize((cell * cols, side), Image.BICUBIC)))
    for name, m in (("before", maps[0]), ("after (changed patches outlined)", maps[1])):
        rgb = colours[m].repeat(cell, 0).repeat(cell, 1)
        panels.append((name, Image.fromarray(np.ascontiguousarray(rgb))))
    pad, font, small, line = 8, label_font(16), label_font(13), 20
    header = [title] + ([RANDOM_WEIGHTS_NOTE] if random_weights else []) + list(lines)
    present = sorted(set(np.unique(maps[0]).tolist()) | set(np.unique(maps[1]).tolist()))
    labels = [f"{k} {class_names[k]}" for k in present]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = pad + len(panels) * (cell * cols + pad)
    width = max(
        width, max(int(probe.textlength(s, font=font if i == 0 else small)) for i, s in enumerate(header)) + 2 * pad
    )
    entry_w = 14 + 6 + max(int(probe.textlength(s, font=small)) for s in labels) + 16
    n_cols = max(1, (width - 2 * pad) // entry_w)
    legend_rows = -(-len(labels) // n_cols)
    top = pad + line * len(header) + pad + line
    height = top + side + pad + line + legend_rows * 18 + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = pad
    for i, text in enumerate(header):
        colour = (0, 0, 0) if i == 0 else (hex_rgb(OKABE_ITO[5]) if random_weights and i == 1 else (40, 40, 40))
        draw.text((pad, y), text, fill=colour, font=font if i == 0 else small)
        y += line
    x = pad
    for name, panel in panels:
        draw.text((x, top - line), name, fill=(0, 0, 0), font=small)
        canvas.paste(panel, (x, top))
        if name.startswith("after"):
            for r, c in zip(*np.nonzero(changed)):
                box = (x + c * cell, top + r * cell, x + (c + 1) * cell - 1, top + (r + 1) * cell - 1)
                draw.rectangle(box, outline=(255, 255, 255), width=max(1, cell // 10))
                draw.rectangle((box[0] + 1, box[1] + 1, box[2] - 1, box[3] - 1), outline=(0, 0, 0), width=1)
        x += cell * cols + pad
    y = top + side + pad
    draw.text((pad, y), LEGEND_TITLE, fill=(0, 0, 0), font=small)
    y += line
    for i, (k, text) in enumerate(zip(present, labels)):
        xx, yy = pad + (i % n_cols) * entry_w, y + (i // n_cols) * 18
        draw.rectangle((xx, yy + 1, xx + 13, yy + 14), fill=tuple(int(v) for v in colours[k]), outline=(0, 0, 0))
        draw.text((xx + 20, yy), text, fill=(0, 0, 0), font=small)
    return canvas
