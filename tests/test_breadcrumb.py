"""EMANATE and Breadcrumb sampling: the paper's defining properties."""

import math

import numpy as np
import pytest
import torch

from ltbench.testing import catalog_with, run_methods
from ltbench_builtin.breadcrumb import (BreadcrumbHead, SnapshotBank, default_n_b, emanate_class,
                                        history_by_age, snapshot_lengths)

import toy_methods as toy


def test_n_b_and_snapshot_lengths_for_given_counts():
    counts = np.array([10, 4, 2])
    assert default_n_b(counts) == 6  # ceil(16 / 3)
    assert snapshot_lengths(counts, 6).tolist() == [1, 2, 3]
    cifar = np.array([int(500 * 0.01 ** (c / 99)) for c in range(100)])
    assert default_n_b(cifar) == 109 and snapshot_lengths(cifar, 109).max() == 22


def _epochs(counts, n_epochs, dim=4, seed=0):
    """Hand-made snapshots: epoch e shifts every class by a different offset."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return [(torch.randn(len(labels), dim, generator=g) + 3 * e, labels) for e in range(n_epochs)]


def test_every_class_contributes_exactly_n_b_features():
    counts = np.array([10, 4, 2])
    bank = SnapshotBank(counts, 6, "class-specific", 10, "mean")
    for feats, labels in _epochs(counts, 4):
        bank.push(feats, labels)
    assert bank.ready
    _, labels = bank.assemble(torch.Generator().manual_seed(1))
    assert np.bincount(labels.numpy()).tolist() == [6, 6, 6]


def test_aligned_blocks_have_the_current_class_mean_and_keep_within_class_offsets():
    g = torch.Generator().manual_seed(0)
    snaps = [torch.randn(2, 5, generator=g) + shift for shift in (0.0, -4.0, 7.0)]  # newest first
    rows = emanate_class(snaps, n_b=6, mode="mean", generator=g)
    assert rows.shape == (6, 5)
    current_mean = snaps[0].mean(0)
    assert torch.equal(rows[:2], snaps[0])  # the newest block is unchanged
    for k in (1, 2):  # fully back-tracked blocks
        block = rows[2 * k: 2 * k + 2]
        assert torch.allclose(block.mean(0), current_mean, atol=1e-5)
        assert torch.allclose(block - current_mean, snaps[k] - snaps[k].mean(0), atol=1e-5)


def test_the_oldest_block_is_a_random_subsample_to_reach_n_b():
    g = torch.Generator().manual_seed(0)
    snaps = [torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g) + 5]
    rows = emanate_class(snaps, n_b=6, mode="none", generator=g)
    assert torch.equal(rows[:4], snaps[0])
    tail = {tuple(r.tolist()) for r in rows[4:]}
    assert len(tail) == 2 and tail <= {tuple(r.tolist()) for r in snaps[1]}


def test_classes_with_at_least_n_b_images_are_never_back_tracked():
    counts = np.array([10, 4, 2])
    bank = SnapshotBank(counts, 6, "class-specific", 10, "mean")
    epochs = _epochs(counts, 3)
    for feats, labels in epochs:
        bank.push(feats, labels)
    assert len(bank.queues[0]) == 1  # no history kept for the head class
    feats, labels = bank.assemble(torch.Generator().manual_seed(1))
    newest = {tuple(r.tolist()) for r in epochs[-1][0][epochs[-1][1] == 0]}
    assert {tuple(r.tolist()) for r in feats[labels == 0]} <= newest


def test_class_agnostic_alignment_moves_every_class_by_the_same_vector():
    counts = np.array([4, 2])
    bank = SnapshotBank(counts, 4, "class-specific", 10, "agnostic")  # K = [1, 2]
    epochs = _epochs(counts, 2)
    for feats, labels in epochs:
        bank.push(feats, labels)
    rows = emanate_class(list(bank.queues[1]), 4, "agnostic", torch.Generator(), list(bank.all_means))
    old_block = epochs[0][0][epochs[0][1] == 1]
    shift = rows[2:] - old_block
    expected = epochs[1][0].mean(0) - epochs[0][0].mean(0)  # one mean over all classes
    assert torch.allclose(shift, expected.expand_as(shift), atol=1e-5)


def test_variance_alignment_matches_the_current_mean_and_std():
    g = torch.Generator().manual_seed(0)
    snaps = [torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g) * 4 + 2]
    rows = emanate_class(snaps, n_b=10, mode="var", generator=g)
    assert torch.allclose(rows[5:].mean(0), snaps[0].mean(0), atol=1e-5)
    assert torch.allclose(rows[5:].std(0, unbiased=False), snaps[0].std(0, unbiased=False), atol=1e-4)


def test_head_answers_with_h_r_in_training_and_h_c_in_evaluation():
    head = BreadcrumbHead(3, 2)
    x = torch.randn(4, 3)
    assert torch.equal(head.train()(x), head.instance(x))
    assert torch.equal(head.eval()(x), head.balanced(x))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    catalog = catalog_with(*toy.ALL)
    recs = run_methods(catalog, ["ce", "breadcrumb+forward-counter", "breadcrumb-weak"], out, epochs=11)
    return out, {r["method"]: r for r in recs}


def _backbone(path):
    state = torch.load(path, weights_only=True)["model"]
    return {k: v for k, v in state.items() if k.startswith("backbone.")}


def test_the_classifier_step_never_changes_the_backbone(runs):
    out, recs = runs
    assert all(r["status"] == "completed" for r in recs.values()), [r["error"] for r in recs.values()]
    plain = _backbone(out / recs["ce"]["stage1"]["source"] / "stage1.pt")
    strong = _backbone(next(out.rglob("breadcrumb+forward-counter/*/seed0/stage1.pt")))
    weak = _backbone(next(out.rglob("breadcrumb-weak/*/seed0/checkpoint-stage2.pt")))
    # the same backbone as plain CE training: h_c's loss never reaches it, and weak's stage 2 is frozen
    assert all(torch.equal(plain[k], strong[k]) and torch.equal(plain[k], weak[k]) for k in plain)


def test_no_extra_backbone_forward_pass_per_epoch(runs):
    _, recs = runs
    rec = recs["breadcrumb+forward-counter"]
    batches = math.ceil(sum(rec["train_counts"]) / rec["config"]["batch_size"])
    assert rec["extra"]["forward-counter"]["per_epoch"] == [batches] * 11


def test_strong_breadcrumb_reaches_full_history_and_records_its_bank(runs):
    _, recs = runs
    extra = recs["breadcrumb+forward-counter"]["extra"]["breadcrumb"]
    assert extra["k_max"] == 10 and extra["full_history_after_epoch"] == 10
    assert extra["set_size"] == extra["n_b"] * 10
    assert 0 < extra["bank_peak_rows"] and extra["bank_peak_mb"] > 0
    ages = extra["history_by_age"]
    assert [a["age"] for a in ages] == list(range(10)) and ages[0]["spread_ratio"] == 1.0


def test_weak_breadcrumb_retrains_on_the_final_emanate_set(runs):
    _, recs = runs
    rec = recs["breadcrumb-weak"]
    assert rec["second_stage"]["own_feature_set"]
    assert rec["second_stage"]["feature_set_size"] == rec["extra"]["breadcrumb-weak"]["n_b"] * 10


def test_back_tracked_blocks_come_from_the_right_epochs_newest_first():
    counts = np.array([10, 4, 2])  # n_B 6: K = 1, 2, 3
    bank = SnapshotBank(counts, 6, "class-specific", 10, "none")  # no alignment: rows keep their epoch's values
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    for epoch in range(1, 6):  # every feature of epoch e holds e in all dimensions (plus a row index)
        feats = torch.full((len(labels), 2), float(epoch))
        feats[:, 1] += torch.arange(len(labels)) / 100
        bank.push(feats, labels)
    feats, got = bank.assemble(torch.Generator().manual_seed(0))
    epochs_of = {c: feats[got == c][:, 0].tolist() for c in range(3)}
    assert set(epochs_of[0]) == {5.0}  # K 1: the newest epoch only
    assert epochs_of[1] == [5.0] * 4 + [4.0] * 2  # K 2: epoch 5, then (a subsample of) epoch 4
    assert epochs_of[2] == [5.0] * 2 + [4.0] * 2 + [3.0] * 2  # K 3: epochs 5, 4, 3; never 2 or 1


def test_the_history_by_age_measures_how_tight_and_how_separable_old_aligned_blocks_are():
    """Two classes; epoch e's features of class c sit at x = 10 c + 10 e (the embedding drifts by a class gap
    each epoch) with a spread that grows with e: older blocks are tighter, and only once aligned do they land
    on their own class's newest mean (unaligned, class 1's older blocks sit on class 0's)."""
    counts = np.array([8, 2])  # n_B 5: K = 1, 3
    bank = SnapshotBank(counts, 5, "class-specific", 10, "mean")
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    noise = 0.1 * torch.randn(len(labels), 2, generator=torch.Generator().manual_seed(0))
    for epoch in range(1, 5):
        feats = torch.stack([labels * 10.0 + 10.0 * epoch, torch.zeros(len(labels))], 1) + epoch * noise
        bank.push(feats, labels)
    ages = history_by_age(bank)
    assert [a["age"] for a in ages] == [0, 1, 2] and [a["classes"] for a in ages] == [2, 1, 1]
    assert ages[0]["spread_ratio"] == 1.0 and ages[0]["nearest_mean_accuracy"] == 1.0
    assert ages[1]["spread_ratio"] == pytest.approx(3 / 4, abs=1e-3)  # epoch 3's spread over epoch 4's
    assert ages[2]["spread_ratio"] == pytest.approx(2 / 4, abs=1e-3)
    assert ages[1]["nearest_mean_accuracy"] == ages[2]["nearest_mean_accuracy"] == 1.0
    bank.alignment = "none"  # the same history unaligned: class 1's old rows are nearest class 0's newest mean
    assert [a["nearest_mean_accuracy"] for a in history_by_age(bank)] == [1.0, 0.0, 0.0]
