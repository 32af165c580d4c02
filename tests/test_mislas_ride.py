"""MiSLAS and RIDE: their defining arithmetic, and what their runs do to the model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltbench.grid.plan import plan_grid
from ltbench.plugins.testing import build_tiny_run, catalog_with, run_methods
from ltbench.training import checkpoints
from ltbench.training.evaluate import predict_logits
from ltbench.training.run import build_run
from ltbench.training.targets import mix_pairs
from ltbench_builtin import mislas, ride

COUNTS = np.array([500, 300, 200, 100, 60, 40, 20, 10, 6, 5])


# ---- MiSLAS ----------------------------------------------------------------------------------------------------


def test_label_aware_smoothing_factors_follow_the_concave_sine_from_tail_to_head():
    eps = mislas.smoothing_per_class(np.array([100, 55, 10]), smooth_head=0.4, smooth_tail=0.1)
    assert eps.tolist() == pytest.approx([0.4, 0.1 + 0.3 * math.sin(math.pi / 4), 0.1])


def test_label_aware_smoothing_is_the_official_loss_on_labels_and_the_mixup_criterion_on_pairs():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(16, 10, generator=g) * 2, torch.randint(0, 10, (16,), generator=g)
    eps = mislas.smoothing_per_class(COUNTS, 0.4, 0.1)
    log_p = F.log_softmax(logits, 1)
    official = ((1 - eps[y]) * -log_p.gather(1, y[:, None]).squeeze(1) + eps[y] * -log_p.mean(1)).mean()
    assert torch.allclose(mislas.label_aware_smoothing(logits, y, eps), official, rtol=1e-5)
    b, lam = torch.randint(0, 10, (16,), generator=g), torch.rand(16, generator=g)
    rows = [lam[i] * mislas.label_aware_smoothing(logits[i:i + 1], y[i:i + 1], eps)
            + (1 - lam[i]) * mislas.label_aware_smoothing(logits[i:i + 1], b[i:i + 1], eps) for i in range(16)]
    assert torch.allclose(mislas.label_aware_smoothing(logits, mix_pairs(y, b, lam, 10), eps),
                          torch.stack(rows).mean(), rtol=1e-5)


@pytest.mark.parametrize("shift_bn", [True, False])
def test_mislas_stage_2_keeps_backbone_weights_and_shifts_bn_statistics_only_when_asked(tmp_path, shift_bn):
    (record,) = run_methods(catalog_with(), ["mislas"], tmp_path, settings={"mislas.shift_bn": str(shift_bn)})
    assert record["status"] == "completed" and record["extra"]["mislas"]["mixed_batches"] > 0
    run_dir = next(tmp_path.rglob("seed0"))
    before = checkpoints.load(run_dir / "stage1.pt")["model"]
    after = checkpoints.load(run_dir / "checkpoint-stage2.pt")
    weights = [k for k in before if k.startswith("backbone.") and k.endswith("weight")]
    stats = [k for k in before if k.endswith("running_mean")]
    assert weights and stats
    assert all(torch.equal(before[k], after["model"][k]) for k in weights)  # frozen
    moved = [not torch.equal(before[k], after["model"][k]) for k in stats]
    assert all(moved) if shift_bn else not any(moved)
    # the stage-1 classifier is retrained (at 0.2x the learning rate) together with per-class scales (1x)
    assert not torch.equal(before["classifier.weight"], after["model"]["classifier.head.weight"])
    assert not torch.equal(after["model"]["classifier.scales"], torch.ones(10))
    lrs = sorted(g["lr"] for g in after["optimizer"]["param_groups"])
    assert lrs[0] == pytest.approx(0.2 * lrs[1])
    assert record["second_stage"]["update_bn_statistics"] is shift_bn


# ---- RIDE ------------------------------------------------------------------------------------------------------


def test_ride_diversity_temperatures_and_loss_are_rides_arithmetic():
    t = ride.diversity_temperatures(COUNTS, 1.0, 0.05)
    prior = COUNTS / COUNTS.sum()
    w = 10 * prior * 0.05 + 0.95
    assert t.tolist() == pytest.approx((w / w.max()).tolist(), rel=1e-6)
    g = torch.Generator().manual_seed(0)
    expert, mean = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    p, q = F.softmax(mean / t, 1), F.softmax(expert / t, 1)
    kl = (p * (p.log() - q.log())).sum(1).mean()
    expected = -0.2 * t.mean() ** 2 * kl
    assert torch.allclose(ride.diversity_loss(expert, mean, t, -0.2), expected, rtol=1e-5)
    # the ensemble is a target, not trained through: only the expert gets a gradient
    mean.requires_grad_(True)
    ride.diversity_loss(expert.requires_grad_(True), mean, t, -0.2).backward()
    assert mean.grad is None and expert.grad is not None


@pytest.fixture
def ride_run(tmp_path):
    return build_tiny_run(tmp_path, "ride")


def test_ride_experts_share_the_early_layers_and_own_their_last_stages(ride_run):
    model, method = ride_run.model, ride_run.methods[0]
    experts = [model.heads[f"ride_expert{i}"] for i in (1, 2)]
    own = {id(p) for p in model.backbone.layer1.parameters()}  # tiny-cnn: the stem is shared, layer1 is expert 0's
    for e in experts:
        assert not own & {id(p) for p in e.parameters()}
        assert not torch.equal(next(e.stages.parameters()), next(model.backbone.layer1.parameters()))  # own init
    x = torch.randn(4, 3, 16, 16)
    output = model.forward_all(x)
    logits = method.expert_logits(model, output)
    logits[1].sum().backward()  # expert 1 alone: its stages and the shared stem, not expert 0's or expert 2's
    assert all(p.grad is not None for p in experts[0].parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.stem.parameters())
    assert all(p.grad is None for p in model.backbone.layer1.parameters())
    assert all(p.grad is None for p in experts[1].parameters())


def test_ride_evaluates_the_average_of_its_experts(ride_run):
    model, method = ride_run.model, ride_run.methods[0]
    images = ride_run.data.x_val[:32]
    got = predict_logits(ride_run, images)
    model.eval()
    with torch.no_grad():
        x = ride_run.image_store(images).normalise_uint8(ride_run.image_store(images).x)
        output = model.forward_all(x)
        expected = torch.stack(method.expert_logits(model, output)).mean(0)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, output.logits, atol=1e-3)  # not expert 0 alone


def test_ride_trains_every_expert_with_ldam_drw_and_the_diversity_loss(tmp_path):
    (record,) = run_methods(catalog_with(), ["ride"], tmp_path, epochs=3)
    assert record["status"] == "completed"
    assert record["extra"]["ride"] == {"experts": 3, "shared_until": "stem", "expert_stages": ["layer1"],
                                       "drw_epoch": 2, "expert_width": 32}
    history = [e for e in record["history"] if e["stage"] == 1]
    assert all("loss_ride_experts" in e and "loss_ride_diversity" in e for e in history)
    assert all(e["loss_ride_diversity"] < 0 for e in history)  # -0.2 x a divergence


# ---- the hook wiring, on hook-level inputs (no CIFAR-100, no training) ------------------------------------------


def _stand_in_run(stage=1, epoch=0, epochs=10):
    from types import SimpleNamespace

    return SimpleNamespace(train_counts=COUNTS, num_classes=len(COUNTS), device=torch.device("cpu"), stage=stage,
                           epoch=epoch, config={"epochs": epochs}, generator=torch.Generator().manual_seed(0))


def test_mislas_stage_2_loss_is_label_aware_smoothing_with_more_smoothing_on_head_classes():
    method, run = mislas.MiSLAS(), _stand_in_run(stage=2)
    assert method.ltbench_build_loss(run=run, stage=1) is None  # stage 1: cross-entropy toward mixup's targets
    loss = method.ltbench_build_loss(run=run, stage=2)
    logits = torch.zeros(2, 10)
    logits[:, 0] = logits[:, 9] = 5.0  # equally confident in the largest class (0) and the smallest (9)
    head, tail = loss(logits[:1], torch.tensor([0])), loss(logits[1:], torch.tensor([9]))
    log_p = F.log_softmax(logits[0], 0)
    for got, eps, y in ((head, 0.4, 0), (tail, 0.1, 9)):  # eps 0.4 on the head class, 0.1 on the tail class
        assert got.item() == pytest.approx(float((1 - eps) * -log_p[y] + eps * -log_p.mean()), rel=1e-5)
    assert head > tail


def test_mislas_stage_2_shifts_bn_retrains_the_classifier_at_a_fifth_of_the_lr_and_the_scales_at_full_lr():
    from ltbench.training.schedules import head_lr_factor

    method = mislas.MiSLAS()
    plan = method.ltbench_second_stage()
    assert plan.update_bn_statistics and not plan.cached_features and not plan.train_backbone
    assert plan.weight_decay == 2e-4
    previous = torch.nn.Linear(4, 10)
    head = method.ltbench_build_classifier(num_classes=10, stage=2, previous=previous)
    assert head.head is previous  # the stage-1 classifier, retrained (not a fresh one)
    factors = {name: head_lr_factor(plan, name) for name, _ in head.named_parameters()}
    assert factors == {"head.weight": 0.2, "head.bias": 0.2, "scales": 1.0}
    assert method.ltbench_build_classifier(num_classes=10, stage=1, previous=None) is None
    assert mislas.MiSLAS(shift_bn=False).ltbench_second_stage().update_bn_statistics is False


def test_mislas_stage_2_samples_class_balanced_and_stage_1_as_the_data_comes():
    method, run = mislas.MiSLAS(), _stand_in_run(stage=2)
    labels = np.repeat(np.arange(10), COUNTS * 20)  # 100 times as many images of class 0 as of class 9
    assert method.ltbench_build_sampler(run=run, stage=1, labels=labels) is None
    drawn = labels[np.array(list(method.ltbench_build_sampler(run=run, stage=2, labels=labels)))]
    np.testing.assert_allclose(np.bincount(drawn, minlength=10) / len(drawn), 0.1, atol=0.01)


def _ride_terms(method, run, logits, labels):
    """RIDE's extra-loss terms for the experts' ``logits`` (expert 0's first)."""
    from types import SimpleNamespace

    from ltbench.training.run import Batch

    method.expert_logits = lambda model, output: logits  # the experts' forward passes are tested above
    task = method.ltbench_build_loss(run=run, stage=1)
    terms = method.ltbench_extra_losses(run=run, model=None, batch=Batch(labels=labels, images=torch.zeros(1)),
                                        output=SimpleNamespace(logits=logits[0]))
    return task, terms


@pytest.mark.parametrize("epoch", [7, 8])  # the DRW epoch of 10 is round(0.8 x 10) = 8
def test_ride_trains_every_expert_with_ldam_drw_from_the_drw_epoch_and_class_aware_temperatures(epoch):
    from ltbench_builtin.losses import class_balanced_weights, ldam_loss, ldam_margins

    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(16, 10, generator=g) * 10 for _ in range(3)]
    labels = torch.randint(0, 10, (16,), generator=g)
    method, run = ride.RIDE(), _stand_in_run(epoch=epoch)
    task, terms = _ride_terms(method, run, logits, labels)
    after = epoch >= 8
    margins = ldam_margins(COUNTS, 0.5)
    weights = class_balanced_weights(COUNTS, 0.9999) if after else None

    def ldam_drw(z):
        return ldam_loss(z / 30, labels, margins, 30.0, weights)

    assert torch.allclose(task(logits[0], labels), ldam_drw(logits[0]))  # the task loss is expert 0's
    assert torch.allclose(terms["ride_experts"], ldam_drw(logits[1]) + ldam_drw(logits[2]))
    temperature = ride.diversity_temperatures(COUNTS, 1.0, 0.05) if after else 1.0
    mean = torch.stack(logits).mean(0)
    expected = sum(ride.diversity_loss(z, mean, temperature, method.opts["diversity_factor"]) for z in logits)
    assert torch.allclose(terms["ride_diversity"], expected)
    # the margins are there: the same logits without them give another loss
    assert not torch.allclose(terms["ride_experts"], sum(ldam_loss(z / 30, labels, margins * 0, 30.0, weights)
                                                         for z in logits[1:]))


