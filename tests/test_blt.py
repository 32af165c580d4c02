"""BLT: the paper's defining properties."""

import math
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from ltbench.plugins.testing import catalog_with, run_methods
from ltbench.training.run import Batch
from ltbench_builtin.blt import BLT, SquashingCosine, gamma_balancer_shares, hallucinate, pick_targets


def tiny_model(num_classes=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 4 * 4, num_classes))


def test_each_image_stops_at_its_threshold_or_after_15_iterations():
    model = tiny_model()
    images = torch.randn(3, 1, 4, 4)
    targets = torch.tensor([1, 2, 3])
    thresholds = torch.tensor([0.0, 0.999999, 0.0])  # 0.0: already there; 0.999999: never within 15 steps
    out, iters, forwards = hallucinate(model, images, targets, thresholds, step=0.7, max_iters=15)
    assert iters.tolist() == [0, 15, 0]
    assert forwards == 15  # one batched forward per iteration, never one per image
    assert torch.equal(out[0], images[0]) and torch.equal(out[2], images[2])
    model.eval()
    before, after = (torch.softmax(model(x[1:2]), 1)[0, 2] for x in (images, out))
    assert after > before  # ascent on the target's score


def test_an_image_stops_as_soon_as_it_passes():
    model = tiny_model()
    images = torch.randn(1, 1, 4, 4)
    model.eval()
    start = torch.softmax(model(images), 1)[0, 1].item()
    goal = torch.tensor([start + 0.05])
    out, iters, forwards = hallucinate(model, images, torch.tensor([1]), goal, step=20.0)
    assert 1 <= iters.item() < 15 and forwards == iters.item() + 1  # the last forward sees it pass
    assert torch.softmax(model(out), 1)[0, 1] >= goal


def test_generation_changes_no_parameter_gradient_or_batch_norm_statistic():
    model = tiny_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hallucinate(model, torch.randn(4, 1, 4, 4), torch.tensor([0, 1, 2, 3]), torch.full((4,), 0.9))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_targets_are_never_the_true_class_and_always_confused():
    confusion = np.array([[5, 0, 3, 0], [0, 9, 0, 0], [1, 1, 7, 1], [0, 2, 0, 8]])  # [true, pred]
    labels = torch.tensor([0, 1, 2, 3] * 50)
    targets = pick_targets(labels, confusion, torch.Generator().manual_seed(0))
    for c, t in zip(labels.tolist(), targets.tolist()):
        if c == 1:
            assert t == -1  # no confusion: skipped
        else:
            assert t != c and confusion[c, t] > 0
    class0 = targets[labels == 0]
    assert set(class0.tolist()) == {2}


def fake_run(counts):
    return SimpleNamespace(stage=2, train_counts=np.asarray(counts), num_classes=len(counts))


def test_exactly_ceil_p_k_tail_samples_are_hallucinated_and_keep_their_labels():
    counts = [200, 150, 15, 10]  # classes 2 and 3 are tail (<= 20 images)
    method = BLT(p=0.5)
    method.generator.manual_seed(0)
    method.confusion = np.ones((4, 4), dtype=int)
    labels = torch.tensor([0, 2, 1, 3, 3, 0, 2, 1, 3])  # k = 5 tail samples
    batch = Batch(labels=labels.clone(), images=torch.randn(9, 1, 4, 4))
    method.ltbench_augment_batch(run=fake_run(counts), model=tiny_model(), batch=batch)
    new = batch.labels[9:]
    assert len(new) == math.ceil(0.5 * 5) == len(batch.images) - 9
    assert set(new.tolist()) <= {2, 3}
    assert not Counter(new.tolist()) - Counter([2, 2, 3, 3, 3])  # drawn from the batch's own tail samples
    assert torch.equal(batch.labels[:9], labels)
    assert method.stats["hallucinated"] == 3


def test_no_hallucination_without_tail_samples_or_before_a_validation_confusion():
    method = BLT()
    batch = Batch(labels=torch.tensor([0, 1]), images=torch.randn(2, 1, 4, 4))
    method.ltbench_augment_batch(run=fake_run([200, 150, 15, 10]), model=tiny_model(), batch=batch)
    assert len(batch.labels) == 2  # no confusion matrix yet
    method.confusion = np.ones((4, 4), dtype=int)
    method.ltbench_augment_batch(run=fake_run([200, 150, 15, 10]), model=tiny_model(), batch=batch)
    assert len(batch.labels) == 2  # no tail sample


def test_squashing_factor_is_in_0_1_rising_with_norm_and_logits_ignore_weight_scale():
    head = SquashingCosine(5, 3, alpha=20.0, beta=0.5)
    x = torch.randn(4, 5)
    norms = torch.tensor([0.01, 0.5, 2.0, 100.0])
    factors = head.squash(x / x.norm(dim=1, keepdim=True) * norms[:, None]).squeeze(1)
    assert torch.all((factors > 0) & (factors < 1)) and torch.all(factors[1:] > factors[:-1])
    assert torch.allclose(factors, norms / (0.5 + norms))
    logits = head(x)
    assert torch.all(logits.abs() < 20.0)
    with torch.no_grad():
        head.weight.mul_(torch.tensor([3.0, 0.1, 7.0])[:, None])
    assert torch.allclose(head(x), logits, atol=1e-5)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
