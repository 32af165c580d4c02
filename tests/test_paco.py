"""``paco``: the classifier's logits are parametric class centres inside a MoCo-style supervised contrastive
loss (momentum key encoder, queue); with no sample terms the loss is the logit-adjusted cross-entropy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltbench.api import ConfigError
from ltbench.plugins.testing import build_tiny_run, catalog_with, run_methods
from ltbench_builtin.paco import KeyQueue, ParametricContrastiveLearning, paco_loss


def _by_hand(q, k, labels, queue, queue_labels, sup, alpha, beta, gamma, t):
    """The loss written out anchor by anchor, from the formula (not the vectorised code)."""
    samples = list(q) + list(k) + list(queue)
    classes = labels.tolist() * 2 + queue_labels.tolist()
    out = []
    for i in range(len(labels)):
        terms = [(float(sup[i, c]), 1.0, beta if c == labels[i] else 0.0) for c in range(sup.shape[1])]
        terms += [(float(q[i] @ samples[j]) / t, gamma, alpha if classes[j] == labels[i] else 0.0)
                  for j in range(len(samples)) if j != i]
        log_denominator = math.log(sum(w * math.exp(z) for z, w, _ in terms))
        positives = [(z, p) for z, _, p in terms if p > 0]
        out.append(-sum(p * (z - log_denominator) for z, p in positives) / sum(p for _, p in positives))
    return torch.tensor(out)


def _data(seed=0, b=4, c=3, k=5, d=6):
    g = torch.Generator().manual_seed(seed)
    unit = lambda n: F.normalize(torch.randn(n, d, generator=g), dim=1)  # noqa: E731
    return (unit(b), unit(b), torch.tensor([0, 0, 1, 2])[:b], unit(k), torch.tensor([0, 1, -1, 2, 1])[:k],
            torch.randn(b, c, generator=g))


def test_the_loss_is_the_formula_anchor_by_anchor():
    q, k, labels, queue, queue_labels, sup = _data()
    got = paco_loss(q, k, labels, queue, queue_labels, sup, 0.3, 1.0, 0.7, 0.5)
    want = _by_hand(q, k, labels, queue, queue_labels, sup, 0.3, 1.0, 0.7, 0.5)
    assert torch.allclose(got, want, atol=1e-5)


def test_without_sample_terms_it_is_the_cross_entropy_of_the_centres():
    """alpha = gamma = 0 leaves only the parametric centres: the loss is the CE of the (prior-adjusted)
    classifier logits, so the centres are what PaCo adds to supervised contrastive learning."""
    q, k, labels, queue, queue_labels, sup = _data(1)
    got = paco_loss(q, k, labels, queue, queue_labels, sup, 0.0, 1.0, 0.0, 1.0)  # (T 1: the official 1e-12 stays tiny)
    assert torch.allclose(got, F.cross_entropy(sup, labels, reduction="none"), atol=1e-6)
    # and the centres pull: the gradient reaches the classifier's logits of the anchor's own class
    sup = sup.clone().requires_grad_(True)
    paco_loss(q, k, labels, queue, queue_labels, sup, 0.02, 1.0, 1.0, 0.05).sum().backward()
    assert (sup.grad[torch.arange(len(labels)), labels] < 0).all()


def test_the_queue_keeps_the_last_keys_and_wraps():
    queue = KeyQueue(5, 2)
    assert (queue.labels == -1).all()
    queue.push(torch.ones(3, 2), torch.tensor([4, 5, 6]))
    queue.push(2 * torch.ones(3, 2), torch.tensor([7, 8, 9]))
    assert queue.labels.tolist() == [9, 5, 6, 7, 8] and int(queue.pointer) == 1
    assert queue.keys[0].tolist() == [2.0, 2.0] and queue.keys[1].tolist() == [1.0, 1.0]


def test_a_step_moves_the_key_encoder_by_momentum_and_enqueues_the_keys(tmp_path):
    catalog = catalog_with()
    run = build_tiny_run(tmp_path / "built", "paco", settings={"paco.key_momentum": 0.9}, catalog=catalog)
    model, (method,) = run.model, run.methods
    heads = model.heads
    assert {"paco_projection", "paco_key_backbone", "paco_key_projection", "paco_queue"} <= set(heads)
    assert not any(p.requires_grad for p in heads["paco_key_backbone"].parameters())
    for p in heads["paco_key_backbone"].parameters():  # a key encoder that has drifted from the query's
        p.data.add_(0.5)
    before_q = [p.detach().clone() for p in model.backbone.parameters()]
    before_k = [p.detach().clone() for p in heads["paco_key_backbone"].parameters()]
    from ltbench.api import Batch

    height, width, channels = run.data.x_train.shape[1:]
    x = torch.randn(4, channels, height, width)
    labels = torch.tensor([0, 1, 2, 1])
    batch = Batch(labels=labels, images=x, extra_views=(x.flip(3),))
    model.train()
    output = model.forward_all(torch.cat([x, x.flip(3)]))
    losses = method.ltbench_extra_losses(run, model, batch, output)
    assert losses["paco"].requires_grad and math.isfinite(float(losses["paco"].detach()))
    for q0, k0, k1 in zip(before_q, before_k, heads["paco_key_backbone"].parameters()):
        assert torch.allclose(k1, 0.9 * k0 + 0.1 * q0, atol=1e-6)  # k <- m k + (1 - m) q
    queue = heads["paco_queue"]
    assert queue.labels[:4].tolist() == labels.tolist() and int(queue.pointer) == 4
    assert torch.allclose(queue.keys[:4].norm(dim=1), torch.ones(4), atol=1e-5)
    assert run.pm.hook.ltbench_build_loss(run=run, stage=1)(torch.randn(4, run.num_classes), labels) == 0


def test_paco_trains_two_views_and_its_loss_falls(tmp_path):
    catalog = catalog_with()
    (ce,) = run_methods(catalog, ["ce"], tmp_path / "ce")
    (paco,) = run_methods(catalog, ["paco"], tmp_path / "paco", epochs=4)
    assert paco["status"] == "completed", paco["error"]
    assert paco["history"][0]["images"] == 2 * ce["history"][0]["images"]
    losses = [e["loss_paco"] for e in paco["history"]]
    assert all(math.isfinite(v) and v > 0 for v in losses) and losses[-1] < losses[0]
    assert all(e["loss_task"] == 0 for e in paco["history"])


def test_bad_options_are_named_errors():
    with pytest.raises(ConfigError, match="paco.temperature must be > 0"):
        ParametricContrastiveLearning(temperature=0)
    with pytest.raises(ConfigError, match="paco.key_momentum must be in"):
        ParametricContrastiveLearning(key_momentum=1.0)
    with pytest.raises(ConfigError, match="no positive"):
        ParametricContrastiveLearning(alpha=0.0, beta=0.0)
    with pytest.raises(ConfigError, match="paco.gamma is a weight"):
        ParametricContrastiveLearning(gamma=-1)


def test_the_defaults_are_the_released_cifar100_scripts(tmp_path):
    """Issue 37, item 2: ``LT/sh/CIFAR100_train_imb0.01.sh`` as released (alpha 0.01, 32-d keys, lr 0.05), not its
    pre-release commit (0.02, 64, 0.02); the lr reaches the optimiser, as the record states."""
    from ltbench.api import build_catalog
    from ltbench.plugins.testing import catalog_with, run_methods

    cls = build_catalog().method("paco").cls
    assert {k: cls.options[k] for k in ("alpha", "beta", "gamma", "temperature", "queue", "dim", "peak_lr")} == {
        "alpha": 0.01, "beta": 1.0, "gamma": 1.0, "temperature": 0.05, "queue": 1024, "dim": 32, "peak_lr": 0.05}
    (rec,) = run_methods(catalog_with(), ["paco"], tmp_path, epochs=1)
    assert rec["status"] == "completed", rec["error"]
    (group,) = rec["optimizer"]["1"]["groups"]
    assert group["lr_factor"] * rec["config"]["lr"] == pytest.approx(0.05)
    first = next(e for e in rec["history"] if e["stage"] == 1)
    warm = rec["config"].get("warmup_epochs", 0)
    expected = 0.05 * (1 / warm if warm else 1.0)
    assert first["lr"] == pytest.approx(expected)
