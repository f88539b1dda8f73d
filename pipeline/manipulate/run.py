"""One configured manipulate example: choose the edit, apply it, write tables, charts and a summary.

Outputs of :func:`run_example` in ``<results>/manipulate/<name>/``: ``latents.csv`` (train
firing frequency and F1 scores in percent, as every table: :mod:`pipeline.units`),
``probabilities.csv`` (class probabilities before / after in percent; segmentation: mean over
patches of the softmax over real classes, plus patch counts), ``probabilities.{html,png,svg}`` (bars,
before vs after), ``maps.png`` (segmentation: image | before | after with a legend; changed
patches outlined) and ``summary.json``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import atomic
from pipeline.config import Config, ManipulateExample
from pipeline.layout import MANIPULATE_FILES, manipulate_dir, manipulate_files, manipulate_files_of
from pipeline.manipulate.figures import before_after_image, probability_chart
from pipeline.manipulate.session import Manipulator
from pipeline.manipulate.state import EditResult, ImageState, ManipulateError
from pipeline.plan import manipulate_sae
from pipeline.provenance import record

FILES = MANIPULATE_FILES  # per task (pipeline.layout owns the list)


out_dir = manipulate_dir  # ``<results>/manipulate/<name>`` (pipeline.layout)


def example_outputs(cfg: Config, name: str) -> list[Path]:
    """The files :func:`run_example` writes for an example of this config's task."""
    manipulate_sae(cfg)
    return manipulate_files(cfg, name)


def resolve_edit(
    m: Manipulator, state: ImageState, example: ManipulateExample
) -> tuple[int, int, pd.DataFrame, tuple[int, ...], tuple[float, ...]]:
    """Classes, the ranked latents table of both, and the (latents, unit values) to set."""
    target = m.class_id(example.target_class, f"manipulate example {example.name}: class")
    other = m.class_id(example.other_class, f"manipulate example {example.name}: other_class")
    target, other = m.default_classes(state, target, other)
    table = pd.concat(
        [m.rank_latents(state, target).assign(role="class"), m.rank_latents(state, other).assign(role="other class")],
        ignore_index=True,
    )
    if example.latents:
        latents, values = tuple(example.latents), tuple(example.values)
    else:
        values = tuple(example.values) or (-1.0, 1.0)
        firsts = [table[table.role == role]["latent"] for role in ("class", "other class")]
        if any(f.empty for f in firsts):
            raise ManipulateError(
                f"manipulate example {example.name}: no ranked latent for class or other class; name latents"
            )
        latents = (int(firsts[0].iloc[0]), int(firsts[1].iloc[0]))
        if latents[0] == latents[1]:  # the same latent tops both: keep the first value only
            latents, values = latents[:1], values[:1]
    chosen = dict(zip(latents, values))
    table["unit_value"] = [chosen.get(int(s), np.nan) for s in table["latent"]]
    table["set_to"] = [chosen[int(s)] * m.max_value_S[int(s)] if int(s) in chosen else np.nan for s in table["latent"]]
    extra = [s for s in latents if s not in set(table["latent"])]
    if extra:  # named latents outside both top lists: list them too, with their values
        f_PS = state.f_PS.cpu().numpy()
        table = pd.concat(
            [
                table,
                pd.DataFrame(
                    [
                        {
                            "role": "chosen",
                            "class_id": -1,
                            "class_name": "",
                            "rank": 0,
                            "latent": s,
                            "score": np.nan,
                            "score_kind": "named in the config",
                            "value_on_class_tokens": np.nan,
                            "value_max_on_image": float(f_PS[:, s].max()),
                            "train_max": float(m.max_value_S[s]),
                            "train_freq_pct": 100.0 * float(m.freq_S[s]),
                            "unit_value": chosen[s],
                            "set_to": chosen[s] * m.max_value_S[s],
                        }
                        for s in extra
                    ]
                ),
            ],
            ignore_index=True,
        )
    cols = [
        "role",
        "class_id",
        "class_name",
        "rank",
        "latent",
        "score",
        "score_kind",
        "value_on_class_tokens",
        "value_max_on_image",
        "train_max",
        "train_freq_pct",
        "unit_value",
        "set_to",
    ]
    return target, other, table[cols], latents, values


