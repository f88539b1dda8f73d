"""Hand-computed checks for pipeline.metrics."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import metrics

# A 3-class example, 10 samples.
#   true: 0 0 0 1 1 1 1 2 2 2
#   pred: 0 0 1 1 1 1 2 2 0 2
# conf[t, p]:        p=0 p=1 p=2   row
#            t=0      2   1   0     3
#            t=1      0   3   1     4
#            t=2      1   0   2     3
#            col      3   4   3
# IoU_0 = 2 / (3 + 3 - 2) = 2/4 = 0.5
# IoU_1 = 3 / (4 + 4 - 3) = 3/5 = 0.6
# IoU_2 = 2 / (3 + 3 - 2) = 2/4 = 0.5
# mIoU over all three = 1.6 / 3; excluding class 0 = (0.6 + 0.5) / 2 = 0.55
# accuracy = (2 + 3 + 2) / 10 = 0.7; excluding true class 0: (3 + 2) / 7
# per-class accuracy (recall) = 2/3, 3/4, 2/3
TRUE = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
PRED = np.array([0, 0, 1, 1, 1, 1, 2, 2, 0, 2])
CONF = np.array([[2, 1, 0], [0, 3, 1], [1, 0, 2]])


def test_confusion_matrix_small_example():
    conf = metrics.confusion_matrix(TRUE, PRED, 3)
    assert conf.dtype == np.int64
    np.testing.assert_array_equal(conf, CONF)
    # Any shape, flattened.
    np.testing.assert_array_equal(metrics.confusion_matrix(TRUE.reshape(2, 5), PRED.reshape(2, 5), 3), CONF)


def test_iou_accuracy_small_example():
    np.testing.assert_allclose(metrics.iou_per_class(CONF), [0.5, 0.6, 0.5])
    assert metrics.mean_iou(CONF, exclude=()) == pytest.approx(1.6 / 3)
    assert metrics.mean_iou(CONF) == pytest.approx(0.55)  # default excludes class 0
    assert metrics.pixel_accuracy(CONF) == pytest.approx(0.7)
    assert metrics.pixel_accuracy(CONF, exclude=(0,)) == pytest.approx(5 / 7)
    np.testing.assert_allclose(metrics.per_class_accuracy(CONF), [2 / 3, 3 / 4, 2 / 3])


def test_absent_classes():
    # 5 classes. Class 3 absent from truth and prediction -> NaN, not in any mean.
    # Class 4 only predicted (a false positive), absent from truth -> IoU 0, but not in the
    # present-only mean.
    #   true: 1 1 2 2
    #   pred: 1 4 2 2
    # IoU_1 = 1 / (2 + 1 - 1) = 0.5; IoU_2 = 2 / (2 + 2 - 2) = 1; IoU_4 = 0 / (0 + 1 - 0) = 0
    conf = metrics.confusion_matrix([1, 1, 2, 2], [1, 4, 2, 2], 5)
    iou = metrics.iou_per_class(conf)
    assert np.isnan(iou[0]) and np.isnan(iou[3])
    np.testing.assert_allclose(iou[[1, 2, 4]], [0.5, 1.0, 0.0])
    assert metrics.mean_iou(conf) == pytest.approx(0.75)  # classes 1, 2
    assert metrics.mean_iou(conf, present_only=False) == pytest.approx(0.5)  # classes 1, 2, 4
    acc = metrics.per_class_accuracy(conf)
    assert np.isnan(acc[0]) and np.isnan(acc[3]) and np.isnan(acc[4])
    # Nothing qualifies -> NaN rather than an error.
    assert np.isnan(metrics.mean_iou(np.zeros((3, 3), dtype=np.int64)))


def test_all_wrong():
    conf = metrics.confusion_matrix([0, 1, 2, 0], [1, 2, 0, 2], 3)
    assert metrics.mean_iou(conf, exclude=()) == 0.0
    assert metrics.pixel_accuracy(conf) == 0.0
    np.testing.assert_array_equal(metrics.iou_per_class(conf), [0.0, 0.0, 0.0])


def test_ignore_index_and_bad_values():
    true = np.array([0, 1, 255, 255, 2])
    pred = np.array([0, 1, 2, 7, 2])  # predictions on ignored samples are not checked
    conf = metrics.confusion_matrix(true, pred, 3, ignore=255)
    np.testing.assert_array_equal(conf, np.eye(3, dtype=np.int64))
    with pytest.raises(ValueError, match="255"):
        metrics.confusion_matrix(true, pred, 3)
    with pytest.raises(ValueError, match="pred label 7"):
        metrics.confusion_matrix([0, 1], [7, 0], 3)
    with pytest.raises(ValueError, match="-1"):
        metrics.confusion_matrix([-1, 1], [0, 0], 3)
    with pytest.raises(ValueError, match="same number"):
        metrics.confusion_matrix([0, 1], [0], 3)
    # ignore=0: the mmseg reduce_zero_label convention ("other" pixels dropped entirely).
    conf0 = metrics.confusion_matrix([0, 0, 1, 2], [1, 2, 1, 2], 3, ignore=0)
    assert metrics.mean_iou(conf0) == 1.0


def test_hungarian_recovers_planted_permutation():
    rng = np.random.default_rng(0)
    n_classes = 6
    perm = rng.permutation(n_classes)  # class c -> cluster perm[c]
    true = rng.integers(0, n_classes, size=2000)
    clusters = perm[true]
    noise = rng.random(true.size) < 0.1
    clusters[noise] = rng.integers(0, n_classes, size=int(noise.sum()))
    conf_tk = metrics.confusion_matrix(true, clusters, n_classes)
    mapping = metrics.hungarian_match(conf_tk)
    np.testing.assert_array_equal(mapping[perm], np.arange(n_classes))
    matched = metrics.matched_confusion(conf_tk, mapping)
    assert matched.shape == (n_classes, n_classes + 1)
    assert matched[:, -1].sum() == 0
    np.testing.assert_array_equal(matched[:, :-1], metrics.confusion_matrix(true, mapping[clusters], n_classes))


def test_hungarian_more_clusters_than_classes():
    # 2 classes, 3 clusters. conf[t, k]:
    #        k0  k1  k2
    #   t0    5   0   1
    #   t1    1   4   3
    # Best one-to-one: k0 -> 0, k1 -> 1 (5 + 4 = 9 > 5 + 3); k2 unmatched (-1) and always wrong.
    conf = np.array([[5, 0, 1], [1, 4, 3]])
    mapping = metrics.hungarian_match(conf)
    np.testing.assert_array_equal(mapping, [0, 1, -1])
    matched = metrics.matched_confusion(conf, mapping)
    np.testing.assert_array_equal(matched, [[5, 0, 1], [1, 4, 3]])
    # accuracy = 9 / 14; IoU_0 = 5 / (6 + 6 - 5), IoU_1 = 4 / (8 + 4 - 4)
    assert metrics.pixel_accuracy(matched) == pytest.approx(9 / 14)
    np.testing.assert_allclose(metrics.iou_per_class(matched), [5 / 7, 4 / 8])
    # Two clusters mapped to the same class are summed.
    np.testing.assert_array_equal(metrics.matched_confusion(conf, [0, 1, 1]), [[5, 1, 0], [1, 7, 0]])


def test_topk_accuracy():
    logits = np.array(
        [
            [0.1, 0.5, 0.4],  # true 1: hit at k=1
            [0.7, 0.2, 0.1],  # true 1: miss at k=1, hit at k=2
            [0.35, 0.25, 0.4],  # true 0: miss at k=1, hit at k=2 (top-2 = {2, 0})
            [0.6, 0.3, 0.1],  # true 2: miss at k=1 and k=2, hit at k=3
        ]
    )
    true = np.array([1, 1, 0, 2])
    assert metrics.topk_accuracy(logits, true, 1) == pytest.approx(1 / 4)
    assert metrics.topk_accuracy(logits, true, 2) == pytest.approx(3 / 4)
    assert metrics.topk_accuracy(logits, true, 3) == 1.0
    with pytest.raises(ValueError, match="k must be"):
        metrics.topk_accuracy(logits, true, 4)


def test_confusion_matrices_equal_one_call_per_member():
    """The probe evaluation's stacked path gives exactly the per-member matrices (the old path)."""
    from pipeline.metrics import confusion_matrices

    rng = np.random.default_rng(0)
    true = rng.integers(0, 6, (3, 20, 20))
    pred_M = rng.integers(0, 6, (5, 3, 20, 20)).astype(np.uint8)
    for ignore in (None, 0):
        stacked = confusion_matrices(true, pred_M, 6, ignore=ignore)
        assert stacked.dtype == np.int64 and stacked.shape == (5, 6, 6)
        for m in range(5):
            np.testing.assert_array_equal(stacked[m], metrics.confusion_matrix(true, pred_M[m], 6, ignore=ignore))
    with pytest.raises(ValueError, match="pred label 7"):
        confusion_matrices(true, np.full((2, 3, 20, 20), 7), 6, ignore=0)
    with pytest.raises(ValueError, match="pred_M must be"):
        confusion_matrices(true, pred_M[:, :2], 6)


