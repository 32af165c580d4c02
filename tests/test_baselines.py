"""The defining arithmetic of each baseline, on hand-made numbers."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ltbench.errors import ConfigError
from ltbench.plugins.testing import catalog_with, run_methods
from ltbench_builtin.decoupling import LWSHead, NCMHead, TauNormHead
from ltbench_builtin.losses import (LDAMDRW, BalancedSoftmax, ClassBalancedFocal, ClassBalancedLoss, Focal,
                                    class_balanced_weights, focal_loss, ldam_loss, ldam_margins, log_prior,
                                    logit_adjusted_loss)
from ltbench_builtin.sampling import ProgressiveSampler, SqrtSampling, progressive_shares


def fake_run(counts, epochs=200, epoch=0, stage=1, seed=0):
    counts = np.asarray(counts)
    labels = np.repeat(np.arange(len(counts)), counts)
    return SimpleNamespace(train_counts=counts, num_classes=len(counts), device=torch.device("cpu"), epoch=epoch,
                           stage=stage, config={"epochs": epochs}, generator=torch.Generator().manual_seed(seed),
                           train_labels=labels)


def test_class_balanced_weights_for_given_counts_and_beta():
    # beta 0.5, counts 1, 2, 3: effective numbers 0.5, 0.75, 0.875 -> (1-beta)/E = 1, 2/3, 4/7, then sum to C = 3
    raw = np.array([1.0, 2 / 3, 4 / 7])
    expected = raw / raw.sum() * 3
    np.testing.assert_allclose(class_balanced_weights(np.array([1, 2, 3]), 0.5).numpy(), expected, rtol=1e-6)
    w = class_balanced_weights(np.array([500, 50, 5]), 0.9999)
    assert w.sum().item() == pytest.approx(3.0) and w[0] < w[1] < w[2]


def test_focal_loss_equals_cross_entropy_at_gamma_0_and_down_weights_easy_examples():
    logits, targets = torch.randn(16, 7), torch.randint(0, 7, (16,))
    assert torch.allclose(focal_loss(logits, targets, 0.0), F.cross_entropy(logits, targets))
    one = torch.tensor([[0.0, math.log(3.0)]])  # p(class 1) = 0.75
    assert focal_loss(one, torch.tensor([1]), 2.0).item() == pytest.approx(0.25**2 * -math.log(0.75), rel=1e-5)
    loss = Focal(gamma=0.0).ltbench_build_loss()
    assert torch.allclose(loss(logits, targets), F.cross_entropy(logits, targets))


def test_cb_focal_softmax_at_gamma_0_is_cb_loss():
    run = fake_run([50, 10, 2])
    logits, targets = torch.randn(20, 3), torch.randint(0, 3, (20,))
    cb = ClassBalancedLoss(beta=0.99).ltbench_build_loss(run=run)
    cbf = ClassBalancedFocal(beta=0.99, gamma=0.0, kind="softmax").ltbench_build_loss(run=run)
    assert torch.allclose(cb(logits, targets), cbf(logits, targets))
    weight = class_balanced_weights(np.array([50, 10, 2]), 0.99)
    assert torch.allclose(cb(logits, targets), F.cross_entropy(logits, targets, weight=weight))


def test_cb_focal_default_is_cui_et_als_sigmoid_focal_with_beta_0_9():
    assert ClassBalancedFocal().opts["beta"] == ClassBalancedLoss().opts["beta"] == 0.9
    run = fake_run([50, 10, 2])
    logits, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    weight = class_balanced_weights(np.array([50, 10, 2]), 0.9)
    loss = ClassBalancedFocal(gamma=2.0).ltbench_build_loss(run=run)(logits, y)
    # by hand, per row i and class c: w_{y_i} (1 - p_t)^2 BCE, p_t = sigmoid(z) for c = y_i, else 1 - sigmoid(z)
    p = torch.sigmoid(logits)
    onehot = F.one_hot(y, 3).float()
    p_t = onehot * p + (1 - onehot) * (1 - p)
    expected = (weight[y][:, None] * (1 - p_t) ** 2 * -torch.log(p_t)).sum() / 6
    assert torch.allclose(loss, expected, rtol=1e-5)


def test_ldam_margins_for_given_counts():
    np.testing.assert_allclose(ldam_margins(np.array([16, 1])).numpy(), [0.25, 0.5])
    np.testing.assert_allclose(ldam_margins(np.array([10000, 100, 1])).numpy(), [0.05, 0.05 * 10**0.5, 0.5],
                               rtol=1e-6)


def test_ldam_loss_subtracts_the_true_class_margin_then_scales():
    cosine, y = torch.tensor([[0.5, 0.2]]), torch.tensor([0])
    # s * (0.5 - 0.25, 0.2) = (7.5, 6): CE = log(1 + e^-1.5)
    value = ldam_loss(cosine, y, torch.tensor([0.25, 0.5]), 30.0)
    assert value.item() == pytest.approx(math.log(1 + math.exp(-1.5)), rel=1e-5)


def test_drw_switches_weights_exactly_at_its_epoch():
    method = LDAMDRW()
    counts = [500, 50, 5]
    assert method.weight_at(fake_run(counts, epochs=200, epoch=159)) is None
    w = method.weight_at(fake_run(counts, epochs=200, epoch=160))
    assert torch.allclose(w, class_balanced_weights(np.array(counts), 0.9999))
    assert method.drw_epoch(fake_run(counts, epochs=12)) == 10  # 160/200 of the budget's epochs
    cosine, y = torch.randn(8, 3).clamp(-1, 1), torch.tensor([0, 1, 2, 2, 2, 1, 0, 2])
    before = method.ltbench_build_loss(run=fake_run(counts, epoch=159))(cosine, y)
    plain = ldam_loss(cosine, y, ldam_margins(np.array(counts)), 30.0)
    assert torch.allclose(before, plain)


def test_balanced_softmax_is_cross_entropy_on_a_uniform_prior_and_shifts_by_log_prior():
    logits, targets = torch.randn(10, 4), torch.randint(0, 4, (10,))
    uniform = BalancedSoftmax().ltbench_build_loss(run=fake_run([25, 25, 25, 25]))
    assert torch.allclose(uniform(logits, targets), F.cross_entropy(logits, targets))
    skewed = BalancedSoftmax().ltbench_build_loss(run=fake_run([70, 20, 9, 1]))
    prior = torch.log(torch.tensor([0.7, 0.2, 0.09, 0.01]))
    assert torch.allclose(skewed(logits, targets), F.cross_entropy(logits + prior, targets), atol=1e-6)
    assert torch.allclose(logit_adjusted_loss(logits, targets, log_prior(np.array([70, 20, 9, 1])), 1.0),
                          skewed(logits, targets))


def test_tau_norm_at_tau_0_reproduces_the_stage1_logits_without_bias():
    linear = nn.Linear(6, 4)
    x = torch.randn(5, 6)
    head = TauNormHead(linear, tau=0.0)
    assert torch.allclose(head(x), x @ linear.weight.t())
    head.tau = 1.0  # at tau 1 every class weight has norm 1
    assert torch.allclose(head.normalised_weight(1.0).norm(dim=1), torch.ones(4))


def test_lws_at_scale_1_reproduces_the_stage1_logits_and_trains_only_scales():
    linear = nn.Linear(6, 4)
    x = torch.randn(5, 6)
    head = LWSHead(linear)
    assert torch.allclose(head(x), linear(x))
    assert [n for n, p in head.named_parameters() if p.requires_grad] == ["scales"]


def test_ncm_predicts_the_nearest_class_mean_by_cosine():
    feats = torch.tensor([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [0.1, 3.0]])
    head = NCMHead(feats, torch.tensor([0, 0, 1, 1]), 2, metric="cosine")
    assert head(torch.tensor([[5.0, 0.5], [0.2, 4.0]])).argmax(1).tolist() == [0, 1]


def test_ncm_default_is_the_decoupling_codes_centred_l2_normalised_euclidean():
    g = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(40, 5, generator=g) + 2.0, torch.arange(40) % 4
    head = NCMHead(feats, labels, 4)
    centre = feats.mean(0)
    cl2n = (feats - centre) / (feats - centre).norm(dim=1, keepdim=True)
    centroids = torch.stack([cl2n[labels == c].mean(0) for c in range(4)])
    x = torch.randn(6, 5, generator=g) + 2.0
    xn = (x - centre) / (x - centre).norm(dim=1, keepdim=True)
    expected = -((xn[:, None, :] - centroids[None]) ** 2).sum(-1).sqrt()
    assert torch.allclose(head(x), expected, atol=1e-5)
    cosine = NCMHead(feats, labels, 4, metric="cosine")
    assert cosine(x).shape == head(x).shape


def test_sqrt_sampler_class_shares_are_proportional_to_sqrt_counts():
    counts = [400, 100, 25, 4]
    run = fake_run(counts)
    sampler = SqrtSampling().ltbench_build_sampler(run=run, stage=1, labels=run.train_labels)
    draws = np.concatenate([run.train_labels[list(sampler)] for _ in range(60)])
    shares = np.bincount(draws, minlength=4) / len(draws)
    expected = np.sqrt(counts) / np.sqrt(counts).sum()  # 20:10:5:2
    np.testing.assert_allclose(shares, expected, atol=0.01)


def test_progressive_sampler_moves_from_instance_to_class_balanced():
    counts = np.array([300, 60, 20])
    np.testing.assert_allclose(progressive_shares(counts, 0, 10), counts / counts.sum())
    # the Decoupling code's t = e / (E - 1): the last epoch (e = 9 of 10) is class-balanced
    np.testing.assert_allclose(progressive_shares(counts, 9, 10), [1 / 3] * 3)
    np.testing.assert_allclose(progressive_shares(counts, 9, 10, "e/E"), 0.1 * counts / counts.sum() + 0.9 / 3)
    run = fake_run(counts, epochs=10, epoch=9)
    sampler = ProgressiveSampler(run, run.train_labels)
    draws = np.concatenate([run.train_labels[list(sampler)] for _ in range(40)])
    np.testing.assert_allclose(np.bincount(draws) / len(draws), [1 / 3] * 3, atol=0.01)


def test_bad_hyper_parameters_name_the_option():
    with pytest.raises(ConfigError, match="cb-loss.beta"):
        ClassBalancedLoss(beta=1.5)
    with pytest.raises(ConfigError, match="focal.gamma"):
        Focal(gamma=-1.0)
    with pytest.raises(ConfigError, match="ldam-drw.drw_start"):
        LDAMDRW(drw_start=2.0)


@pytest.fixture(scope="module")
def decoupled_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    catalog = catalog_with()
    records = run_methods(catalog, ["ce", "crt", "lws", "tau-norm", "ncm", "logit-adjust-posthoc"], out, epochs=4)
    return out, {r["method"]: r for r in records}


def test_decoupled_methods_train_stage1_once_and_record_its_source(decoupled_runs):
    out, recs = decoupled_runs
    assert all(r["status"] == "completed" for r in recs.values())
    sources = {r["stage1"]["source"] for r in recs.values()}
    assert len(sources) == 1
    assert [m for m, r in recs.items() if not r["stage1"]["reused"]] == ["ce"]
    assert len(list(out.rglob("stage1.pt"))) == 1


def test_crt_leaves_every_backbone_parameter_bit_identical(decoupled_runs):
    out, recs = decoupled_runs
    stage1 = torch.load(out / recs["crt"]["stage1"]["source"] / "stage1.pt", weights_only=True)["model"]
    final = torch.load(next(out.rglob("crt/*/seed0/checkpoint-stage2.pt")), weights_only=True)["model"]
    statistics = ("running_mean", "running_var", "num_batches_tracked")  # re-estimated: BagofTricks' stage 2
    keys = [k for k in stage1 if k.startswith("backbone.") and not k.endswith(statistics)]
    assert keys and all(torch.equal(stage1[k], final[k]) for k in keys)
    assert recs["crt"]["stage_wall_time_s"]["stage2"] > 0 and "BagofTricks-LT" in recs["crt"]["second_stage"]["note"]


def test_tau_and_posthoc_tau_are_chosen_on_validation_and_recorded(decoupled_runs):
    _, recs = decoupled_runs
    for method in ("tau-norm", "logit-adjust-posthoc"):
        extra = recs[method]["extra"][method]
        scores = extra["validation_accuracy_by_tau"]
        assert len(scores) == 21
        assert scores[f"{extra['tau']:g}"] == max(scores.values())


@pytest.mark.parametrize("recipe, re_estimated", [("bagoftricks", True), ("cached", False), ("decoupling", True)])
def test_crt_re_estimates_batch_norm_statistics_unless_its_stage2_is_cached(tmp_path, recipe, re_estimated):
    from ltbench.training import checkpoints

    (ce, crt) = run_methods(catalog_with(), ["ce", "crt"], tmp_path, epochs=2, settings={"crt.stage2": recipe})
    assert crt["status"] == "completed" and crt["second_stage"]["update_bn_statistics"] is re_estimated
    assert crt["second_stage"]["cached_features"] is not re_estimated
    assert crt["optimizer"]["2"]["nesterov"] is (recipe == "bagoftricks")
    stage1 = next(tmp_path.rglob("_stage1/*/stage1.pt"))
    final = next(tmp_path.rglob("crt/*/seed0/checkpoint-stage2.pt"))
    before, after = checkpoints.load(stage1)["model"], checkpoints.load(final)["model"]
    moved = [not torch.equal(before[k], after[k]) for k in before if k.endswith("running_mean")]
    assert all(moved) if re_estimated else not any(moved)
    weights = [k for k in before if k.startswith("backbone.") and k.endswith("weight")]
    assert weights and all(torch.equal(before[k], after[k]) for k in weights)  # frozen, whatever the recipe


def _built_model(tmp_path, method: str, **settings):
    from ltbench.plugins.testing import build_tiny_run

    return build_tiny_run(tmp_path, method, settings).model


def test_cb_focal_starts_every_sigmoid_at_the_prior_as_cui_et_al(tmp_path):
    # Cui et al.'s code and Sec. 5.2: b = -log((1 - pi) / pi) with pi = 1/C, i.e. -log(C - 1)
    from ltbench.plugins.testing import build_tiny_run

    run = build_tiny_run(tmp_path, "cb-focal")
    bias = run.model.classifier.bias
    assert torch.allclose(bias, torch.full_like(bias, -math.log(run.num_classes - 1)))
    for settings in ({"cb-focal.prior": 0}, {"cb-focal.kind": "softmax"}):  # PyTorch's default bias, not constant
        assert _built_model(tmp_path, "cb-focal", **settings).classifier.bias.std() > 0
    assert torch.allclose(torch.sigmoid(_built_model(tmp_path, "cb-focal", **{"cb-focal.prior": 0.25})
                                        .classifier.bias), torch.tensor(0.25))


def test_cb_focal_keeps_its_prior_bias_out_of_weight_decay(tmp_path):
    """Cui et al.'s cifar_main.py leaves the prior's bias out of the L2 term; with no prior it is decayed."""
    from ltbench.plugins.testing import catalog_with, run_methods

    (rec,) = run_methods(catalog_with(), ["cb-focal"], tmp_path / "prior", epochs=1)
    groups = {g["label"]: g for g in rec["optimizer"]["1"]["groups"]}
    assert groups["stage 1: cb-focal prior bias"]["weight_decay"] == 0.0
    assert groups["stage 1: cb-focal prior bias"]["tensors"] == 1
    assert groups["stage 1"]["weight_decay"] == rec["config"]["weight_decay"] > 0
    (plain,) = run_methods(catalog_with(), ["cb-focal"], tmp_path / "none", epochs=1, settings={"cb-focal.prior": "0"})
    assert [g["weight_decay"] for g in plain["optimizer"]["1"]["groups"]] == [plain["config"]["weight_decay"]]


@pytest.mark.parametrize("prior", [1.0, -0.1, "high", True])
def test_cb_focal_rejects_a_prior_outside_0_1(prior):
    with pytest.raises(ConfigError, match=r"cb-focal.prior must be 1/C or a number in \[0, 1\)"):
        ClassBalancedFocal(prior=prior)
