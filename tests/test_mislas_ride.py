"""MiSLAS and RIDE: their defining arithmetic, and what their runs do to the model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltbench import checkpoints
from ltbench.engine import build_run, predict_logits
from ltbench.runner import plan_grid
from ltbench.targets import mix_pairs
from ltbench.testing import catalog_with, run_methods
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
    catalog = catalog_with()
    (cell,) = plan_grid(["ride"], ["synthetic-lt"], [0], "smoke", catalog=catalog)
    return build_run(catalog, cell.dataset, cell.data, cell.config, 0, torch.device("cpu"), tmp_path,
                     log=lambda m: None)


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
                                       "drw_epoch": 2}
    history = [e for e in record["history"] if e["stage"] == 1]
    assert all("loss_ride_experts" in e and "loss_ride_diversity" in e for e in history)
    assert all(e["loss_ride_diversity"] < 0 for e in history)  # -0.2 x a divergence