# ---- protocols and mIoU definitions on a hand-built confusion matrix (issue 15) ------------
# 4 classes, 0 = other. Rows: truth, columns: prediction.
#   class 1: tp 6, row 8, col 6 + 2 (from 0) + 1 (from 2) = 9   -> IoU_1 = 6 / (8 + 9 - 6) = 6/11
#   class 2: tp 3, row 4, col 3 + 2 (from 1)            = 5   -> IoU_2 = 3 / (4 + 5 - 3) = 3/6
#   class 3: never in the truth, predicted once (from 0)     -> IoU_3 = 0 / (0 + 1 - 0) = 0
#   class 0: tp 1, row 4, col 1 (+0)                         -> IoU_0 = 1 / (4 + 1 - 1) = 1/4
HAND_CONF = np.array(
    [
        [1, 2, 0, 1],
        [0, 6, 2, 0],
        [0, 1, 3, 0],
        [0, 0, 0, 0],
    ]
)


def _truth_pred(conf):
    t, p = np.nonzero(conf)
    reps = conf[t, p]
    return np.repeat(t, reps), np.repeat(p, reps)


def test_each_protocol_and_miou_definition_on_a_hand_built_matrix():
    true, pred = _truth_pred(HAND_CONF)
    # ade20k: truth 0 ignored -> row 0 dropped, so class 1's column loses the 2 from "other"
    ade = metrics.protocol_confusion(true, pred, 4, "ade20k")
    assert ade[0].sum() == 0 and metrics.protocol_exclude("ade20k") == (0,)
    iou1, iou2, iou3 = 6 / (8 + 7 - 6), 3 / 6, float("nan")  # class 3 neither true nor predicted now
    assert metrics.mean_iou_as(ade, "present_in_truth") == pytest.approx((iou1 + iou2) / 2)
    assert metrics.mean_iou_as(ade, "stego") == pytest.approx((iou1 + iou2) / 2)  # class 3: 0/0, undefined
    # zero_is_class: nothing ignored, class 0 scored; class 3 was only predicted: 0 in STEGO's mean
    z = metrics.protocol_confusion(true, pred, 4, "zero_is_class")
    np.testing.assert_array_equal(z, HAND_CONF)
    ex = metrics.protocol_exclude("zero_is_class")
    assert ex == ()
    assert metrics.mean_iou_as(z, "present_in_truth", exclude=ex) == pytest.approx((1 / 4 + 6 / 11 + 3 / 6) / 3)
    assert metrics.mean_iou_as(z, "stego", exclude=ex) == pytest.approx((1 / 4 + 6 / 11 + 3 / 6 + 0) / 4)
    assert metrics.pixel_accuracy(z, exclude=ex) == pytest.approx(10 / 16)
    del iou3


