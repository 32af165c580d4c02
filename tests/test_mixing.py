"""Mixed targets through every loss of the zoo and the extra-loss hooks; mixup, cutmix and remix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltbench import Method, MethodMetadata, hookimpl
from ltbench.plugins.testing import catalog_with, run_methods
from ltbench.training.run import Batch
from ltbench.training.targets import as_soft, mix_pairs
from ltbench_builtin import losses, mixing

C = 10


def run_one(catalog, method, output):
    (record,) = run_methods(catalog, [method], output)
    return record

COUNTS = np.array([500, 300, 200, 100, 60, 40, 20, 10, 6, 5])


def _zoo():
    """Every task loss of the zoo as f(logits, targets, class_weight or None); LDAM takes cosines."""
    margins, prior = losses.ldam_margins(COUNTS), losses.log_prior(COUNTS)
    return {
        "ce / cb-loss": (lambda x, t, w=None: losses.weighted_cross_entropy(x, t, w), False),
        "focal / cb-focal (softmax)": (lambda x, t, w=None: losses.focal_loss(x, t, 2.0, w), False),
        "cb-focal (sigmoid)": (lambda x, t, w=None: losses.sigmoid_focal_loss(x, t, 2.0, w), False),
        "ldam / ldam-drw": (lambda x, t, w=None: losses.ldam_loss(x, t, margins, 30.0, w), True),
        "balanced-softmax / logit-adjust": (lambda x, t, w=None: losses.logit_adjusted_loss(x, t, prior, 1.0), False),
    }


@pytest.fixture
def pairs():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(24, C, generator=g) * 3
    cosines = torch.rand(24, C, generator=g) * 2 - 1
    a, b = torch.randint(0, C, (24,), generator=g), torch.randint(0, C, (24,), generator=g)
    lam = torch.rand(24, generator=g)
    return logits, cosines, a, b, lam


@pytest.mark.parametrize("name", sorted(_zoo()))
def test_every_zoo_loss_takes_soft_targets_and_one_hot_rows_give_the_hard_label_loss(name, pairs):
    loss, cosine = _zoo()[name]
    logits, cosines, a, b, lam = pairs
    x = cosines if cosine else logits
    weight = losses.class_balanced_weights(COUNTS, 0.9999)
    assert torch.allclose(loss(x, as_soft(a, C)), loss(x, a), rtol=1e-5)
    assert torch.allclose(loss(x, as_soft(a, C), weight), loss(x, a, weight), rtol=1e-5)
    # a mixed pair is the mixup criterion, row by row: lam_i * loss(a_i) + (1 - lam_i) * loss(b_i)
    rows = [lam[i] * loss(x[i:i + 1], a[i:i + 1]) + (1 - lam[i]) * loss(x[i:i + 1], b[i:i + 1]) for i in range(24)]
    assert torch.allclose(loss(x, mix_pairs(a, b, lam, C)), torch.stack(rows).mean(), rtol=1e-5)
    if "logit-adjust" in name or "sigmoid" in name:  # (the sigmoid focal's row weights are w_y, not normalised)
        return
    # class weights: PyTorch's weighted mean, with each row's weight split as its target is
    w = weight
    num = sum(lam[i] * w[a[i]] * loss(x[i:i + 1], a[i:i + 1]) + (1 - lam[i]) * w[b[i]] * loss(x[i:i + 1], b[i:i + 1])
              for i in range(24))
    den = sum(lam[i] * w[a[i]] + (1 - lam[i]) * w[b[i]] for i in range(24))
    assert torch.allclose(loss(x, mix_pairs(a, b, lam, C), weight), num / den, rtol=1e-5)


def test_the_core_default_loss_takes_soft_targets(pairs):
    logits, _, a, b, lam = pairs
    q = mix_pairs(a, b, lam, C)
    expected = (lam * F.cross_entropy(logits, a, reduction="none")
                + (1 - lam) * F.cross_entropy(logits, b, reduction="none")).mean()
    assert torch.allclose(F.cross_entropy(logits, q), expected, rtol=1e-5)


def test_ldam_on_soft_targets_stays_finite_and_exact_when_one_class_dominates():
    cosines = torch.full((2, C), -1.0)
    cosines[:, 3] = 1.0  # z_3 - z_j = 60: the margin term is far below float32's resolution of the sum
    margins = losses.ldam_margins(COUNTS)
    hard = losses.ldam_loss(cosines, torch.tensor([3, 3]), margins, 30.0)
    soft = losses.ldam_loss(cosines, as_soft(torch.tensor([3, 3]), C), margins, 30.0)
    assert torch.isfinite(soft) and torch.allclose(soft, hard, rtol=1e-4, atol=1e-6)


def test_remix_moves_the_label_to_the_minority_class_exactly_as_eq_6():
    counts = torch.tensor([300, 100, 40])
    a, b = torch.tensor([0, 0, 1, 2, 0]), torch.tensor([1, 2, 2, 0, 0])
    # ratios n_a / n_b: 3, 7.5, 2.5, 0.133, 1
    assert mixing.remix_label_weights(a, b, 0.3, counts, 3.0, 0.5).tolist() == pytest.approx([0, 0, 0.3, 0.3, 0.3])
    assert mixing.remix_label_weights(a, b, 0.7, counts, 3.0, 0.5).tolist() == pytest.approx([0.7, 0.7, 0.7, 1, 0.7])


def test_cutmix_weights_the_targets_by_the_area_each_image_keeps():
    images = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    perm = torch.tensor([1, 0])
    mixed, kept = mixing.cutmix_images(images, perm, (2, 6, 0, 4))
    assert kept == pytest.approx(1 - 16 / 64)
    assert torch.equal(mixed[0, :, 2:6, 0:4], images[1, :, 2:6, 0:4])
    assert torch.equal(mixed[0, :, :2], images[0, :, :2]) and torch.equal(mixed[0, :, :, 4:], images[0, :, :, 4:])
    box = mixing.cut_box(32, 32, 0.75, np.random.default_rng(0))
    assert (box[1] - box[0]) <= 16 and (box[3] - box[2]) <= 16  # side sqrt(1 - lam) = 1/2, clipped


class _Probe(Method):
    """Records the targets its extra loss sees and returns a term trained toward them."""

    name = "probe-targets"
    metadata = MethodMetadata(title="probe")
    seen: list[torch.Tensor] = []

    @hookimpl
    def ltbench_extra_losses(self, run, batch, output):
        targets = batch.loss_targets(run.num_classes)
        _Probe.seen.append(targets.detach().clone())
        return {"probe": 0.0 * F.cross_entropy(output.logits, targets)}


def test_mixup_composes_with_a_loss_method_and_extra_losses_see_the_mixed_targets(tmp_path, monkeypatch):
    calls = []
    soft = losses.ldam_loss_soft
    monkeypatch.setattr(losses, "ldam_loss_soft", lambda *a, **k: calls.append(a[1].shape) or soft(*a, **k))
    _Probe.seen = []
    record = run_one(catalog_with(_Probe), "mixup+ldam-drw+probe-targets", tmp_path)
    assert record["status"] == "completed"
    assert record["extra"]["mixup"]["mixed_batches"] > 0
    assert calls and all(len(shape) == 2 for shape in calls)  # LDAM-DRW's loss trained on the mixed targets
    mixed = [t for t in _Probe.seen if t.dim() == 2]
    assert mixed and all(torch.allclose(t.sum(1), torch.ones(len(t))) for t in mixed)
    assert any(((t > 0) & (t < 1)).any() for t in mixed)  # really mixed, not one-hot


def test_mixup_mixes_images_and_targets_with_one_weight_and_leaves_the_labels(ltbench_tiny_run):
    method, twin = mixing.Mixup(), mixing.Mixup()
    method.ltbench_configure_model(ltbench_tiny_run)
    twin.rng.bit_generator.state = method.rng.bit_generator.state  # replays the same draws
    g = torch.Generator().manual_seed(1)
    images, labels = torch.randn(8, 3, 4, 4, generator=g), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    batch = Batch(labels=labels.clone(), images=images.clone())
    method.ltbench_augment_batch(ltbench_tiny_run, batch)
    perm, lam = twin.draw(batch)
    assert 0 < lam < 1 and not torch.equal(perm, torch.arange(8))
    assert torch.equal(batch.labels, labels)
    assert torch.allclose(batch.images, lam * images + (1 - lam) * images[perm])
    expected = lam * F.one_hot(labels, C) + (1 - lam) * F.one_hot(labels[perm], C)
    assert torch.allclose(batch.targets, expected.float())


def test_mixing_is_only_for_stage_1_image_batches(ltbench_tiny_run):
    method = mixing.Mixup()
    batch = Batch(labels=torch.tensor([0, 1]), features=torch.randn(2, 4))
    ltbench_tiny_run.stage = 2
    method.ltbench_augment_batch(ltbench_tiny_run, batch)
    assert batch.targets is None


def test_appended_rows_get_one_hot_targets_and_a_wrong_width_is_a_contract_error(tmp_path):
    batch = Batch(labels=torch.tensor([0, 1, 2]), targets=mix_pairs(torch.tensor([0, 1]), torch.tensor([1, 0]), 0.5, 4))
    assert batch.loss_targets(4)[2].tolist() == [0, 0, 1, 0]  # a sample a module appended after mixing

    class WrongWidth(Method):
        name = "wrong-width"
        metadata = MethodMetadata(title="wrong")

        @hookimpl
        def ltbench_augment_batch(self, run, batch):
            batch.targets = torch.full((len(batch.labels), run.num_classes + 1), 1.0 / (run.num_classes + 1))

    record = run_one(catalog_with(WrongWidth), "wrong-width", tmp_path)
    assert record["status"] == "failed" and "soft targets have shape" in record["error"]


# ---- the hook wiring: what each mixing method hands to the loss --------------------------------------------------


def _replayed(cls, ltbench_tiny_run, **options):
    """A configured method and a twin that replays its random draws."""
    method, twin = cls(**options), cls(**options)
    method.ltbench_configure_model(ltbench_tiny_run)
    twin.rng.bit_generator.state = method.rng.bit_generator.state
    return method, twin


def _image_batch(n=16):
    labels = torch.arange(n) % C
    # every image is filled with its own row number: a mixed pixel says which rows it came from
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).repeat(1, 3, 8, 8)
    return Batch(labels=labels, images=images.clone()), labels, images


def test_remix_hands_eq_6_weights_on_the_image_pairs_to_the_targets(ltbench_tiny_run):
    ltbench_tiny_run.stage = 1
    counts = torch.as_tensor(ltbench_tiny_run.train_counts)
    assert counts.max() >= 3 * counts.min()  # some pairs are imbalanced enough for the rule to move labels
    moved = False
    for seed in range(5):
        method, twin = _replayed(mixing.Remix, ltbench_tiny_run)
        method.rng, twin.rng = np.random.default_rng(seed), np.random.default_rng(seed)
        batch, labels, images = _image_batch()
        method.ltbench_augment_batch(ltbench_tiny_run, batch)
        perm, lam = twin.draw(batch)
        assert torch.allclose(batch.images, lam * images + (1 - lam) * images[perm])  # the pairs of the images
        weights = mixing.remix_label_weights(labels, labels[perm], lam, counts, 3.0, 0.5)
        assert torch.allclose(batch.targets, mix_pairs(labels, labels[perm], weights, C))
        assert torch.equal(batch.labels, labels)
        moved |= bool((weights != lam).any())
    assert moved  # over these draws the rule moved some labels
    # with kappa 1 and tau 1 every unequal pair goes to the minority: the targets are not plain mixup's
    method, twin = _replayed(mixing.Remix, ltbench_tiny_run, kappa=1.0, tau=1.0)
    batch, labels, _ = _image_batch()
    method.ltbench_augment_batch(ltbench_tiny_run, batch)
    perm, lam = twin.draw(batch)
    assert not torch.allclose(batch.targets, mix_pairs(labels, labels[perm], lam, C))


def test_cutmix_pastes_the_paired_image_and_weights_the_targets_by_the_area_kept(ltbench_tiny_run):
    ltbench_tiny_run.stage = 1
    method, twin = _replayed(mixing.CutMix, ltbench_tiny_run, prob=1.0)
    batch, labels, images = _image_batch()
    method.ltbench_augment_batch(ltbench_tiny_run, batch)
    twin.rng.random()  # the probability draw
    perm, lam = twin.draw(batch)
    top, bottom, left, right = mixing.cut_box(8, 8, lam, twin.rng)
    kept = 1 - (bottom - top) * (right - left) / 64
    pasted = batch.images[:, 0, top:bottom, left:right]
    assert torch.equal(pasted, images[perm][:, 0, top:bottom, left:right])  # the box is the label pair's image
    own = (batch.images[:, 0] == images[:, 0]).float().mean((1, 2))
    assert torch.allclose(own, torch.full((16,), kept))
    assert torch.allclose(batch.targets, mix_pairs(labels, labels[perm], kept, C))


@pytest.mark.parametrize("prob", [0.0, 0.3, 1.0])
def test_cutmix_mixes_a_batch_with_its_probability(ltbench_tiny_run, prob):
    ltbench_tiny_run.stage = 1
    method, _ = _replayed(mixing.CutMix, ltbench_tiny_run, prob=prob)
    mixed = 0
    for _ in range(400):
        batch, _, _ = _image_batch()
        method.ltbench_augment_batch(ltbench_tiny_run, batch)
        mixed += batch.targets is not None
    assert mixed == method.mixed_batches
    assert mixed / 400 == pytest.approx(prob, abs=0.06)
