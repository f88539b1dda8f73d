"""Quantify SAE feature interventions: per-class change tables and ``results/quantitative.csv``.

Reads the VAL store's block-``l`` output, the chosen SAE (``sae.pt`` + its input scaling),
its latent statistics on train (max observed value per latent, firing frequency), the
class–latent F1 table on train, and the best segmentation probe. Writes, per method,
``<out>/<method>.csv`` (one row per class), the summary ``quantitative.csv`` (one row per
method) and a chart.

Dimension key: N val images, B images in a chunk, T tokens, P patches, D width, C classes,
E edits (method × class jobs), G edits stacked into one re-forward.

Baseline predictions come from the same re-forward path as the edits (cached block-l acts →
blocks l+1…N−1 → final norm → probe → argmax over real classes), computed once and reused
for every method. Each edit is applied to every patch token of every val image.

Predictions: the argmax over the real classes 1 … C-1, or over all C classes when the probe
was trained with ``train_on_other`` (read from the probe's ``best.json``, as manipulate does).

For class c (each real class 1 … C-1 the baseline predicts at least once; class = original
prediction, as in saev), over all val patches:

- ``target_lost``   original-c patches now not c
- ``target_kept``   original-c patches still c
- ``other_gained``  original-not-c patches now c
- ``other_changed`` original-not-c patches whose prediction changed at all
- target change rate = 100 · lost / (lost + kept);  other change rate = 100 · changed / #original-not-c

saev's "target patches" are what the baseline *predicts* as c; with a probe that cannot
predict 0, unlabelled background patches count as targets. The same counts restricted to
LABELLED patches sit beside them (``*_labelled``): target = original-c patches whose ground
truth (``patch_label``) is c; other = original-not-c patches whose ground truth is a real
class other than c (truth 0, "other/unlabelled", left out of both).

Summaries report, in PERCENT, the macro mean over the evaluated classes with its SAMPLE
standard deviation (ddof 1, over the evaluated classes: ``*_std_pct``), saev's POPULATION
standard deviation over ALL real classes 1 … C-1 (``*_std_saev_pct``, saev's ``np.std`` over its
150 classes: a class not evaluated counts target rate 0 and, as in saev's one edited pass, other
rate = the fraction of all patches changed, see :func:`summarize`), and the pooled ratio
(Σ lost / Σ original-c). saev's quantify printed the pooled ratio as a fraction and called
it a mean percentage; we report both, named for what they are.

Methods: ``quantify.methods`` names entries of :data:`pipeline.methods.METHOD_REGISTRY`
(one module each); each picks one class's edit, drawing (if at all) from a generator seeded by
(``quantify.seed``, class, the method's name).

Random-vector norm: |scale| · median over live latents of the max observed f_i, divided by
the SAE input scalar. That is the model-space norm of a typical feature edit on a patch where
the feature is off (decoder rows have unit norm in the SAE's input space).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd
import torch

from pipeline import atomic
from pipeline.cache import CacheReader
from pipeline.config import ConfigError, QuantifyConfig
from pipeline.interventions import LatentEditor, ReforwardPredictor
from pipeline.methods import METHOD_REGISTRY, Edit, MethodContext, Skipped, method_rng
from pipeline.plots import OKABE_ITO, save_chart, title_with_note
from pipeline.progress import Progress

TOP_INTO = 3


@dataclass(frozen=True)
class Job:
    """One (method, class) intervention."""

    method: str
    class_id: int
    edit: Edit
    label: str  # latent ids ("12", "3+7") or "random vector"
    note: str = ""


# ---- counting --------------------------------------------------------------
class CountingError(ValueError):
    """Prediction arrays that cannot be counted (shapes, ids, emptiness); the message says which."""


def _check_ids(name: str, t: torch.Tensor, n_classes: int) -> None:
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise CountingError(f"{name}: class ids must be integers, got dtype {t.dtype}")
    bad = (t < 0) | (t >= n_classes)
    if bool(bad.any()):
        raise CountingError(
            f"{name}: class id {int(t[bad][0])} is outside [0, {n_classes}) ({int(bad.sum())} such values)"
        )


def change_counts(
    orig: np.ndarray | torch.Tensor,
    new: np.ndarray | torch.Tensor,
    class_id: int,
    n_classes: int,
    truth: np.ndarray | torch.Tensor | None = None,
) -> dict:
    """The four counts (saev's, and restricted to labelled patches when ``truth`` is given) and the
    'changed into' histogram [C] for one class.

    ``orig``, ``new`` and ``truth`` must have the same shape, hold ids in ``[0, n_classes)`` and
    not be empty: anything else raises :class:`CountingError` instead of counting wrong numbers.
    """
    orig, new = torch.as_tensor(orig), torch.as_tensor(new)
    if orig.shape != new.shape:
        raise CountingError(f"original predictions have shape {tuple(orig.shape)}, edited ones {tuple(new.shape)}")
    if orig.numel() == 0:
        raise CountingError("no predictions to count (empty input)")
    if not 0 <= class_id < n_classes:
        raise CountingError(f"class {class_id} is outside [0, {n_classes})")
    _check_ids("original predictions", orig, n_classes)
    _check_ids("edited predictions", new, n_classes)
    shape = tuple(orig.shape)
    orig, new = orig.reshape(-1), new.reshape(-1)
    is_c, now_c = orig == class_id, new == class_id
    lost = is_c & ~now_c
    changed = new != orig
    out = {
        "target_lost": int(lost.sum()),
        "target_kept": int((is_c & now_c).sum()),
        "other_gained": int((~is_c & now_c).sum()),
        "other_changed": int((~is_c & changed).sum()),
        "n_target": int(is_c.sum()),
        "n_other": int((~is_c).sum()),
        "into": torch.bincount(new[lost].long(), minlength=n_classes).numpy(),
    }
    if truth is not None:
        truth = torch.as_tensor(truth)
        if tuple(truth.shape) != shape:
            raise CountingError(f"ground truth has shape {tuple(truth.shape)}, the predictions {shape}")
        _check_ids("ground truth", truth, n_classes)
        truth = truth.reshape(-1)
        target = is_c & (truth == class_id)
        other = ~is_c & (truth != 0) & (truth != class_id)
        out.update(
            {
                "n_target_labelled": int(target.sum()),
                "target_lost_labelled": int((target & ~now_c).sum()),
                "n_other_labelled": int(other.sum()),
                "other_changed_labelled": int((other & changed).sum()),
            }
        )
    return out


RATES = {  # rate column -> (numerator, denominator)
    "target_change_rate_pct": ("target_lost", "n_target"),
    "other_change_rate_pct": ("other_changed", "n_other"),
    "target_change_rate_labelled_pct": ("target_lost_labelled", "n_target_labelled"),
    "other_change_rate_labelled_pct": ("other_changed_labelled", "n_other_labelled"),
}


def add_rates(row: dict) -> dict:
    """Target and other change rates in percent, saev's and labelled-only (NaN when the denominator is 0)."""
    for rate, (num, den) in RATES.items():
        if den in row:
            row[rate] = 100.0 * row[num] / row[den] if row[den] else float("nan")
    return row


# rate column -> the counts whose pooled ratio saev's formula gives a class it does not evaluate
UNEVALUATED_FILL = {
    "target_change_rate_pct": None,  # 0: no target patches
    "other_change_rate_pct": (("target_lost", "other_changed"), ("n_target", "n_other")),
    "target_change_rate_labelled_pct": None,
    "other_change_rate_labelled_pct": (
        ("target_lost_labelled", "other_changed_labelled"),
        ("n_target_labelled", "n_other_labelled"),
    ),
}


def _saev_fill(rated: pd.DataFrame, rate: str) -> float:
    """The rate saev's ``Report`` gives a class without target patches, in percent.

    saev (``contrib/semseg/quantitative.py``, ``compute_class_results`` and ``Report``) counts a
    class c over ONE edited pass: its other patches are all patches not predicted c, and a class
    never predicted has every patch as "other", so its other change rate is the fraction of ALL
    patches that changed (its target rate is 0). Here each class has its own edit; the same
    fraction is Σ changed / Σ patches over the evaluated edits (changed = target lost + other
    changed, patches = target + other), which equals saev's number exactly when every row comes
    from one edited pass.
    """
    fill = UNEVALUATED_FILL[rate]
    if fill is None:
        return 0.0
    (lost, changed), (n_target, n_other) = fill
    total = float(rated[n_target].to_numpy(dtype=float).sum() + rated[n_other].to_numpy(dtype=float).sum())
    n_changed = float(rated[lost].to_numpy(dtype=float).sum() + rated[changed].to_numpy(dtype=float).sum())
    return 100.0 * n_changed / total if total else 0.0


def summarize(per_class: pd.DataFrame, n_real_classes: int | None = None) -> dict:
    """Macro mean and sample std over the evaluated classes, saev's population std over all
    ``n_real_classes``, and pooled ratios; all in percent.

    saev's std (``*_std_saev_pct``, ``np.std`` over classes 1 … C-1) gives each class not
    evaluated here the rate saev's code gives a class without target patches (:func:`_saev_fill`:
    0 for target rates, the overall changed fraction for other rates), and an evaluated class
    whose rate is undefined (no other patches) 0, as saev does.
    """
    rated = per_class.dropna(subset=["target_change_rate_pct"])
    out = {"n_classes": int(len(rated))}
    for rate, (num, den) in RATES.items():
        if rate not in rated.columns:
            continue
        kind = rate.removesuffix("_pct")
        rates = rated[rate].to_numpy(float)
        finite = rates[np.isfinite(rates)]
        out[f"{kind}_mean_pct"] = float(finite.mean()) if finite.size else float("nan")
        out[f"{kind}_std_pct"] = float(finite.std(ddof=1)) if finite.size > 1 else float("nan")
        if n_real_classes is not None:
            padded = np.full(max(n_real_classes, rates.size), _saev_fill(rated, rate))
            padded[: rates.size] = np.nan_to_num(rates, nan=0.0)
            out[f"{kind}_std_saev_pct"] = float(padded.std(ddof=0))
        den_sum = rated[den].sum()
        out[f"{kind}_pooled_pct"] = float(100.0 * rated[num].sum() / den_sum) if den_sum else float("nan")
    return out


STD_NOTE = (
    "*_std_pct: sample std (ddof=1) over the evaluated classes; *_std_saev_pct: population std (ddof=0) "
    "over all real classes, a class not evaluated counting as saev counts a class without target patches "
    "(target rate 0, other rate the overall changed fraction)"
)


# ---- choosing edits ----------------------------------------------------------
def resolve_manual(
    manual: dict[str, tuple[int, ...]], class_names: tuple[str, ...], n_latents: int, source: str
) -> dict[int, tuple[int, ...]]:
    """Config keys (class name or id) → class id; latents checked against S."""
    out = {}
    for key, latents in manual.items():
        if key.isdigit():
            class_id = int(key)
            if not 0 < class_id < len(class_names):
                raise ConfigError(
                    f"{source}: key quantify/manual/{key}: class id {class_id} is not a real class (1..{len(class_names) - 1})"
                )
        elif key in class_names:
            class_id = class_names.index(key)
        else:
            raise ConfigError(
                f"{source}: key quantify/manual/{key}: unknown class name {key!r}; classes: {', '.join(class_names[1:])}"
            )
        for latent in latents:
            if not 0 <= latent < n_latents:
                raise ConfigError(
                    f"{source}: key quantify/manual/{key}: latent {latent} does not exist (the SAE has {n_latents} latents: 0..{n_latents - 1})"
                )
        out[class_id] = tuple(latents)
    return out


def make_jobs(
    cfg: QuantifyConfig,
    classes: list[int],
    *,
    max_value_S: np.ndarray,
    freq_S: np.ndarray,
    f1,
    manual: dict[int, tuple[int, ...]],
    scalar: float,
    d_model: int,
) -> tuple[list[Job], list[dict]]:
    """The (method, class) edits, and the classes a method skips (with the reason).

    Each method is looked up in :data:`pipeline.methods.METHOD_REGISTRY`; its generator for
    class ``c`` is seeded by (``cfg.seed``, ``c``, the method's name).
    """
    if not np.any(freq_S > 0):
        raise ValueError("the SAE has no latent that fires on the train split; nothing to intervene with")
    ctx = MethodContext(
        scale=cfg.scale,
        max_value_S=max_value_S,
        freq_S=freq_S,
        max_firing_fraction=cfg.max_firing_fraction,
        f1=f1,
        manual=manual,
        vector_norm=abs(cfg.scale) * float(np.median(max_value_S[freq_S > 0])) / scalar,
        d_model=d_model,
    )
    jobs, skipped = [], []
    for method in cfg.methods:
        choose = METHOD_REGISTRY[method].choose
        for c in classes:
            chosen = choose(ctx, c, method_rng(cfg.seed, c, method))
            if isinstance(chosen, Skipped):
                skipped.append({"method": method, "class_id": c, "reason": chosen.reason})
            else:
                jobs.append(Job(method, c, chosen.edit, chosen.label, chosen.note))
    return jobs, skipped


# ---- the two passes over the val store -------------------------------------
@torch.no_grad()
def baseline_predictions(
    reader: CacheReader, layer: int, predictor: ReforwardPredictor, device, batch_size: int, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(image indices [N], predictions [N, P]) through the re-forward path on the unedited cache."""
    images, preds = [], []
    bar = Progress("quantify baseline (unedited re-forward)", int(reader.valid.sum()), "img", enabled=progress)
    for image_B, acts_BTD in reader.iter_chunks(layer, tokens="all"):
        for s in range(0, len(image_B), batch_size):
            acts = torch.from_numpy(acts_BTD[s : s + batch_size]).to(device, torch.float32)
            preds.append(predictor.predict(acts).cpu())
            bar.update(acts.shape[0])
        images.append(image_B)
    bar.close()
    return np.concatenate(images), torch.cat(preds).numpy()


@torch.no_grad()
def edited_counts(
    reader: CacheReader,
    layer: int,
    jobs: list[Job],
    editor: LatentEditor,
    predictor: ReforwardPredictor,
    orig_NP: np.ndarray,
    *,
    device,
    batch_size: int,
    n_classes: int,
    truth_NP: np.ndarray | None = None,
    progress: bool = True,
) -> list[dict]:
    """Accumulate change counts per job over all val patches; edits are stacked G per re-forward."""
    totals = [None] * len(jobs)
    row = 0
    bar = Progress(
        f"quantify ({len(jobs)} edit jobs)", int(reader.valid.sum()) * len(jobs), "edited img", enabled=progress
    )
    for image_B, acts_BTD in reader.iter_chunks(layer, tokens="all"):
        for s in range(0, len(image_B), batch_size):
            acts = torch.from_numpy(acts_BTD[s : s + batch_size]).to(device, torch.float32)
            b = acts.shape[0]
            orig = torch.from_numpy(orig_NP[row : row + b])
            truth = torch.from_numpy(truth_NP[row : row + b]) if truth_NP is not None else None
            group = max(1, batch_size // b)  # G edits of this batch per forward: G·b ≈ batch_size images
            for j0 in range(0, len(jobs), group):
                chunk_jobs = jobs[j0 : j0 + group]
                stacked = torch.cat([editor.apply(acts, job.edit) for job in chunk_jobs])  # [G·b, T, D]
                new = predictor.predict(stacked).cpu().view(len(chunk_jobs), b, -1)
                for g, job in enumerate(chunk_jobs):
                    counts = change_counts(orig, new[g], job.class_id, n_classes, truth)
                    j = j0 + g
                    totals[j] = counts if totals[j] is None else {k: totals[j][k] + v for k, v in counts.items()}
                bar.update(b * len(chunk_jobs))
            row += b
    bar.close()
    return totals


# ---- tables and chart --------------------------------------------------------
def per_class_table(
    jobs: list[Job], totals: list[dict], class_names: tuple[str, ...], skipped: list[dict], method: str
) -> pd.DataFrame:
    rows = []
    for job, counts in zip(jobs, totals):
        if job.method != method:
            continue
        into = counts["into"].copy()
        row = {
            "class_id": job.class_id,
            "class_name": class_names[job.class_id],
            "latent": job.label,
            "status": "evaluated",
            "note": job.note,
        }
        row.update(
            {
                k: counts[k]
                for k in (
                    "n_target",
                    "target_lost",
                    "target_kept",
                    "other_gained",
                    "other_changed",
                    "n_other",
                    "n_target_labelled",
                    "target_lost_labelled",
                    "n_other_labelled",
                    "other_changed_labelled",
                )
                if k in counts
            }
        )
        add_rates(row)
        for rank in range(TOP_INTO):
            top = int(into.argmax())
            ok = into[top] > 0
            row[f"into_{rank + 1}"] = class_names[top] if ok else ""
            row[f"into_{rank + 1}_count"] = int(into[top]) if ok else 0
            into[top] = 0
        rows.append(row)
    for skip in skipped:
        if skip["method"] == method:
            rows.append(
                {
                    "class_id": skip["class_id"],
                    "class_name": class_names[skip["class_id"]],
                    "latent": "",
                    "status": "skipped",
                    "note": skip["reason"],
                }
            )
    table = pd.DataFrame(rows).sort_values("class_id", kind="stable").reset_index(drop=True)
    counts = [
        c
        for c in table.columns
        if c.startswith(("n_", "target_lost", "target_kept", "other_")) and not c.endswith("_pct")
    ]
    counts += [c for c in table.columns if c.endswith("_count")]
    return table.astype({c: "Int64" for c in counts})  # skipped rows leave counts empty, not 1645.0


def change_chart(
    per_method: dict[str, pd.DataFrame], summary: pd.DataFrame, stem: Path, *, random_weights: bool
) -> list[Path]:
    """Target vs other change rate: per-class points behind, method mean ± std in front."""
    points = pd.concat([df.assign(method=m) for m, df in per_method.items() if len(df)], ignore_index=True)
    points = points[points["status"] == "evaluated"]
    color = alt.Color("method:N", scale=alt.Scale(range=OKABE_ITO), title="method")  # colour-blind safe
    x = alt.X("other_change_rate_pct:Q", title="other-class patches changed (%)")
    y = alt.Y("target_change_rate_pct:Q", title="target-class patches changed (%)", scale=alt.Scale(domain=[0, 100]))
    behind = (
        alt.Chart(points)
        .mark_circle(size=30, opacity=0.35)
        .encode(
            x, y, color, tooltip=["method", "class_name", "latent", "target_change_rate_pct", "other_change_rate_pct"]
        )
    )
    mean_t, std_t = summary.target_change_rate_mean_pct, summary.target_change_rate_std_pct.fillna(0)
    mean_o, std_o = summary.other_change_rate_mean_pct, summary.other_change_rate_std_pct.fillna(0)
    s = summary.assign(  # ± std, clipped to the possible range of a percentage
        t_lo=(mean_t - std_t).clip(0, 100),
        t_hi=(mean_t + std_t).clip(0, 100),
        o_lo=(mean_o - std_o).clip(0, 100),
        o_hi=(mean_o + std_o).clip(0, 100),
    )
    base = alt.Chart(s)
    means = base.mark_point(size=160, filled=True, shape="diamond").encode(
        alt.X("other_change_rate_mean_pct:Q"),
        alt.Y("target_change_rate_mean_pct:Q"),
        color,
        tooltip=list(summary.columns[:8]),
    )
    ybars = base.mark_rule(strokeWidth=2).encode(
        alt.X("other_change_rate_mean_pct:Q"), alt.Y("t_lo:Q"), alt.Y2("t_hi:Q"), color
    )
    xbars = base.mark_rule(strokeWidth=2).encode(
        alt.Y("target_change_rate_mean_pct:Q"), alt.X("o_lo:Q"), alt.X2("o_hi:Q"), color
    )
    chart = (behind + ybars + xbars + means).properties(
        width=420,
        height=360,
        title=title_with_note(
            "SAE interventions: target vs other change rate (mean ± std over classes)", random_weights
        ),
    )
    return save_chart(chart, stem)


def write_outputs(
    out_dir: Path,
    summary_csv: Path,
    per_method: dict[str, pd.DataFrame],
    summary: pd.DataFrame,
    *,
    random_weights: bool,
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for method, df in per_method.items():
        atomic.write_csv(df, out_dir / f"{method}.csv", index=False, float_format="%.4f")
    change_chart(per_method, summary, out_dir / "chart", random_weights=random_weights)
    atomic.write_csv(summary, summary_csv, index=False, float_format="%.4f")  # last: the workflow's target


def run(
    *,
    val: CacheReader,
    layer: int,
    editor: LatentEditor,
    predictor: ReforwardPredictor,
    cfg: QuantifyConfig,
    max_value_S: np.ndarray,
    freq_S: np.ndarray,
    f1,
    manual: dict[int, tuple[int, ...]],
    device,
    progress: bool = True,
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, dict]:
    """Baseline once, every (method, class) edit, per-class tables and the per-method summary."""
    t0 = time.perf_counter()
    images_N, orig_NP = baseline_predictions(val, layer, predictor, device, cfg.batch_size, progress=progress)
    truth_NP = val.labels("patch_label").astype(np.int64)[images_N]
    classes = sorted(int(c) for c in np.unique(orig_NP) if c != 0)
    jobs, skipped = make_jobs(
        cfg,
        classes,
        max_value_S=max_value_S,
        freq_S=freq_S,
        f1=f1,
        manual=manual,
        scalar=editor.scaling.scalar,
        d_model=val.d_model,
    )
    t_base = time.perf_counter() - t0
    totals = edited_counts(
        val,
        layer,
        jobs,
        editor,
        predictor,
        orig_NP,
        device=device,
        batch_size=cfg.batch_size,
        n_classes=val.n_classes,
        truth_NP=truth_NP,
        progress=progress,
    )
    per_method = {m: per_class_table(jobs, totals, val.class_names, skipped, m) for m in cfg.methods}
    rows = []
    for method, df in per_method.items():
        evaluated = df[df["status"] == "evaluated"] if len(df) else df
        stats = summarize(evaluated, n_real_classes=val.n_classes - 1) if len(evaluated) else {"n_classes": 0}
        n_skipped = int((df["status"] == "skipped").sum()) if len(df) else 0
        rows.append({"method": method, **stats, "n_skipped": n_skipped, "std_note": STD_NOTE})
    timing = {
        "baseline_seconds": t_base,
        "edit_seconds": time.perf_counter() - t0 - t_base,
        "n_jobs": len(jobs),
        "n_classes_predicted": len(classes),
    }
    return per_method, pd.DataFrame(rows), timing


def provenance_columns(summary: pd.DataFrame, **values) -> pd.DataFrame:
    """Append the run's context (scale, layer, SAE, probe, device, ...) to every summary row."""
    for key, value in values.items():
        summary[key] = value if not isinstance(value, (dict, list)) else json.dumps(value)
    return summary
