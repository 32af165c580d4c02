"""What reaches BCL's and PaCo's losses: which view and which rows feed each term, what enters each loss (prior,
weights, scales, temperature), where the gradients flow and what state a step advances.

``test_bcl.py`` and ``test_paco.py`` pin the loss functions themselves; these tests pin the wiring around them
against the official code (BCL: ``main.py``, ``models/resnext.py`` ``BCLModel``, ``loss/logitadjust.py``; PaCo:
``LT/moco/builder.py`` ``MoCo._train``, ``LT/losses.py`` ``PaCoLoss``). Each is written out by hand from a copy
of the model taken before the step, with options away from their defaults, so that an option that never
reaches its loss shows. ``tests/test_wiring_mutants.py`` lists the one-line defects each test catches.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltbench.api import Batch, ModelOutput
from ltbench.plugins.testing import build_tiny_run
from ltbench.training.hooks import build_loss, train_views
from ltbench.training.loop import image_batch, run_steps
from ltbench_builtin.bcl import BalancedContrastiveLearning, balanced_contrastive_loss
from ltbench_builtin.paco import paco_loss

ROWS = 12  # the batch: rows of several classes, some repeated (positives within the batch)


def _stepping_run(tmp_path, method: str, settings: dict):
    """A tiny built run in stage 1, with the views its method asks for, in train mode, and one batch of it."""
    run = build_tiny_run(tmp_path, method, settings=settings)
    run.stage, run.epoch = 1, 0
    run.views = train_views(run, 1, on_features=False)
    run.model.train()
    order = torch.randperm(len(run.train_labels), generator=torch.Generator().manual_seed(0))[:ROWS]
    batch = image_batch(run, run.train_labels)(order)
    return run, batch


def _one_step(run, batch) -> dict[str, float]:
    """One training step of the core (forward over every view, task loss, extra losses, backward, step), with
    a zero learning rate so that the parameters stay put; the step's loss terms."""
    optimizer = torch.optim.SGD([p for p in run.model.parameters() if p.requires_grad], lr=0.0)
    sums, steps = run_steps(run, optimizer, build_loss(run, 1), torch.arange(len(batch.labels)), len(batch.labels),
                            lambda idx: batch)
    assert steps == 1
    return {k: float(v) for k, v in sums.items()}


def _log_training_prior(run) -> torch.Tensor:
    counts = np.bincount(run.train_labels, minlength=run.num_classes).astype(np.float64)  # the training set's
    assert counts.tolist() == list(run.train_counts) and counts.max() > 2 * counts.min()  # (imbalanced)
    return torch.tensor(np.log(counts / counts.sum()), dtype=torch.float32)


def _grad_flows(module: torch.nn.Module) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


# ---- BCL ---------------------------------------------------------------------------------------------------------

BCL = {"bcl.alpha": 1.7, "bcl.beta": 0.45, "bcl.temperature": 0.3, "bcl.feat_dim": 16, "bcl.scale": 11.0}


def test_bcl_step_trains_the_adjusted_ce_on_view_0_and_the_contrastive_term_on_views_1_and_2(tmp_path):
    """Official ``main.py``: ``logits`` of the first split only enter ``LogitAdjust`` (log training prior, tau 1),
    ``f2, f3`` (the MLP ``head`` of views 1 and 2) and the centres ``normalize(head_fc(fc.weight.T))`` enter
    ``BalSCL``; ``loss = alpha * ce + beta * scl``."""
    run, batch = _stepping_run(tmp_path, "bcl", BCL)
    assert batch.views == 3 and len(batch.extra_views) == 2
    n, scale = ROWS, BCL["bcl.scale"]
    ref = copy.deepcopy(run.model)  # the model as the step finds it (train mode: batch statistics, as the step)
    out = ref.forward_all(torch.cat([batch.images, *batch.extra_views]))
    # the classifier is the cosine scaled by the configured scale, the centres' source is its (d, C) weight
    weight = ref.classifier.weight
    assert weight.shape == (ref.num_features, run.num_classes)
    assert torch.allclose(out.logits, scale * F.normalize(out.features, dim=1) @ F.normalize(weight, dim=0),
                          atol=1e-5)
    ce = BCL["bcl.alpha"] * F.cross_entropy(out.logits[:n] + _log_training_prior(run), batch.labels)
    heads = ref.heads
    features = F.normalize(heads["bcl_projection"](out.features[n:3 * n]), dim=1)
    centres = F.normalize(heads["bcl_centres"](weight.T), dim=1)
    assert features.shape == (2 * n, BCL["bcl.feat_dim"]) and centres.shape == (run.num_classes, BCL["bcl.feat_dim"])
    scl = BCL["bcl.beta"] * balanced_contrastive_loss(features, batch.labels, centres, BCL["bcl.temperature"])

    terms = _one_step(run, batch)
    assert set(terms) == {"task", "bcl"}
    assert terms["task"] == pytest.approx(ce.item(), rel=1e-5)
    assert terms["bcl"] == pytest.approx(scl.item(), rel=1e-5)
    model = run.model  # every trained part of BCL gets a gradient from the step
    for part in (model.backbone, model.classifier, model.heads["bcl_projection"], model.heads["bcl_centres"]):
        assert _grad_flows(part), part