def _ride_model(tmp_path, **settings):
    catalog = catalog_with()
    (cell,) = plan_grid(["ride"], ["synthetic-lt"], [0], "smoke", catalog=catalog,
                        settings={"backbone": "resnet8", **settings})
    return build_run(catalog, cell.dataset, cell.data, cell.config, 0, torch.device("cpu"), tmp_path,
                     log=lambda m: None)


def test_ride_defaults_to_its_cifar_diversity_factor():
    assert ride.RIDE().opts["diversity_factor"] == -0.45
    assert ride.RIDE(diversity_factor=-0.2).opts["diversity_factor"] == -0.2


def test_ride_reduced_width_makes_every_expert_three_quarters_as_wide(tmp_path):
    from ltbench.training.evaluate import model_cost

    full = _ride_model(tmp_path / "full")
    reduced = _ride_model(tmp_path / "reduced", **{"ride.reduce_width": "true"})
    model = reduced.model
    experts = [model.backbone.layer2, model.backbone.layer3]  # expert 0's own stages
    experts += [[model.heads[f"ride_expert{i}"].stages[0], model.heads[f"ride_expert{i}"].stages[1]] for i in (1, 2)]
    for layer2, layer3 in [experts[:2], *experts[2:]]:  # 16 -> 24 -> 48 channels, as RIDE's reduce_dimension
        assert (layer2[0].conv1.in_channels, layer2[-1].conv2.out_channels, layer3[-1].conv2.out_channels) == (16, 24, 48)
    assert model.num_features == 48 and model.classifier.cosine.weight.shape[0] == 48
    assert full.model.num_features == 64
    x = torch.randn(2, 3, 16, 16)
    method = reduced.methods[0]
    assert [tuple(z.shape) for z in method.expert_logits(model, model.forward_all(x))] == [(2, 10)] * 3
    cost_full, cost_reduced = model_cost(full), model_cost(reduced)
    assert cost_reduced["parameters"] < 0.65 * cost_full["parameters"]
    assert cost_reduced["inference_macs_per_image"] < 0.75 * cost_full["inference_macs_per_image"]


def test_ride_reduced_width_needs_a_cifar_resnet(tmp_path):
    (record,) = run_methods(catalog_with(), ["ride"], tmp_path, settings={"ride.reduce_width": "true"})
    assert record["status"] == "failed" and "reduce_width needs a CIFAR ResNet" in record["error"]
