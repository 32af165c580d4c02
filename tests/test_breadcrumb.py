"""EMANATE and Breadcrumb sampling: the paper's defining properties."""

import math

import numpy as np
import pytest
import torch

from ltbench.plugins.testing import catalog_with, run_methods
from ltbench_builtin.breadcrumb import (Breadcrumb, BreadcrumbHead, BreadcrumbWeak, SnapshotBank, default_n_b,
                                        emanate_class, history_by_age, snapshot_lengths)

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


# ---- the hook wiring: what each hook hands to the next step ---------------------------------------------------
#
# The methods are driven through their own hooks on hook-level inputs (a stand-in run, batches of features), so
# these tests run in milliseconds without CIFAR-100. Every feature row encodes (100 x class + row, epoch), so a
# row of the assembled set says which class and which epoch it came from.

WIRING_COUNTS = np.array([8, 2, 1])  # n_B = ceil(11 / 3) = 4: K = 1, 2, 4


def _stand_in_run(batch_size=4):
    from types import SimpleNamespace

    return SimpleNamespace(train_counts=WIRING_COUNTS, seed=0, epoch=0, stage=1, config={"batch_size": batch_size},
                           model=SimpleNamespace(num_features=2))


def _epoch_rows(epoch):
    labels = torch.cat([torch.full((int(n),), c) for c, n in enumerate(WIRING_COUNTS)])
    feats = torch.stack([100.0 * labels + torch.arange(len(labels)) / 100, torch.full((len(labels),), float(epoch))], 1)
    return labels, feats


def _drive_epoch(method, run, epoch, head=None):
    """One stage-1 epoch through the method's hooks: epoch start, one extra-loss call per batch, epoch end.
    Returns what the extra-loss hook answered per batch."""
    from types import SimpleNamespace

    from ltbench.training.run import Batch

    run.epoch = epoch
    method.ltbench_epoch_start(run=run, stage=1)
    labels, feats = _epoch_rows(epoch)
    bs = run.config["batch_size"]
    answers = []
    for i in range(0, len(labels), bs):
        batch, output = Batch(labels=labels[i:i + bs]), SimpleNamespace(features=feats[i:i + bs])
        if isinstance(method, Breadcrumb):
            answers.append(method.ltbench_extra_losses(run=run, model=SimpleNamespace(classifier=head),
                                                       batch=batch, output=output))
        else:
            answers.append(method.ltbench_extra_losses(run=run, batch=batch, output=output))
    method.ltbench_epoch_end(run=run, stage=1)
    return answers


def test_strong_mode_shuffles_the_assembled_set_with_each_label_travelling_with_its_feature():
    method, run = Breadcrumb(), _stand_in_run()
    for epoch in range(1, 4):
        _drive_epoch(method, run, epoch, BreadcrumbHead(2, 3))
    labels = method.bank_labels
    assert torch.equal(torch.div(method.bank_features[:, 0], 100, rounding_mode="floor").long(), labels)
    assert not torch.equal(labels, labels.sort().values)  # shuffled, not class by class
    assert torch.bincount(labels).tolist() == [4, 4, 4]


@pytest.mark.parametrize("alignment", ["none", "mean"])
def test_the_alignment_option_reaches_the_bank_and_changes_what_it_assembles(alignment):
    method, run = Breadcrumb(alignment=alignment), _stand_in_run()
    for epoch in range(1, 5):
        _drive_epoch(method, run, epoch, BreadcrumbHead(2, 3))
    assert method.bank.alignment == alignment
    tail = method.bank_features[method.bank_labels == 2]  # K 4: one row from each of epochs 4, 3, 2, 1
    if alignment == "none":  # each row keeps its own epoch
        assert sorted(tail[:, 1].tolist()) == [1.0, 2.0, 3.0, 4.0]
    else:  # moved onto the newest epoch's class mean
        assert tail[:, 1].tolist() == [4.0] * 4


def test_the_emanate_set_is_rebuilt_every_epoch_and_h_c_trains_on_the_newest_one():
    torch.manual_seed(0)
    method, run, head = Breadcrumb(alignment="none"), _stand_in_run(), BreadcrumbHead(2, 3)
    assert _drive_epoch(method, run, 1, head) == [None] * 3  # no set before the first epoch ends
    for epoch in range(2, 6):
        built = (method.bank_features.clone(), method.bank_labels.clone())
        assert built[0][built[1] == 0][:, 1].tolist() == [epoch - 1.0] * 4  # K 1: the epoch just ended, only
        answers = _drive_epoch(method, run, epoch, head)
        bs = run.config["batch_size"]
        for i, answer in enumerate(answers):  # bank batch i goes with image batch i, through h_c (not h_r)
            rows = slice(i * bs, (i + 1) * bs)
            expected = torch.nn.functional.cross_entropy(head.balanced(built[0][rows]), built[1][rows])
            assert torch.allclose(answer["breadcrumb"], expected)


def test_weak_mode_back_tracks_its_stage_2_set_is_not_the_plain_newest_snapshot():
    method, run = BreadcrumbWeak(alignment="none"), _stand_in_run()
    for epoch in range(1, 6):
        _drive_epoch(method, run, epoch)
    plan = method.ltbench_second_stage(run=run)
    labels = torch.as_tensor(plan.labels)
    assert torch.bincount(labels).tolist() == [4, 4, 4]
    assert sorted(plan.features[labels == 2][:, 1].tolist()) == [2.0, 3.0, 4.0, 5.0]  # K 4: four epochs back
    assert plan.features[labels == 0][:, 1].tolist() == [5.0] * 4  # K 1: the final epoch only


@pytest.mark.parametrize("warmup", ["partial-history", "class-balanced"])
def test_the_warmup_option_decides_the_set_before_the_history_is_full(warmup):
    method, run = Breadcrumb(alignment="none", warmup=warmup), _stand_in_run()
    for epoch in (1, 2):
        _drive_epoch(method, run, epoch, BreadcrumbHead(2, 3))
    assert not method.bank.ready  # class 2 needs 4 epochs
    tail_epochs = set(method.bank_features[method.bank_labels == 2][:, 1].tolist())
    if warmup == "partial-history":  # back-tracks through the two epochs there are
        assert tail_epochs == {1.0, 2.0}
    else:  # the paper's rule: class-balanced draws from the newest snapshot
        assert tail_epochs == {2.0}
