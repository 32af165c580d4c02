"""``bcl``: the balanced contrastive loss averages each class's negatives (a head class's many rows weigh as
one class) and brings every class's centre into every batch; the method trains on three views, the
logit-adjusted CE on the first."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltbench.api import ConfigError
from ltbench.plugins.testing import build_tiny_run, catalog_with, run_methods
from ltbench_builtin.bcl import BalancedContrastiveLearning, balanced_contrastive_loss


def _by_hand(features, labels, centers, t):
    """The loss written out anchor by anchor, from the formula (not the vectorised code)."""
    n = len(labels)
    rows = list(features) + list(centers)
    classes = labels.tolist() * 2 + list(range(len(centers)))
    total = 0.0
    for i in range(2 * n):
        others = [j for j in range(len(rows)) if j != i]
        members = {k: [j for j in others if classes[j] == k] for k in set(classes)}
        denom = sum(sum(math.exp(float(rows[i] @ rows[j]) / t) for j in js) / len(js)
                    for js in members.values() if js)
        pos = members[classes[i]]
        total += -sum(float(rows[i] @ rows[p]) / t - math.log(denom) for p in pos) / len(pos)
    return total / (2 * n)


def test_the_loss_is_the_formula_anchor_by_anchor():
    g = torch.Generator().manual_seed(0)
    feats = F.normalize(torch.randn(8, 5, generator=g), dim=1)
    centers = F.normalize(torch.randn(3, 5, generator=g), dim=1)
    labels = torch.tensor([0, 0, 1, 2])
    got = balanced_contrastive_loss(feats, labels, centers, 0.1)
    assert math.isclose(float(got), _by_hand(feats, labels, centers, 0.1), rel_tol=1e-5)


def test_class_averaging_makes_a_head_class_with_many_rows_weigh_as_one_class():
    # every member of a class (rows of both views and its centre) sits on one unit vector
    u = F.normalize(torch.tensor([[1.0, 0.2, 0.0], [0.1, 1.0, 0.3]]), dim=1)
    few, many = torch.tensor([0, 1]), torch.tensor([0, 0, 0, 0, 1])
    as_views = lambda labels: torch.cat([u[labels], u[labels]])  # noqa: E731
    a = balanced_contrastive_loss(as_views(few), few, u, 0.1)
    b = balanced_contrastive_loss(as_views(many), many, u, 0.1)
    assert torch.isclose(a, b, atol=1e-6)  # four copies of class 0 weigh as one


def test_every_class_centre_takes_part_even_when_its_class_is_not_in_the_batch():
    g = torch.Generator().manual_seed(1)
    feats = F.normalize(torch.randn(6, 4, generator=g), dim=1)
    centers = F.normalize(torch.randn(4, 4, generator=g), dim=1).requires_grad_(True)
    balanced_contrastive_loss(feats, torch.tensor([0, 1, 1]), centers, 0.1).backward()
    assert centers.grad[3].abs().sum() > 0 and centers.grad[2].abs().sum() > 0  # classes 2 and 3 are absent


def test_bcl_trains_three_views_with_the_logit_adjusted_ce_on_the_first(tmp_path):
    catalog = catalog_with()
    run = build_tiny_run(tmp_path / "built", "bcl", catalog=catalog)
    assert {"bcl_projection", "bcl_centres"} <= set(run.model.heads)
    loss = run.pm.hook.ltbench_build_loss(run=run, stage=1)
    logits, labels = torch.randn(4, run.num_classes), torch.tensor([0, 1, 2, 3])
    prior = np.asarray(run.train_counts, dtype=np.float64) / np.sum(run.train_counts)
    want = 2.0 * F.cross_entropy(logits + torch.tensor(np.log(prior), dtype=torch.float32), labels)
    assert torch.allclose(loss(logits, labels), want)
    (ce,) = run_methods(catalog, ["ce"], tmp_path / "ce")
    (bcl,) = run_methods(catalog, ["bcl"], tmp_path / "bcl")
    assert bcl["status"] == "completed", bcl["error"]
    assert [e["images"] for e in bcl["history"]] == [3 * e["images"] for e in ce["history"]]
    assert all(math.isfinite(e["loss_bcl"]) and e["loss_bcl"] > 0 for e in bcl["history"])


def test_bad_options_are_named_errors():
    with pytest.raises(ConfigError, match="bcl.temperature must be > 0"):
        BalancedContrastiveLearning(temperature=0)
    with pytest.raises(ConfigError, match="bcl.beta is a loss weight"):
        BalancedContrastiveLearning(beta=-1)
