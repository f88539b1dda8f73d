"""Classification and segmentation metrics, computed from confusion matrices.

This is the one metrics module every stage uses (probes, SAE interventions, unsupervised
clustering), so numbers are comparable across stages.

Conventions:

- Every function returns *fractions* in [0, 1] (never percent); callers format.
- A confusion matrix ``conf`` is ``int64 [C_true, C_pred]``: ``conf[t, p]`` counts samples whose
  true class is ``t`` and predicted class is ``p``. Usually square. Metric functions also accept
  ``C_pred > C_true``: the extra predicted columns are "predicted something that is no class"
  (for example clusters Hungarian matching left unmatched, see :func:`matched_confusion`) and are
  always wrong.
- Segmentation (ADE20K) convention, as in saev's contrib.semseg: class 0 is "other". It stays in
  the confusion matrix, so a class-k prediction on an "other" pixel is a false positive for k,
  but it is left out of the *mean* IoU (``mean_iou(..., exclude=(0,))``, the default). To drop
  "other" pixels entirely instead (the mmseg ``reduce_zero_label`` convention), build the
  matrix with ``confusion_matrix(..., ignore=0)``.
- ``mean_iou`` averages over classes present in the *ground truth* by default; classes absent
  from both truth and prediction have IoU NaN and never enter a mean. :data:`MIOU_DEFINITIONS`
  names the two averages a user compares against (``present_in_truth``, saev / mmseg style,
  and ``stego``: every class with a defined IoU, so a class only ever *predicted* scores 0,
  as STEGO's ``UnsupervisedMetrics``); :func:`mean_iou_as` computes one by name.
- :data:`SEG_PROTOCOLS` names the two segmentation evaluation protocols: ``ade20k`` (true
  label 0 ignored, mean over classes 1 … C-1) and ``zero_is_class`` (label 0 is an ordinary
  class: nothing ignored, an n+1-way problem; the headline mIoU still averages classes 1 … C-1,
  :data:`HEADLINE_MIOU_EXCLUDE`, and the mean over all C classes is reported beside it);
  :func:`protocol_confusion` and :func:`protocol_exclude` implement them.

Dimension key: N samples (pixels, patches or images), C classes (C_true, C_pred when they
differ), K clusters.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import scipy.optimize

__all__ = [
    "HEADLINE_MIOU_EXCLUDE",
    "MIOU_DEFINITIONS",
    "SEG_PROTOCOLS",
    "confusion_matrix",
    "confusion_matrices",
    "hungarian_match",
    "iou_per_class",
    "matched_confusion",
    "mean_iou",
    "mean_iou_as",
    "per_class_accuracy",
    "pixel_accuracy",
    "protocol_confusion",
    "protocol_exclude",
    "topk_accuracy",
]


MIOU_DEFINITIONS = {
    "present_in_truth": "mean IoU over the scored classes present in the ground truth (saev, mmseg)",
    "stego": "mean IoU over every scored class with a defined IoU; a class only predicted counts 0 (STEGO)",
}
"""mIoU definition name -> what it averages (the name goes into every output that reports mIoU)."""

SEG_PROTOCOLS = {
    "ade20k": "true label 0 (other / unlabelled) ignored; classes 1..C-1 scored (mmseg reduce_zero_label)",
    "zero_is_class": (
        "label 0 is a class like any other: nothing ignored (n+1-way); the headline mIoU averages "
        "classes 1..C-1 (ADE-comparable), *_miou_with_0 all C classes"
    ),
}
"""Segmentation evaluation protocol name -> its rule."""

HEADLINE_MIOU_EXCLUDE: tuple[int, ...] = (0,)
"""Classes left out of the headline mIoU under every protocol: class 0, so that ``zero_is_class``
reports the same classes 1 … C-1 as ``ade20k`` (its mean over all C classes, background
included, is reported beside it as ``*_miou_with_0``)."""


def _as_int_labels(a: npt.ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(a).reshape(-1)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(f"{name} must hold integer class labels; got non-integer floats.")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind == "b":
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer class labels; got dtype {arr.dtype}.")
    return arr.astype(np.int64, copy=False)


def _check_label_range(n_classes: int, ignore: int | None, **labels: np.ndarray) -> None:
    """ValueError naming the first array (by keyword) holding a label outside ``[0, n_classes)``."""
    for name, arr in labels.items():
        bad = (arr < 0) | (arr >= n_classes)
        if bad.any():
            raise ValueError(
                f"{name} label {int(arr[bad][0])} is outside [0, {n_classes}) "
                f"({int(bad.sum())} bad values; ignore={ignore})."
            )


def confusion_matrix(
    true: npt.ArrayLike, pred: npt.ArrayLike, n_classes: int, *, ignore: int | None = None
) -> np.ndarray:
    """Count (true, predicted) label pairs into an ``int64 [C, C]`` matrix (rows: truth).

    ``true`` and ``pred`` may have any shape (they are flattened) but must have the SAME shape
    (same size is not enough: a transposed array would pair the wrong samples) and not be empty.
    Samples whose *true* label equals ``ignore`` are dropped before counting (their prediction
    is not checked). Any other label outside ``[0, n_classes)`` is a ``ValueError`` naming it.
    """
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1; got {n_classes}.")
    true_shape, pred_shape = np.shape(true), np.shape(pred)
    if true_shape != pred_shape:
        raise ValueError(
            f"true and pred must have the same shape (not only the same number of elements); got {true_shape} and {pred_shape}."
        )
    true_N = _as_int_labels(true, "true")
    pred_N = _as_int_labels(pred, "pred")
    if true_N.size == 0:
        raise ValueError("true and pred are empty: nothing to count.")
    if ignore is not None:
        keep_N = true_N != ignore
        true_N, pred_N = true_N[keep_N], pred_N[keep_N]
    _check_label_range(n_classes, ignore, true=true_N, pred=pred_N)
    flat_N = true_N * n_classes + pred_N
    return np.bincount(flat_N, minlength=n_classes * n_classes).reshape(n_classes, n_classes).astype(np.int64)


def _check_conf(conf: npt.ArrayLike) -> np.ndarray:
    conf = np.asarray(conf)
    if conf.ndim != 2:
        raise ValueError(f"conf must be 2-D [C_true, C_pred]; got shape {conf.shape}.")
    if conf.shape[1] < conf.shape[0]:
        raise ValueError(f"conf must have at least as many predicted columns as true rows; got {conf.shape}.")
    if np.any(conf < 0):
        raise ValueError("conf must hold non-negative counts.")
    return conf


def iou_per_class(conf: npt.ArrayLike) -> np.ndarray:
    """Intersection over union per true class: ``float64 [C_true]``.

    IoU_c = TP / (TP + FP + FN) = conf[c, c] / (row_c + col_c - conf[c, c]). NaN for classes absent
    from both the truth and the predictions (0/0); a class present in only one of them scores 0.
    """
    conf = _check_conf(conf).astype(np.float64)
    c = conf.shape[0]
    tp_C = np.diag(conf[:, :c])
    union_C = conf.sum(axis=1) + conf[:, :c].sum(axis=0) - tp_C
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union_C > 0, tp_C / np.where(union_C > 0, union_C, 1.0), np.nan)


def _class_mask(c: int, exclude: Sequence[int]) -> np.ndarray:
    keep_C = np.ones(c, dtype=bool)
    for k in exclude:
        if not 0 <= k < c:
            raise ValueError(f"exclude holds class {k}, outside [0, {c}).")
        keep_C[k] = False
    return keep_C


def mean_iou(conf: npt.ArrayLike, *, exclude: Sequence[int] = (0,), present_only: bool = True) -> float:
    """Mean IoU, a fraction in [0, 1].

    Averages :func:`iou_per_class` over classes not in ``exclude`` (default: class 0, "other" in
    ADE20K; pass ``exclude=()`` for classification) that are present in the *ground truth*
    (``present_only=True``, the default, so a class that only appears as a false positive does
    not count). With ``present_only=False`` it averages every class with a defined IoU (present
    in truth or prediction). NaN when no class qualifies.
    """
    conf = _check_conf(conf)
    iou_C = iou_per_class(conf)
    keep_C = _class_mask(conf.shape[0], exclude)
    if present_only:
        keep_C &= conf.sum(axis=1) > 0
    else:
        keep_C &= ~np.isnan(iou_C)
    if not keep_C.any():
        return float("nan")
    return float(iou_C[keep_C].mean())


def mean_iou_as(conf: npt.ArrayLike, definition: str, *, exclude: Sequence[int] = (0,)) -> float:
    """Mean IoU by :data:`MIOU_DEFINITIONS` name (``present_in_truth`` or ``stego``)."""
    if definition not in MIOU_DEFINITIONS:
        raise ValueError(f"unknown mIoU definition {definition!r}; known: {', '.join(MIOU_DEFINITIONS)}")
    return mean_iou(conf, exclude=exclude, present_only=definition == "present_in_truth")


def _check_protocol(protocol: str) -> None:
    if protocol not in SEG_PROTOCOLS:
        raise ValueError(f"unknown segmentation protocol {protocol!r}; known: {', '.join(SEG_PROTOCOLS)}")


def protocol_confusion(true: npt.ArrayLike, pred: npt.ArrayLike, n_classes: int, protocol: str) -> np.ndarray:
    """:func:`confusion_matrix` under a :data:`SEG_PROTOCOLS` protocol (``ade20k`` ignores truth 0)."""
    _check_protocol(protocol)
    return confusion_matrix(true, pred, n_classes, ignore=0 if protocol == "ade20k" else None)


def protocol_exclude(protocol: str) -> tuple[int, ...]:
    """Classes left out of means and accuracies under ``protocol``: (0,) for ``ade20k``, () otherwise."""
    _check_protocol(protocol)
    return (0,) if protocol == "ade20k" else ()


def pixel_accuracy(conf: npt.ArrayLike, *, exclude: Sequence[int] = ()) -> float:
    """Fraction of samples predicted correctly (overall / pixel accuracy), in [0, 1].

    Samples whose *true* class is in ``exclude`` are left out of numerator and denominator.
    NaN when no sample is left.
    """
    conf = _check_conf(conf)
    c = conf.shape[0]
    keep_C = _class_mask(c, exclude)
    total = conf[keep_C].sum()
    if total == 0:
        return float("nan")
    return float(np.diag(conf[:, :c])[keep_C].sum() / total)


def per_class_accuracy(conf: npt.ArrayLike) -> np.ndarray:
    """Recall per true class, ``float64 [C_true]``: conf[c, c] / row_c; NaN where a class has no true samples."""
    conf = _check_conf(conf).astype(np.float64)
    c = conf.shape[0]
    row_C = conf.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(row_C > 0, np.diag(conf[:, :c]) / np.where(row_C > 0, row_C, 1.0), np.nan)


def topk_accuracy(logits_NC: npt.ArrayLike, true_N: npt.ArrayLike, k: int) -> float:
    """Fraction of samples whose true class is among the ``k`` highest logits, in [0, 1].

    Accepts numpy arrays or CPU torch tensors. Ties at the k-th place are broken arbitrarily
    (by ``np.argpartition``).
    """
    logits_NC = np.asarray(logits_NC)
    true_N = _as_int_labels(true_N, "true_N")
    if logits_NC.ndim != 2:
        raise ValueError(f"logits_NC must be 2-D [N, C]; got shape {logits_NC.shape}.")
    n, c = logits_NC.shape
    if true_N.shape != (n,):
        raise ValueError(f"true_N must have {n} labels to match logits_NC; got {true_N.size}.")
    if not 1 <= k <= c:
        raise ValueError(f"k must be in [1, {c}]; got {k}.")
    if n == 0:
        return float("nan")
    bad = (true_N < 0) | (true_N >= c)
    if bad.any():
        raise ValueError(f"true_N label {int(true_N[bad][0])} is outside [0, {c}).")
    topk_NK = np.argpartition(-logits_NC, k - 1, axis=1)[:, :k]
    return float((topk_NK == true_N[:, None]).any(axis=1).mean())


def hungarian_match(conf: npt.ArrayLike) -> np.ndarray:
    """Match clusters to classes one-to-one, maximising the matched counts.

    ``conf`` is ``[C_true, K]`` (rows: true classes, columns: clusters; K may exceed C).
    Returns ``int64 [K]``: the class each cluster is mapped to, or -1 for clusters left
    unmatched (when K > C). Uses ``scipy.optimize.linear_sum_assignment``.
    """
    conf = np.asarray(conf)
    if conf.ndim != 2:
        raise ValueError(f"conf must be 2-D [C_true, K]; got shape {conf.shape}.")
    clusters, classes = scipy.optimize.linear_sum_assignment(conf.T, maximize=True)
    mapping_K = np.full(conf.shape[1], -1, dtype=np.int64)
    mapping_K[clusters] = classes
    return mapping_K


def matched_confusion(conf_true_cluster: npt.ArrayLike, mapping: npt.ArrayLike) -> np.ndarray:
    """Merge cluster columns into class columns: ``[C_true, K]`` -> ``int64 [C_true, C_true + 1]``.

    Column c sums the clusters mapped to class c; the last column holds the samples in
    unmatched clusters (mapping -1), which are wrong for every class. All metric functions in
    this module accept that shape; slice ``[:, :-1]`` for a square matrix when it is all zero.
    """
    conf = np.asarray(conf_true_cluster)
    mapping_K = np.asarray(mapping).astype(np.int64)
    if conf.ndim != 2 or mapping_K.shape != (conf.shape[1],):
        raise ValueError(
            f"mapping must have one entry per cluster column; got conf {conf.shape}, mapping {mapping_K.shape}."
        )
    c = conf.shape[0]
    if np.any((mapping_K < -1) | (mapping_K >= c)):
        raise ValueError(f"mapping values must be in [-1, {c}); got {mapping_K.min()}..{mapping_K.max()}.")
    target_K = np.where(mapping_K < 0, c, mapping_K)
    out = np.zeros((c, c + 1), dtype=np.int64)
    np.add.at(out, (slice(None), target_K), conf)
    return out


def confusion_matrices(
    true: npt.ArrayLike, pred_M: npt.ArrayLike, n_classes: int, *, ignore: int | None = None
) -> np.ndarray:
    """:func:`confusion_matrix` of each of M predictions against one truth: ``int64 [M, C, C]``.

    ``pred_M`` has a leading member axis, then the shape of ``true``. The truth is converted,
    masked and checked once for all members (predictions kept in their small integer dtype); the
    same counts as M calls of :func:`confusion_matrix`.
    """
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1; got {n_classes}.")
    true_N = _as_int_labels(true, "true")
    pred = np.asarray(pred_M)
    m = pred.shape[0] if pred.ndim else 0
    if pred.size != m * true_N.size:
        raise ValueError(f"pred_M must be [M, *true.shape]; got {pred.shape} for {true_N.size} true labels.")
    pred_MN = pred.reshape(m, -1)
    if pred_MN.dtype.kind not in "iu":
        pred_MN = _as_int_labels(pred_MN, "pred").reshape(m, -1)
    keep_N = None if ignore is None else true_N != ignore
    true_K = true_N if keep_N is None else true_N[keep_N]
    pred_MK = pred_MN if keep_N is None else pred_MN[:, keep_N]
    _check_label_range(n_classes, ignore, true=true_K, pred=pred_MK)
    # per member: one gather of its (small-int) predictions and one bincount, no int64 copies of
    # the whole [M, N] block (memory traffic is what this costs)
    base_K = true_K * n_classes
    out = np.empty((m, n_classes * n_classes), dtype=np.int64)
    for k in range(m):
        out[k] = np.bincount(base_K + pred_MK[k], minlength=n_classes * n_classes)
    return out.reshape(m, n_classes, n_classes)
