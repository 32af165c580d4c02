import numpy as np
import pytest

from ltbench.metrics import confusion_matrix, evaluate_predictions, shot_groups

THRESHOLDS = {"few_below": 20, "many_above": 100}


def test_group_boundaries_follow_many_over_100_few_under_20():
    counts = np.array([101, 100, 99, 21, 20, 19, 1])
    assert shot_groups(counts).tolist() == ["many", "medium", "medium", "medium", "medium", "few", "few"]


def test_metric_arithmetic_on_a_hand_made_confusion():
    # 4 classes, train counts: two many, one medium, one few
    train_counts = np.array([200, 150, 50, 5])
    # test: 4, 2, 5, 1 images; correct: 3/4, 2/2, 1/5, 0/1
    targets = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 3])
    preds = np.array([0, 0, 0, 1, 1, 1, 2, 0, 0, 1, 3, 2])
    result = evaluate_predictions(targets, preds, train_counts, THRESHOLDS)
    assert result.per_class_accuracy == pytest.approx([75.0, 100.0, 20.0, 0.0])
    assert result.overall == pytest.approx((75 + 100 + 20 + 0) / 4)  # mean of per-class, not of images
    assert result.many == pytest.approx(87.5)
    assert result.medium == pytest.approx(20.0)
    assert result.few == pytest.approx(0.0)
    assert result.group_sizes == {"many": 2, "medium": 1, "few": 1}
    assert result.confusion[2].tolist() == [2, 1, 1, 1]


def test_empty_group_is_none_not_zero():
    result = evaluate_predictions(np.array([0, 1]), np.array([0, 1]), np.array([500, 300]), THRESHOLDS)
    assert result.many == 100.0 and result.medium is None and result.few is None


def test_confusion_is_indexed_true_then_predicted():
    cm = confusion_matrix(np.array([0, 0, 1]), np.array([1, 1, 1]), 2)
    assert cm.tolist() == [[0, 2], [0, 1]]