def test_zero_is_class_headline_is_classes_1_to_n_and_reports_the_mean_with_class_0_beside_it():
    from pipeline.probes.seg import seg_metrics

    z = metrics.protocol_confusion(*_truth_pred(HAND_CONF), 4, "zero_is_class")
    m = seg_metrics(z, z, "zero_is_class")
    # headline: classes 1..3 present in the truth (1 and 2), computed on the n+1-way matrix (the 2
    # "other" pixels predicted 1 count against class 1): the classes an ADE20K figure averages
    assert m["pixel_miou"] == pytest.approx((6 / 11 + 3 / 6) / 2)
    # beside it, with class 0 (IoU 1/4) averaged in, as the headline was before
    assert m["pixel_miou_with_0"] == pytest.approx((1 / 4 + 6 / 11 + 3 / 6) / 3)
    assert m["patch_miou"] == m["pixel_miou"] and m["patch_miou_with_0"] == m["pixel_miou_with_0"]
    assert m["pixel_acc"] == pytest.approx(10 / 16)  # accuracy follows the protocol: nothing ignored
    # ade20k never scores class 0: the headline is the same mean, no "with 0" figure
    a = metrics.protocol_confusion(*_truth_pred(HAND_CONF), 4, "ade20k")
    m = seg_metrics(a, a, "ade20k")
    assert m["pixel_miou"] == pytest.approx((6 / 9 + 3 / 6) / 2) and np.isnan(m["pixel_miou_with_0"])


def test_unknown_protocol_or_definition_is_an_error():
    with pytest.raises(ValueError, match="unknown segmentation protocol 'mmseg'"):
        metrics.protocol_exclude("mmseg")
    with pytest.raises(ValueError, match="unknown mIoU definition 'all'"):
        metrics.mean_iou_as(HAND_CONF, "all")


def test_zero_is_class_needs_train_on_other(tmp_path):
    import yaml

    from pipeline.config import ConfigError, load_config

    raw = yaml.safe_load(open("config.yaml"))
    raw["probes"]["seg"]["protocol"] = "zero_is_class"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="probes/seg/protocol: zero_is_class .*probes/seg/train_on_other: true"):
        load_config(tmp_path / "c.yaml")
    raw["probes"]["seg"]["train_on_other"] = True
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert load_config(tmp_path / "c.yaml").probes["seg"].protocol == "zero_is_class"


def test_transposed_or_empty_counting_is_an_error():
    with pytest.raises(ValueError, match=r"same shape .*\(2, 3\) and \(3, 2\)"):
        metrics.confusion_matrix(np.zeros((2, 3), int), np.zeros((3, 2), int), 3)
    with pytest.raises(ValueError, match="empty"):
        metrics.confusion_matrix(np.zeros(0, int), np.zeros(0, int), 3)