def probability_table(m: Manipulator, result: EditResult) -> pd.DataFrame:
    """One row per class: probabilities before / after in percent (``prob_before_pct``,
    ``prob_after_pct``, as every table: :mod:`pipeline.units`), ranks, and patch counts (segmentation)."""
    lo = 1 if m.real_classes_only else 0
    rows = []
    rank_b = {c: i + 1 for i, c in enumerate(np.argsort(-result.probs_before_C, kind="stable"))}
    rank_a = {c: i + 1 for i, c in enumerate(np.argsort(-result.probs_after_C, kind="stable"))}
    before, after = result.counts(m.n_classes)
    for c in range(lo, m.n_classes):
        row = {
            "class_id": c,
            "class_name": m.class_names[c],
            "prob_before_pct": 100.0 * result.probs_before_C[c],
            "prob_after_pct": 100.0 * result.probs_after_C[c],
            "rank_before": rank_b[c],
            "rank_after": rank_a[c],
        }
        if m.edit_task.patch_counts:
            row.update(patches_before=int(before[c]), patches_after=int(after[c]))
        rows.append(row)
    return pd.DataFrame(rows)


def run_example(m: Manipulator, example: ManipulateExample, out: Path | None = None) -> dict[str, Any]:
    """Everything for one example in ``out`` (default ``<results>/manipulate/<name>``); returns the summary."""
    files = manipulate_files_of(m.cfg, example.name, out)
    files.dir.mkdir(parents=True, exist_ok=True)
    state = m.load_image(example.split, example.image)
    target, other, table, latents, values = resolve_edit(m, state, example)
    result = m.apply(state, latents, values)
    atomic.write_csv(table, files.latents_csv, index=False, float_format="%.6g")
    probs = probability_table(m, result)
    atomic.write_csv(probs, files.probabilities_csv, index=False, float_format="%.6g")
    edit_text = ", ".join(
        f"latent {s} -> {u:+.2f} x {m.max_value_S[s]:.3g} = {t:.3g}"
        for s, u, t in zip(latents, values, result.target_values)
    )
    shown = {c for c, _, _ in m.top_classes(result.probs_before_C)} | {
        c for c, _, _ in m.top_classes(result.probs_after_C)
    }
    where = m.edit_task.probabilities_text
    probability_chart(
        probs[probs.class_id.isin(shown)],
        files.probabilities_chart,
        title=f"{example.name}: probe class probabilities before / after the edit",
        random_weights=m.random_weights,
        subtitle=[f"{state.split} image {state.image_id} ({where})", f"block {m.block}: {edit_text}"],
    )
    if m.edit_task.patch_counts:
        grid = tuple(m.reader(state.split).grid)
        fig = before_after_image(
            m.image_rgb(state),
            result.pred_before,
            result.pred_after,
            grid,
            m.class_names,
            title=f"{example.name}: {state.split} image {state.image_id}",
            lines=[
                f"block {m.block} patch tokens: {edit_text}",
                f"{result.n_changed} of {len(result.pred_after)} patches changed",
            ],
            random_weights=m.random_weights,
        )
        with atomic.replacing(files.maps_png) as tmp:
            fig.save(tmp, format="PNG")
    summary = {
        "example": example.name,
        "task": m.task,
        "split": state.split,
        "image_index": state.index,
        "image_id": state.image_id,
        "class": {"id": target, "name": m.class_names[target]},
        "other_class": {"id": other, "name": m.class_names[other]},
        "rank_by": m.rank_by,
        "latents": list(latents),
        "unit_values": list(values),
        "set_to": list(result.target_values),
        "value_scale": m.max_value_note,
        "edited_tokens": m.edit_task.edited_text,
        "n_changed": result.n_changed,
        "n_tokens_predicted": len(result.pred_after),
        "top_classes_before": [
            {"id": c, "name": n, "probability": p} for c, n, p in m.top_classes(result.probs_before_C)
        ],
        "top_classes_after": [
            {"id": c, "name": n, "probability": p} for c, n, p in m.top_classes(result.probs_after_C)
        ],
        "readout": m.readout(result),
        "block": m.block,
        "sae": str(m.sae_path),
        "sae_member": m.sae_cfg.get("member"),
        "probe": str(m.probe_stem),
        "store": str(m.reader(state.split).path),
        "store_config_hash": m.reader(state.split).attrs["config_hash"],
        "random_weights": m.random_weights,
        "device": str(m.device),
        "files": [str(f) for f in files.all()],
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "provenance": record(m.cfg, "manipulate", example=example.name),
    }
    atomic.write_json(files.summary_json, summary, indent=1, default=float)
    return summary
