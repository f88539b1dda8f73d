"""Look and play: move SAE latents of one cached image, see the probe's prediction change.

    marimo run notebooks/manipulate.py            # serves the app (config: $MANIPULATE_CONFIG, default config.yaml)

Run it from the directory the config's relative paths start from (the repo root for the
demo). Everything is computed from the cache and the blocks after ``sae.layer``: picking an
image reads that image's cached block output once; every slider move is one re-forward of
one image (``pipeline.manipulate.Manipulator``). Needs the SAE (``sae.pt``, ``latents.zarr``)
and the probe of the SAE cache's task (``snakemake sae probes``).
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium", app_title="Look and play: SAE latents")


@app.cell
def _():
    import io
    import os
    from pathlib import Path

    import marimo as mo
    import numpy as np
    import pandas as pd

    return Path, io, mo, np, os, pd


@app.cell
def _(Path, mo, os):
    from pipeline.config import load_config
    from pipeline.manipulate import (
        Manipulator,
        before_after_image,
        probability_bars,
        probability_table,
    )

    config_path = Path(os.environ.get("MANIPULATE_CONFIG", "config.yaml"))
    try:
        cfg = load_config(config_path)
        m = Manipulator(cfg)
    except Exception as _err:  # noqa: BLE001  (shown to the user instead of a traceback)
        m = None
        load_error = f"{type(_err).__name__}: {_err}"
    else:
        load_error = ""
    mo.stop(
        m is None,
        mo.callout(mo.md(f"**Cannot start** with config `{config_path}` (cwd `{Path.cwd()}`):\n\n```\n{load_error}\n```\n\n"
                         "Build the SAE and the probe first (`snakemake sae probes`), or set `MANIPULATE_CONFIG`."), kind="danger"),
    )
    mo.md(
        f"""
        # Look and play: SAE latents → probe prediction

        Config `{config_path}` · model **{cfg.sae.cache.model}** on **{cfg.sae.cache.dataset}** ({m.task}) ·
        SAE on block {m.block} ({m.n_latents} latents, `{m.sae_path}`) · probe `{m.probe_stem}` ·
        latents ranked by **{m.rank_by}**.
        {"**Random-init weights (demo): numbers say nothing about the real model.**" if m.random_weights else ""}

        Each slider is in [−1, 1] and sets its latent to that fraction of the latent's max observed
        value on train ({m.max_value_note}), on {m.edit_task.edited_text}.
        A latent is edited only once its slider has left its start (the latent's current mean value on the class's tokens).
        """
    )
    return before_after_image, cfg, m, probability_bars, probability_table


@app.cell
def _(m, mo):
    ids = m.image_ids("val")
    lo = 1 if m.real_classes_only else 0
    image_picker = mo.ui.dropdown(options=ids, value=ids[0], searchable=True, label="validation image")
    class_options = {"(from the image)": None} | {f"{c} {m.class_names[c]}": c for c in range(lo, m.n_classes)}
    class_picker = mo.ui.dropdown(options=class_options, value="(from the image)", label="class")
    other_picker = mo.ui.dropdown(options=class_options, value="(from the image)", label="other class")
    mo.hstack([image_picker, class_picker, other_picker], justify="start")
    return class_picker, image_picker, other_picker


@app.cell
def _(class_picker, image_picker, m, mo, other_picker, pd):
    state = m.load_image("val", image_picker.value)
    try:
        target, other = m.default_classes(state, class_picker.value, other_picker.value)
    except Exception as _err:  # noqa: BLE001
        mo.stop(True, mo.callout(str(_err), kind="warn"))
    ranked = pd.concat(
        [m.rank_latents(state, target).assign(role="class"), m.rank_latents(state, other).assign(role="other class")],
        ignore_index=True,
    )
    mo.vstack([
        mo.md(f"**{state.image_id}** (index {state.index}) · class **{m.class_names[target]}** · other class **{m.class_names[other]}**"),
        mo.ui.table(
            ranked[["role", "class_name", "rank", "latent", "score", "score_kind", "value_on_class_tokens", "value_max_on_image", "train_max", "train_freq_pct"]].round(4),
            selection=None, label="top latents (values on this image, zeros included)", page_size=20,
        ),
    ])
    return other, ranked, state, target


@app.cell
def _(m, mo, np, ranked):
    latents = [int(s) for s in dict.fromkeys(ranked["latent"].tolist())]
    step = 0.05

    def start(s):
        row = ranked[ranked.latent == s].iloc[0]
        value = 0.0 if not np.isfinite(row.value_on_class_tokens) or row.train_max <= 0 else row.value_on_class_tokens / row.train_max
        return round(float(np.clip(np.round(value / step) * step, -1, 1)), 2)

    def label(s):
        rows = ranked[ranked.latent == s]
        where = ", ".join(f"{r.class_name} #{r.rank}" for r in rows.itertuples())
        now = rows.value_on_class_tokens.iloc[0]
        return f"latent {s} ({where}; now {0.0 if not np.isfinite(now) else now:.3g}, max on train {m.max_value_S[s]:.3g})"

    starts = [start(s) for s in latents]
    sliders = mo.ui.array(
        [
            mo.ui.slider(-1.0, 1.0, step=step, value=v, debounce=True, show_value=True, label=label(s))
            for s, v in zip(latents, starts)
        ],
    )
    mo.vstack([mo.md("**set latents** (fraction of the latent's max on train; start = its current mean value on the class's tokens)"), sliders.vstack()])
    return latents, sliders, starts


@app.cell
def _(before_after_image, io, latents, m, mo, np, pd, probability_bars, probability_table, sliders, starts, state):
    moved = [(s, float(v)) for s, v, v0 in zip(latents, sliders.value, starts) if abs(float(v) - v0) > 1e-9]
    result = m.apply(state, tuple(s for s, _ in moved), tuple(v for _, v in moved))
    readout = m.readout(result)
    edits = ", ".join(f"latent {s} → {v:+.2f} × {m.max_value_S[s]:.3g}" for s, v in moved) or "none (move a slider)"
    edits_ascii = ", ".join(f"latent {s} -> {v:+.2f} x {m.max_value_S[s]:.3g}" for s, v in moved) or "none"
    top = pd.DataFrame(
        [{"rank": i + 1, "before": f"{n} ({p:.1%})", "after": f"{n2} ({p2:.1%})"}
         for i, ((_, n, p), (_, n2, p2)) in enumerate(zip(m.top_classes(result.probs_before_C), m.top_classes(result.probs_after_C)))]
    )
    parts = [mo.md(f"**edits:** {edits}"), mo.Html(f'<p id="prediction-readout" style="font-family: monospace">{readout}</p>')]
    if m.edit_task.patch_counts:
        fig = before_after_image(
            m.image_rgb(state), result.pred_before, result.pred_after, tuple(m.reader("val").grid), m.class_names,
            title=f"val image {state.image_id}", lines=[f"edits: {edits_ascii}", f"{result.n_changed} of {len(result.pred_after)} patches changed"],
            random_weights=m.random_weights,
        )
        buf = io.BytesIO()
        fig.save(buf, format="PNG")
        parts.append(mo.image(buf.getvalue(), alt="segmentation before and after"))
    else:
        probs = probability_table(m, result)
        shown = {c for c, _, _ in m.top_classes(result.probs_before_C)} | {c for c, _, _ in m.top_classes(result.probs_after_C)}
        parts.append(probability_bars(probs[probs.class_id.isin(shown)], title=f"val image {state.image_id}: class probabilities",
                                      random_weights=m.random_weights, subtitle=[f"edits: {edits_ascii}"]))
    parts.append(mo.ui.table(top, selection=None, label="top classes (probability; segmentation: mean over patches)"))
    mo.vstack(parts)
    return (result,)


if __name__ == "__main__":
    app.run()