def test_gamma_balancer_class_shares_follow_n_to_the_1_minus_gamma(gamma):
    counts = np.array([400, 100, 25])
    expected = counts ** (1 - gamma) / (counts ** (1 - gamma)).sum()
    np.testing.assert_allclose(gamma_balancer_shares(counts, gamma), expected)


def test_blt_run_reads_validation_only_and_records_its_cost(tmp_path):
    # the test split is sealed during training: a run that read it would fail
    (ce, rec) = run_methods(catalog_with(), ["ce", "blt"], tmp_path, epochs=4, settings={"stage2_epochs": "3"})
    assert rec["status"] == "completed", rec["error"]
    assert rec["stage1"]["reused"] and rec["second_stage"]["train_backbone"]
    extra = rec["extra"]["blt"]
    assert extra["hallucinated"] > 0 and extra["forward_passes"] <= 15 * extra["batches_with_tail"]
    assert extra["time_ratio_vs_no_hallucination"] > 1


# ---- the defining properties issue 15 pins, in a real run ------------------------------------------------------


def test_stage_2_classifier_is_eq_2_with_both_factors_and_stage_1_keeps_the_default():
    method = BLT(alpha=16.0, beta=0.5)
    assert method.ltbench_build_classifier(in_features=6, num_classes=3, stage=1) is None
    head = method.ltbench_build_classifier(in_features=6, num_classes=3, stage=2)
    assert isinstance(head, SquashingCosine)
    x = torch.randn(5, 6) * torch.tensor([0.1, 1.0, 3.0, 10.0, 0.5])[:, None]
    norm = x.norm(dim=1, keepdim=True)
    cos = (x / norm) @ (head.weight / head.weight.norm(dim=1, keepdim=True)).t()
    assert torch.allclose(head(x), 16.0 * norm / (0.5 + norm) * cos, atol=1e-5)


def test_stage_2_samples_with_the_gamma_balancer_and_stage_1_with_the_default():
    labels = np.repeat([0, 1, 2], [400, 100, 25])
    run = SimpleNamespace(num_classes=3, generator=torch.Generator().manual_seed(0))
    method = BLT(gamma=0.5)
    assert method.ltbench_build_sampler(run=run, stage=1, labels=labels) is None
    drawn = Counter(labels[list(iter(method.ltbench_build_sampler(run=run, stage=2, labels=labels)))].tolist())
    total = sum(drawn.values())
    expected = gamma_balancer_shares(np.array([400, 100, 25]), 0.5)  # n^(1-gamma): 20 : 10 : 5
    for c in range(3):
        assert abs(drawn[c] / total - expected[c]) < 0.04


def test_confusion_is_refreshed_from_validation_every_epoch_and_hallucination_starts_in_stage_2_epoch_2(tmp_path):
    from ltbench import Method, MethodMetadata, hookimpl

    seen = []

    class Probe(Method):
        name = "blt-probe"
        metadata = MethodMetadata(title="reads blt's state after its epoch_end")

        @hookimpl
        def ltbench_epoch_end(self, run, stage, epoch):
            blt = next(m for m in run.methods if m.name == "blt")
            confusion = None if blt.confusion is None else blt.confusion.copy()
            matches = confusion is not None and np.array_equal(confusion, run.validation().confusion)
            seen.append((stage, epoch, blt.stats["hallucinated"], matches, confusion))

    (rec,) = run_methods(catalog_with(Probe), ["blt+blt-probe"], tmp_path, epochs=2,
                         settings={"stage2_epochs": "3"})
    assert rec["status"] == "completed", rec["error"]
    assert [(s, e, h) for s, e, h, _, _ in seen[:2]] == [(1, 0, 0), (1, 1, 0)]  # nothing in stage 1
    stage2 = [x for x in seen if x[0] == 2]
    assert [x[2] for x in stage2][0] == 0 and stage2[1][2] > 0  # none in its first epoch, some from its second
    assert all(x[3] for x in stage2)  # after every stage-2 epoch: this epoch's validation confusion
    assert any(not np.array_equal(a[4], b[4]) for a, b in zip(stage2, stage2[1:]))  # and it is refreshed


@pytest.mark.slow
def test_hallucination_raises_few_shot_accuracy_against_the_same_fine_tune_without_it(tmp_path):
    recs = run_methods(catalog_with(), ["blt", "blt-finetune"], tmp_path, seeds=(0, 1), epochs=4,
                       settings={"stage2_epochs": "4"})
    few = {m: np.mean([r["metrics"]["few"] for r in recs if r["method"] == m]) for m in ("blt", "blt-finetune")}
    backbone = {r["method"]: r["compute"]["backbone_epochs"] for r in recs}
    assert backbone == {"blt": 8, "blt-finetune": 8}  # compute-matched twins
    assert all(r["extra"]["blt-finetune"]["hallucinated"] == 0 for r in recs if r["method"] == "blt-finetune")
    assert few["blt"] > few["blt-finetune"], few
