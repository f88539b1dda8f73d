"""Saving altair charts: every figure is written as interactive HTML and a static PNG and SVG.

Colour-blind-safe palettes live here so every stage uses the same ones.
"""

from __future__ import annotations

from pathlib import Path

import altair as alt

# Okabe & Ito (2008), the usual colour-blind-safe qualitative palette.
OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000"]
SEQUENTIAL_SCHEME = "viridis"

RANDOM_WEIGHTS_NOTE = "random-init weights (demo): numbers say nothing about the real model"


def save_chart(chart: alt.TopLevelMixin, stem: str | Path, *, png_scale: float = 2.0) -> list[Path]:
    """Write ``chart`` to ``stem.html``, ``stem.png`` and ``stem.svg``; return the paths.

    PNG and SVG are rendered offline with vl-convert (no browser, no network).
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    # append, not with_suffix: a stem like "lr0.001" must not lose its ".001"
    paths = [stem.parent / f"{stem.name}.{ext}" for ext in ("html", "png", "svg")]
    chart.save(str(paths[0]), inline=True)
    chart.save(str(paths[1]), scale_factor=png_scale)
    chart.save(str(paths[2]))
    return paths


def title_with_note(title: str, random_weights: bool) -> alt.TitleParams:
    """A chart title that says plainly when the model's weights are random."""
    return alt.TitleParams(title, subtitle=[RANDOM_WEIGHTS_NOTE] if random_weights else [])
