import numpy as np
import pytest

from ltbench.results.metrics import confusion_matrix, evaluate_predictions, shot_groups

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


# ---------------------------------------------------------------------------------------------------------------
# calibration: expected calibration error (15 equal-width bins) and negative log-likelihood


def test_ece_is_the_weighted_gap_between_accuracy_and_confidence_per_bin():
    from ltbench.results.metrics import calibration

    # 100 images at confidence 0.9, half right: one bin, |0.5 - 0.9| = 40 points
    assert calibration(np.full(100, 0.9), np.arange(100) < 50, np.full(100, 0.9))["ece"] == pytest.approx(40.0)
    # two bins: 0.3 (25 % right, gap 5) holding 40 % of the images, 0.95 (all right, gap 5) holding 60 %
    conf = np.r_[np.full(40, 0.3), np.full(60, 0.95)]
    right = np.r_[np.arange(40) < 10, np.ones(60, bool)]
    assert calibration(conf, right, conf)["ece"] == pytest.approx(0.4 * 5 + 0.6 * 5)
    # a confidence of exactly 1 falls in the last bin; bin edges are right-closed, as 15 equal widths
    assert calibration(np.array([1.0, 1.0]), np.array([True, True]), np.ones(2))["ece"] == pytest.approx(0.0)


def test_nll_is_the_mean_negative_log_probability_of_the_true_class():
    from ltbench.results.metrics import calibration

    out = calibration(np.array([0.5, 0.8]), np.array([True, False]), np.array([0.5, 0.1]))
    assert out["nll"] == pytest.approx(-(np.log(0.5) + np.log(0.1)) / 2)
    assert out["bins"] == 15


def test_a_run_records_ece_and_nll_that_its_predictions_file_recomputes(tmp_path):
    from ltbench.results.metrics import calibration
    from ltbench.plugins.testing import catalog_with, run_methods

    [rec] = run_methods(catalog_with(), ["ce"], tmp_path, epochs=2)
    [npz] = list(tmp_path.rglob("predictions.npz"))
    with np.load(npz) as d:
        labels, preds, conf, true_p = d["labels"], d["predictions"], d["confidence"], d["true_probability"]
    assert np.all(conf >= true_p - 1e-6) and (conf > true_p + 1e-3).any()  # the predicted class: the most probable
    assert np.allclose(conf[preds == labels], true_p[preds == labels])
    again = calibration(conf, preds == labels, true_p)
    assert rec["calibration"]["ece"] == pytest.approx(again["ece"], abs=1e-4)
    assert rec["calibration"]["nll"] == pytest.approx(again["nll"], abs=1e-4)
    assert 0 <= rec["calibration"]["ece"] <= 100 and rec["calibration"]["nll"] > 0