def test_bcl_contrastive_gradient_reaches_views_1_and_2_the_centre_head_and_the_classifier(tmp_path):
    """The contrastive term alone: its gradient reaches every row of views 1 and 2 (and so the backbone through
    both), no row of view 0 and no logit, the projection and centre heads, and the classifier's weights
    through the centres (the official centres are not detached). (The official ``BCLModel`` runs its MLP head
    over all three views in one batch, so view 0 enters its batch-norm statistics there; ltbench projects the
    rows of views 1 and 2 only, the same augmentation as view 0's.)"""
    run, batch = _stepping_run(tmp_path, "bcl", BCL)
    model, (method,) = run.model, run.methods
    n = ROWS
    g = torch.Generator().manual_seed(1)
    features = torch.randn(3 * n, model.num_features, generator=g).requires_grad_(True)
    logits = torch.randn(3 * n, run.num_classes, generator=g).requires_grad_(True)
    terms = method.ltbench_extra_losses(run=run, model=model, batch=batch,
                                        output=ModelOutput(logits, features, features))
    assert set(terms) == {"bcl"}
    terms["bcl"].backward()
    assert features.grad is not None, "the contrastive term does not reach the pooled features (the backbone)"
    per_row = features.grad.abs().sum(1)
    assert (per_row[:n] == 0).all(), "view 0 (the classification view) feeds the contrastive term"
    assert (per_row[n:] > 0).all(), "a row of view 1 or 2 gets no gradient from the contrastive term"
    assert logits.grad is None
    assert _grad_flows(model.heads["bcl_projection"]) and _grad_flows(model.heads["bcl_centres"])
    assert model.classifier.weight.grad is not None and model.classifier.weight.grad.abs().sum(0).gt(0).all(), \
        "the class centres do not train the classifier's weight vectors"
    assert not _grad_flows(model.backbone)  # (the features were given: the backbone is reached through them)


COUNTS = np.array([40, 20, 10, 5, 2, 1])


def test_bcl_task_loss_is_alpha_times_ce_adjusted_by_the_log_training_prior_for_every_target_form():
    """``LogitAdjust(cls_num_list)``: ``logits + tau * log(n_c / N)`` with tau 1, times alpha; the same on
    soft targets (mixup) and with row weights as on hard labels."""
    method = BalancedContrastiveLearning(alpha=0.7)
    run = SimpleNamespace(train_counts=COUNTS, num_classes=len(COUNTS), device=torch.device("cpu"))
    assert method.ltbench_build_loss(run=run, stage=2) is None
    loss = method.ltbench_build_loss(run=run, stage=1)
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(5, len(COUNTS), generator=g) * 3
    labels = torch.tensor([0, 5, 3, 5, 1])
    soft = F.softmax(torch.randn(5, len(COUNTS), generator=g), dim=1)
    rows = torch.tensor([0.5, 2.0, 1.0, 0.0, 1.5])
    log_p = F.log_softmax(logits + torch.tensor(np.log(COUNTS / COUNTS.sum()), dtype=torch.float32), dim=1)
    hard_ce = -log_p[torch.arange(5), labels]
    soft_ce = -(soft * log_p).sum(1)
    assert loss(logits, labels).item() == pytest.approx(0.7 * hard_ce.mean().item(), rel=1e-5)
    assert loss(logits, soft).item() == pytest.approx(0.7 * soft_ce.mean().item(), rel=1e-5)
    assert loss(logits, labels, row_weights=rows).item() == pytest.approx(0.7 * (rows * hard_ce).mean().item(),
                                                                          rel=1e-5)
    assert loss(logits, soft, row_weights=rows).item() == pytest.approx(0.7 * (rows * soft_ce).mean().item(),
                                                                        rel=1e-5)


