"""Ranking a class's latents for one image, and the classes an example edits by default.

``manipulate.rank_by``:

* ``f1`` — the train F1 of "latent fires" vs "patch has class c" (``class_f1.zarr`` of the
  quantify stage; segmentation only), best over thresholds, among latents that fire;
* ``activation`` — the mean latent value over this image's tokens of class c (segmentation:
  patches labelled c, else patches predicted c; classification: the CLS token when the image
  is of class c); when the image has no such token, the class specificity on TRAIN
  (:func:`class_specificity`: mean f over the train tokens of class c minus mean f over the
  other train tokens; one streamed pass over the train store, computed once);
* ``auto`` — ``f1`` when the table exists (segmentation), else ``activation``.

Every function reads a :class:`pipeline.manipulate.session.Manipulator` (``m``): its stores,
SAE and train statistics. Dimension key: P patches (or 1 CLS token), S latents, C classes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from pipeline.manipulate.state import ImageState, ManipulateError
from pipeline.methods import ranked_latents
from pipeline.sae import encode_tokens

if TYPE_CHECKING:  # the session calls these functions; they only read its attributes
    from pipeline.manipulate.session import Manipulator


def default_classes(m: Manipulator, state: ImageState, target: int | None, other: int | None) -> tuple[int, int]:
    """The image's class (most frequent label; else most frequent prediction) and another class."""
    lo = 1 if m.real_classes_only else 0
    if m.edit_task.patch_counts:  # many labelled / predicted tokens: the most frequent classes first
        order = []
        for source in (state.labels, state.pred_before):
            if source is None:
                continue
            counts = np.bincount(source[source >= lo], minlength=m.n_classes)
            order += [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] > 0 and c >= lo]
    else:
        order = [int(state.labels[0])] if state.labels is not None and state.labels[0] >= 0 else []
        order += [int(c) for c in np.argsort(-state.probs_before_C, kind="stable")]
    order = list(dict.fromkeys(order + list(range(lo, m.n_classes))))
    target = order[0] if target is None else target
    if other is None:
        other = next(c for c in order if c != target)
    if other == target:
        raise ManipulateError(f"class and other_class are the same class ({m.class_names[target]})")
    return target, other


def class_tokens(m: Manipulator, state: ImageState, c: int) -> tuple[np.ndarray, str]:
    """Which of the image's edited tokens belong to class c, and how that was decided."""
    if m.edit_task.tokens == "cls":
        mask = np.array([state.labels is not None and int(state.labels[0]) == c])
        return mask, "the image's CLS token (image labelled c)"
    if state.labels is not None and (state.labels == c).any():
        return state.labels == c, "this image's patches labelled c"
    if (state.pred_before == c).any():
        return state.pred_before == c, "this image's patches predicted c"
    return np.zeros(len(state.pred_before), dtype=bool), ""


@torch.no_grad()
def train_class_stats(m: Manipulator) -> tuple[np.ndarray, np.ndarray]:
    """Mean f per class over the TRAIN tokens of that class [C, S] (and, for CLS, max f [S])."""
    r = m.reader("train")
    sums = torch.zeros(m.n_classes, m.n_latents, dtype=torch.float64, device=m.device)
    counts = torch.zeros(m.n_classes, dtype=torch.float64, device=m.device)
    cls_max = torch.zeros(m.n_latents, device=m.device)
    tokens = m.edit_task.tokens
    labels_NP = r.labels(m.edit_task.label_array).astype(np.int64).reshape(r.n_images, -1)  # [N, P] or [N, 1]
    for image_B, acts_BTD in r.iter_chunks(m.block, tokens=tokens):
        b, t, d = acts_BTD.shape
        f_NS = encode_tokens(
            m.sae, m.scaling, torch.from_numpy(np.asarray(acts_BTD, dtype=np.float32).reshape(b * t, d)).to(m.device)
        )
        y_N = torch.from_numpy(labels_NP[image_B].reshape(-1)).to(m.device)
        keep = (y_N >= 0) & (y_N < m.n_classes)
        sums.index_add_(0, y_N[keep], f_NS[keep].double())
        counts += torch.bincount(y_N[keep], minlength=m.n_classes).double()
        cls_max = torch.maximum(cls_max, f_NS.amax(0))
    n_C = counts.cpu().numpy()
    means = (sums / counts.clamp_min(1)[:, None]).float().cpu().numpy()
    rest = ((sums.sum(0, keepdim=True) - sums) / (counts.sum() - counts).clamp_min(1)[:, None]).float().cpu().numpy()
    means[n_C == 0] = np.nan
    # class specificity: mean f on the class's train tokens minus mean f on the other classes' train tokens
    m.class_specificity_CS = means - rest
    return means, cls_max.cpu().numpy().astype(np.float64)


def class_specificity(m: Manipulator) -> np.ndarray:
    """[C, S]: mean f on the train tokens labelled c minus mean f on the other train tokens (NaN: no token of c)."""
    if m.class_specificity_CS is None:
        train_class_stats(m)
    return m.class_specificity_CS


def rank_latents(m: Manipulator, state: ImageState, c: int, n: int | None = None) -> pd.DataFrame:
    """The top ``n`` latents of class ``c`` for this image, with their values on it (zeros included)."""
    n = n or m.settings.n_top_latents
    f_PS = state.f_PS.cpu().numpy()
    mask, where = class_tokens(m, state, c)
    on_image = f_PS[mask].mean(0) if mask.any() else np.zeros(m.n_latents)
    if m.rank_by == "f1":
        ranked = ranked_latents(m.f1, c, m.freq_S > 0, n)
        latents = [s for s, _, _ in ranked]
        scores = [100.0 * score for _, _, score in ranked]  # percent, as every table (pipeline.units)
        kinds = [f"train F1 in % (latent > {t:g} vs patch labelled c)" for _, t, _ in ranked]
    else:
        if mask.any():
            score_S, kind = on_image, f"mean f on {where}"
        else:
            score_S = np.nan_to_num(class_specificity(m)[c], nan=0.0)
            kind = "mean f on train tokens labelled c minus on the other train tokens (the image has none)"
        order = np.argsort(-score_S, kind="stable")[:n]
        latents, scores, kinds = [int(s) for s in order], [float(score_S[s]) for s in order], [kind] * len(order)
    rows = []
    for rank, (s, score, kind) in enumerate(zip(latents, scores, kinds), start=1):
        rows.append(
            {
                "class_id": c,
                "class_name": m.class_names[c],
                "rank": rank,
                "latent": s,
                "score": score,
                "score_kind": kind,
                "value_on_class_tokens": float(on_image[s]) if mask.any() else float("nan"),
                "value_max_on_image": float(f_PS[:, s].max()),
                "train_max": float(m.max_value_S[s]),
                "train_freq_pct": 100.0 * float(m.freq_S[s]),
            }
        )
    return pd.DataFrame(rows)