def test_bcl_classifier_is_the_cosine_times_the_configured_scale_in_stage_1_only():
    method = BalancedContrastiveLearning(scale=7.0)
    head = method.ltbench_build_classifier(in_features=5, num_classes=4, stage=1)
    x = torch.randn(3, 5)
    assert torch.allclose(head(x), 7.0 * F.normalize(x, dim=1) @ F.normalize(head.weight, dim=0), atol=1e-6)
    assert method.ltbench_build_classifier(in_features=5, num_classes=4, stage=2) is None


# ---- PaCo --------------------------------------------------------------------------------------------------------

PACO = {"paco.alpha": 0.3, "paco.beta": 0.8, "paco.gamma": 0.6, "paco.temperature": 0.4, "paco.queue": 30,
        "paco.dim": 8, "paco.key_momentum": 0.7}
FILLED = 10  # queue entries pushed before the step


def _key_encoder(model):
    return (model.heads["paco_key_backbone"], model.heads["paco_key_projection"])


def _paco_run(tmp_path):
    """A PaCo run whose key encoder has drifted from the query encoder (so that the momentum update shows) and
    whose queue holds labelled keys (so that queue entries are positives as well as negatives)."""
    run, batch = _stepping_run(tmp_path, "paco", PACO)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for part in _key_encoder(run.model):
            for p in part.parameters():
                p.add_(0.2 * torch.randn(p.shape, generator=g))
        run.model.heads["paco_queue"].push(F.normalize(torch.randn(FILLED, PACO["paco.dim"], generator=g), dim=1),
                                           batch.labels[:FILLED].roll(1))
    return run, batch


def _keys(model, view: torch.Tensor) -> torch.Tensor:
    key_backbone, key_projection = _key_encoder(model)
    with torch.no_grad():
        return F.normalize(key_projection(key_backbone.forward_pool(key_backbone.forward_features(view))), dim=1)


def _paco_by_hand(features, logits, labels, keys, queue_keys, queue_labels, projection, log_prior):
    """PaCo's per-anchor loss from the query rows' pooled ``features`` and ``logits`` (view 0), the step's
    ``keys`` and the queue as the step found it, with the configured weights and temperature."""
    queries = F.normalize(projection(features), dim=1)
    return paco_loss(queries, keys, labels, queue_keys, queue_labels, logits + log_prior, PACO["paco.alpha"],
                     PACO["paco.beta"], PACO["paco.gamma"], PACO["paco.temperature"])


def test_paco_step_moves_the_key_encoder_then_contrasts_view_0_with_its_keys_and_the_old_queue_then_enqueues(
        tmp_path):
    """Official ``MoCo._train``: momentum update (``k <- m k + (1 - m) q`` over the backbone and the projection),
    then keys of the key view by the moved key encoder, without gradient; the loss over ``[q, k, queue]`` with
    the queue as it was; then the keys (not the queries) and their labels enqueued, once. ``PaCoLoss``: the
    classifier's logits of the query plus ``log(prior + 1e-9)``, alpha, beta, gamma and the temperature as
    configured; the mean over anchors."""
    run, batch = _paco_run(tmp_path)
    assert batch.views == 2 and len(batch.extra_views) == 1
    n, m = ROWS, PACO["paco.key_momentum"]
    queue = run.model.heads["paco_queue"]
    queue_keys, queue_labels = queue.keys.clone(), queue.labels.clone()
    assert int(queue.pointer) == FILLED
    ref = copy.deepcopy(run.model)
    with torch.no_grad():  # the momentum update, by hand, on the copy
        for query, key in ((ref.backbone, ref.heads["paco_key_backbone"]),
                           (ref.heads["paco_projection"], ref.heads["paco_key_projection"])):
            for p_q, p_k in zip(query.parameters(), key.parameters()):
                p_k.copy_(m * p_k + (1 - m) * p_q)
    out = ref.forward_all(torch.cat([batch.images, batch.extra_views[0]]))
    keys = _keys(ref, batch.extra_views[0])
    prior = _log_training_prior(run)
    want = _paco_by_hand(out.features[:n], out.logits[:n], batch.labels, keys, queue_keys, queue_labels,
                         ref.heads["paco_projection"], torch.log(prior.exp() + 1e-9)).mean()

    terms = _one_step(run, batch)
    assert set(terms) == {"task", "paco"}
    assert terms["task"] == 0  # PaCo's one loss is its own term
    assert terms["paco"] == pytest.approx(want.item(), rel=1e-5)
    # the key encoder moved once, by the configured momentum, and got no gradient
    for moved, expected in zip(_key_encoder(run.model), _key_encoder(ref)):
        for p, q in zip(moved.parameters(), expected.parameters()):
            assert not p.requires_grad and p.grad is None
            assert torch.allclose(p, q, atol=1e-6)
    # the queue advanced by the batch, once, with the keys and their labels
    assert int(queue.pointer) == FILLED + n
    assert torch.equal(queue.labels[FILLED:FILLED + n], batch.labels)
    assert torch.allclose(queue.keys[FILLED:FILLED + n], keys, atol=1e-5)
    assert torch.equal(queue.keys[:FILLED], queue_keys[:FILLED]) and torch.equal(queue.keys[FILLED + n:],
                                                                                 queue_keys[FILLED + n:])
    # the gradient reaches the query encoder and the classifier (the parametric centres)
    model = run.model
    for part in (model.backbone, model.classifier, model.heads["paco_projection"]):
        assert _grad_flows(part), part


def test_paco_gradient_reaches_view_0_features_and_logits_only_and_row_weights_weight_its_anchors(tmp_path):
    """The hook alone on given features and logits: the query is view 0 (its pooled features and its logits
    get the gradient, view 1's get none: view 1 reaches the loss only through the key encoder), and
    ``batch.row_weights`` weight each anchor's loss."""
    run, batch = _paco_run(tmp_path)
    model, (method,) = run.model, run.methods
    n = ROWS
    g = torch.Generator().manual_seed(4)
    features = torch.randn(2 * n, model.num_features, generator=g).requires_grad_(True)
    logits = (3 * torch.randn(2 * n, run.num_classes, generator=g)).requires_grad_(True)
    batch.row_weights = torch.linspace(0.2, 2.0, n)
    queue = model.heads["paco_queue"]
    queue_keys, queue_labels = queue.keys.clone(), queue.labels.clone()
    terms = method.ltbench_extra_losses(run=run, model=model, batch=batch,
                                        output=ModelOutput(logits, features, features))
    keys = _keys(model, batch.extra_views[0])  # the moved key encoder, as the hook used it
    per_anchor = _paco_by_hand(features[:n].detach(), logits[:n].detach(), batch.labels, keys, queue_keys,
                               queue_labels, model.heads["paco_projection"],
                               torch.log(_log_training_prior(run).exp() + 1e-9))
    assert set(terms) == {"paco"}
    assert terms["paco"].item() == pytest.approx((per_anchor * batch.row_weights).mean().item(), rel=1e-5)
    terms["paco"].backward()
    for name, leaf in (("pooled features", features), ("logits", logits)):
        assert leaf.grad is not None, f"no gradient reaches the {name}"
        per_row = leaf.grad.abs().sum(1)
        assert (per_row[:n] > 0).all(), f"a query row's {name} get no gradient"
        assert (per_row[n:] == 0).all(), f"view 1's {name} feed the loss (they are the key view)"
    assert _grad_flows(model.heads["paco_projection"])
    for part in _key_encoder(model):
        assert all(p.grad is None for p in part.parameters())


def test_paco_hook_is_stage_1_and_two_views_only(tmp_path):
    run, batch = _stepping_run(tmp_path, "paco", PACO)
    (method,) = run.methods
    assert method.ltbench_train_views(stage=1) == 2 and method.ltbench_train_views(stage=2) is None
    one_view = Batch(labels=batch.labels, images=batch.images)
    output = run.model.forward_all(batch.images)
    assert method.ltbench_extra_losses(run=run, model=run.model, batch=one_view, output=output) is None
    assert int(run.model.heads["paco_queue"].pointer) == 0  # nothing advanced
