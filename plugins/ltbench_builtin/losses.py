"""Re-weighting and margin losses: ``cb-loss``, ``cb-focal``, ``focal``,
``ldam``, ``ldam-drw``, ``balanced-softmax`` and ``logit-adjust``.

All of them train one stage with instance-balanced sampling and change only
the task loss (LDAM also the classifier: a cosine head). The arithmetic is
in plain functions so that tests can pin it on hand-made numbers.

Every loss takes hard labels ``(B,)`` or soft targets ``(B, C)`` (mixup and
its kin, see :mod:`ltbench.training.targets`). Hard labels take the official code's
arithmetic; soft targets its extension to a distribution over classes: each
class ``c`` of a row contributes ``q_c`` times the loss the row would have
with label ``c`` (so a mixed pair gives ``lam * loss(a) + (1 - lam) *
loss(b)``), and class weights normalise by ``sum q_c w_c``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ltbench.api import (ConfigError, Method, MethodMetadata, ParamGroup, as_soft, global_normaliser, hookimpl,
                         is_distributed, is_soft, soft_cross_entropy, weighted_mean)

from ltbench_builtin.ce import BOT_GALLERY, LDAM_SETTING  # the setting of numbers published at the LDAM-DRW recipe

# --------------------------------------------------------------------------
# Arithmetic
# --------------------------------------------------------------------------


def class_balanced_weights(counts: np.ndarray, beta: float) -> torch.Tensor:
    """Cui et al. 2019: w_c = (1 - beta) / (1 - beta^n_c), normalised to sum to C."""
    counts = np.asarray(counts, dtype=np.float64)
    effective = 1.0 - np.power(beta, counts)
    weights = (1.0 - beta) / np.maximum(effective, 1e-12)
    weights = weights / weights.sum() * len(counts)
    return torch.tensor(weights, dtype=torch.float32)


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float,
               weight: torch.Tensor | None = None, row_weights: torch.Tensor | None = None) -> torch.Tensor:
    """sum_i w_{y_i} (1 - p_i)^gamma * CE_i / sum_i w_{y_i}, p_i the softmax probability of the true class.

    With ``weight=None`` it is the plain mean; at gamma 0 it is (weighted) cross-entropy. Soft targets q:
    ``-sum_c q_c (1 - p_c)^gamma log p_c`` per row.
    """
    if is_soft(targets) or row_weights is not None:
        log_p_all = F.log_softmax(logits, dim=1)
        q = as_soft(targets, logits.shape[1], logits.dtype)
        return weighted_mean(-q * (1.0 - log_p_all.exp()) ** gamma * log_p_all, q, weight, row_weights)
    log_p = F.log_softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)
    per_sample = -((1.0 - log_p.exp()) ** gamma) * log_p
    if weight is None:
        return per_sample.mean()
    w = weight.to(logits.device)[targets]
    return (w * per_sample).sum() / global_normaliser(w.sum(), len(w))


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float,
                       weight: torch.Tensor | None = None, row_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cui et al.'s class-balanced sigmoid focal loss (their code's ``focal_loss`` on one-hot labels): for a row
    with label y, ``w_y * sum_c (1 - p_t)^gamma * BCE(z_c, [c == y])`` (p_t the sigmoid probability of the
    right binary answer), summed over rows and divided by their number. Soft targets q: ``sum_y q_y`` times the
    loss of label y, as every loss of the zoo (linear in q, computed for all labels at once)."""
    p = torch.sigmoid(logits)
    pos = (1 - p) ** gamma * F.softplus(-logits)  # class c is the label: -log p, modulated
    neg = p ** gamma * F.softplus(logits)  # class c is not: -log(1 - p), modulated
    per_label = neg.sum(1, keepdim=True) - neg + pos  # (B, C): the row's loss if its label were c
    q = targets.to(logits.dtype) if is_soft(targets) else F.one_hot(targets, logits.shape[1]).to(logits.dtype)
    if weight is not None:
        per_label = per_label * weight.to(logits.device, logits.dtype)
    if row_weights is not None:
        q = q * row_weights.to(logits.device, logits.dtype)[:, None]
    return (q * per_label).sum() / len(q)


def ldam_margins(counts: np.ndarray, max_margin: float = 0.5) -> torch.Tensor:
    """Cao et al. 2019: m_c proportional to n_c^(-1/4), scaled so that the largest is ``max_margin``."""
    m = 1.0 / np.sqrt(np.sqrt(np.asarray(counts, dtype=np.float64)))
    return torch.tensor(m * (max_margin / m.max()), dtype=torch.float32)


def ldam_loss(cosine: torch.Tensor, targets: torch.Tensor, margins: torch.Tensor, scale: float,
              weight: torch.Tensor | None = None, row_weights: torch.Tensor | None = None) -> torch.Tensor:
    """CE(s * (cos - m_y at the true class), y), weighted as F.cross_entropy weights.

    Soft targets q: ``sum_c q_c * CE(s * (cos - m_c at class c), c)`` per row (:func:`ldam_loss_soft`)."""
    if is_soft(targets) or row_weights is not None:
        return ldam_loss_soft(cosine, as_soft(targets, cosine.shape[1]), margins, scale, weight, row_weights)
    margin = margins.to(cosine.device)[targets]
    adjusted = cosine - F.one_hot(targets, cosine.shape[1]).to(cosine.dtype) * margin[:, None]
    return _over_global_batch(F.cross_entropy(scale * adjusted, targets, weight=None if weight is None
                                              else weight.to(cosine.device)), weight, targets)


def ldam_loss_soft(cosine: torch.Tensor, targets: torch.Tensor, margins: torch.Tensor, scale: float,
                   weight: torch.Tensor | None = None, row_weights: torch.Tensor | None = None) -> torch.Tensor:
    """LDAM on soft targets, for every class at once: with z = s * cos, the loss of label c is
    ``-(z_c - s m_c) + log(sum_{j != c} e^{z_j} + e^{z_c - s m_c})``, computed in float64 (the sum
    without e^{z_c} is a difference that float32 loses when class c dominates)."""
    z = (scale * cosine).double()
    sm = (scale * margins.to(cosine.device)).double()
    top = z.max(dim=1, keepdim=True).values
    e = (z - top).exp()
    without_margin = e.sum(dim=1, keepdim=True)
    rest = without_margin - e * (1.0 - (-sm).exp())  # sum_{j != c} e^{z_j} + e^{z_c - s m_c}, shifted by top
    loss_per_label = -(z - sm - top) + rest.log()
    q = targets.double()
    return weighted_mean(q * loss_per_label, q, weight, row_weights).to(cosine.dtype)


def logit_adjusted_loss(logits: torch.Tensor, targets: torch.Tensor, log_prior: torch.Tensor,
                        tau: float = 1.0, row_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Menon et al. 2021 / Ren et al. 2020: CE(logits + tau * log pi, y) (soft targets: soft CE)."""
    adjusted = logits + tau * log_prior.to(logits.device)
    if is_soft(targets) or row_weights is not None:
        return soft_cross_entropy(adjusted, targets, row_weights=row_weights)
    return F.cross_entropy(adjusted, targets)


def weighted_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None,
                           row_weights: torch.Tensor | None = None) -> torch.Tensor:
    """``F.cross_entropy(logits, y, weight=w)``; soft targets (or row weights): ``ltbench.api.soft_cross_entropy``."""
    if is_soft(targets) or row_weights is not None:
        return soft_cross_entropy(logits, targets, weight, row_weights)
    return _over_global_batch(F.cross_entropy(logits, targets, weight=weight), weight, targets)


def _over_global_batch(loss: torch.Tensor, weight: torch.Tensor | None, targets: torch.Tensor) -> torch.Tensor:
    """``F.cross_entropy(..., weight=w)`` normalises by this rank's ``sum_i w_{y_i}``; under torchrun, by the global
    batch's instead (:func:`ltbench.api.global_normaliser`), so 2 ranks train as one process (the same loss in one)."""
    if weight is None or not is_distributed():
        return loss
    local = weight.to(loss.device, loss.dtype)[targets].sum()
    return loss * local / global_normaliser(local, len(targets))


def log_prior(counts: np.ndarray) -> torch.Tensor:
    counts = np.asarray(counts, dtype=np.float64)
    return torch.tensor(np.log(counts / counts.sum()), dtype=torch.float32)


class NormedLinear(nn.Module):
    """LDAM's cosine classifier: cos(x, w_c) for every class (no bias)."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, num_classes))
        self.weight.data.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=0)


# --------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------

_LDAM_PAPER = "Cao et al., Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss"
_LDAM_CODE = "https://github.com/kaidic/LDAM-DRW"
_CB_PAPER = "Cui et al., Class-Balanced Loss Based on Effective Number of Samples"
_BOT = "BagofTricks-LT trick gallery (ResNet-32, LDAM recipe; 100 - error)"


def _check_beta(method: Method) -> None:
    if not 0 <= method.opts["beta"] < 1:
        raise ConfigError(f"{method.name}.beta must be in [0, 1), got {method.opts['beta']}")


def _check_gamma(method: Method) -> None:
    if method.opts["gamma"] < 0:
        raise ConfigError(f"{method.name}.gamma must be >= 0, got {method.opts['gamma']}")


class ClassBalancedLoss(Method):
    name = "cb-loss"
    options = {"beta": 0.9}
    metadata = MethodMetadata(
        family="loss",
        title="Class-balanced loss (softmax cross-entropy)", paper=_CB_PAPER, venue="CVPR", year=2019,
        code_url="https://github.com/richardaecn/class-balanced-loss",
        summary="Cross-entropy weighted per class by the inverse effective number of samples, "
        "w_c = (1-beta)/(1-beta^n_c), normalised to sum to C.",
        reference_results={"cifar100-lt-if100": {"overall": 39.60, **LDAM_SETTING,
                                                 "source": "Cui et al. Table 2, best CB variant "
                                                 "(ResNet-32)"},
                           "cifar10-lt-if100": {"overall": 74.57, "source": "Cui et al. Table 2, best CB variant"}},
        interpretations=("Weighted cross-entropy normalised by the batch's weight sum (PyTorch's weighted mean, as "
                         "LDAM-DRW's 'Reweight' rule), applied from the first epoch.",
                         "beta 0.9, as BagofTricks-LT's CIFAR-100 configs (the source of the reference number); "
                         "at the earlier default 0.9999 the weights are inverse frequency to within 0.4 %.",),
    )

    def check_options(self):
        _check_beta(self)

    @hookimpl
    def ltbench_build_loss(self, run):
        weight = class_balanced_weights(run.train_counts, self.opts["beta"]).to(run.device)
        return lambda logits, targets, row_weights=None: weighted_cross_entropy(logits, targets, weight, row_weights)


FOCAL_KINDS = ("sigmoid", "softmax")


class ClassBalancedFocal(Method):
    name = "cb-focal"
    options = {"beta": 0.9, "gamma": 1.0, "kind": "sigmoid", "prior": "1/C"}
    metadata = MethodMetadata(
        family="loss",
        title="Class-balanced focal loss (sigmoid)", paper=_CB_PAPER, venue="CVPR", year=2019,
        code_url="https://github.com/richardaecn/class-balanced-loss",
        summary="Sigmoid focal loss (one binary focal term per class) weighted by class-balanced weights, its "
        "classifier bias starting every class's sigmoid at 1/C and kept out of weight decay, as Cui et al.'s code.",
        reference_results={"cifar100-lt-if100": {"overall": 38.56, **LDAM_SETTING,
                                                 "source": _BOT + "; trained with no bias prior (its FC classifier "
                                                 "keeps PyTorch's default bias: configs/cao_cifar/re_weighting/"
                                                 "cbfocal/cifar100_im100.yaml, lib/net/network.py)"},
                           "cifar10-lt-if100": {"overall": 75.20, "source": _BOT + "; trained with no bias prior"}},
        interpretations=("kind=sigmoid (default) is Cui et al.'s code: the row's class weight on every class's "
                         "binary focal term, divided by the number of rows; kind=softmax is the earlier ltbench "
                         "form (a softmax focal loss normalised by the batch's weight sum).",
                         "beta 0.9, as BagofTricks-LT's CIFAR-100 configs.",
                         "With kind=sigmoid the classifier bias starts at -log((1 - pi) / pi) with pi = 1/C (0.01 "
                         "on CIFAR-100), -log(C - 1), and is exempt from weight decay, as Cui et al.'s code "
                         "(src/model_base.py, src/cifar_main.py) and Sec. 5.2 do. prior takes another pi (a number "
                         "in (0, 1); 0.1 was ltbench 0.2's default, which the board's earlier rows used) and 0 keeps "
                         "PyTorch's default bias, decayed like every weight. The softmax form keeps the default.",),
    )

    def check_options(self):
        _check_beta(self)
        _check_gamma(self)
        if self.opts["kind"] not in FOCAL_KINDS:
            raise ConfigError(f"cb-focal.kind must be one of {', '.join(FOCAL_KINDS)}, got {self.opts['kind']!r}")
        self.prior_of(2)  # checks the value

    def prior_of(self, num_classes: int) -> float:
        """pi for ``num_classes`` classes: 1/C for ``"1/C"``, else the number given (0: no prior)."""
        prior = self.opts["prior"]
        if isinstance(prior, str) and prior.strip().upper() == "1/C":
            return 1.0 / num_classes
        try:
            value = float(prior) if not isinstance(prior, bool) else None
        except (TypeError, ValueError):
            value = None
        if value is None or not 0 <= value < 1:
            raise ConfigError(f"cb-focal.prior must be 1/C or a number in [0, 1) (0 keeps the default bias), "
                              f"got {prior!r}")
        return value

    @hookimpl
    def ltbench_configure_model(self, run, model):
        prior = self.prior_of(run.num_classes)
        if self.opts["kind"] != "sigmoid" or prior == 0:
            return
        bias = getattr(model.classifier, "bias", None)
        if not isinstance(bias, torch.Tensor):
            raise ConfigError(f"cb-focal.prior={self.opts['prior']} initialises the classifier's bias, but the "
                              f"classifier {type(model.classifier).__name__} has none; set cb-focal.prior=0")
        with torch.no_grad():
            bias.fill_(-math.log((1 - prior) / prior))

    @hookimpl
    def ltbench_param_groups(self, run, stage):
        """The prior's bias is not decayed (Cui et al.'s cifar_main.py leaves dense/bias out of the L2 term)."""
        if stage != 1 or self.opts["kind"] != "sigmoid" or self.prior_of(run.num_classes) == 0:
            return None
        return [ParamGroup(("classifier.bias",), weight_decay=0.0, label="cb-focal prior bias")]

    @hookimpl
    def ltbench_build_loss(self, run):
        weight = class_balanced_weights(run.train_counts, self.opts["beta"]).to(run.device)
        gamma = self.opts["gamma"]
        if self.opts["kind"] == "sigmoid":
            return lambda logits, targets, row_weights=None: sigmoid_focal_loss(logits, targets, gamma, weight, row_weights)
        return lambda logits, targets, row_weights=None: focal_loss(logits, targets, gamma, weight, row_weights)


class Focal(Method):
    name = "focal"
    options = {"gamma": 1.0}
    metadata = MethodMetadata(
        family="loss",
        title="Focal loss", paper="Lin et al., Focal Loss for Dense Object Detection", venue="ICCV", year=2017,
        code_url=_LDAM_CODE, summary="(1-p_y)^gamma * CE; gamma 1.0 as the LDAM paper's baseline.",
        reference_results={"cifar100-lt-if100": {"overall": 38.41, **LDAM_SETTING,
                                                 "source": "LDAM-DRW paper, Table 2 (ResNet-32)"},
                           "cifar10-lt-if100": {"overall": 70.38, **LDAM_SETTING, "source": "LDAM-DRW paper, Table 2"}},
    )

    def check_options(self):
        _check_gamma(self)

    @hookimpl
    def ltbench_build_loss(self):
        gamma = self.opts["gamma"]
        return lambda logits, targets, row_weights=None: focal_loss(logits, targets, gamma, None, row_weights)


class LDAM(Method):
    name = "ldam"
    options = {"max_margin": 0.5, "scale": 30.0}
    metadata = MethodMetadata(
        family="loss",
        title="LDAM (label-distribution-aware margin), no re-weighting", paper=_LDAM_PAPER, venue="NeurIPS",
        year=2019, code_url=_LDAM_CODE,
        summary="Cosine classifier; the true-class cosine is reduced by m_y ~ n_y^(-1/4) (largest 0.5) and "
        "scaled by s=30 before cross-entropy.",
        interpretations=("Evaluation uses the cosine logits without margin or scale, as the official code.",),
    )
    drw = False

    def check_options(self):
        if not self.opts["max_margin"] > 0 or not self.opts["scale"] > 0:
            raise ConfigError(f"{self.name}: max_margin and scale must be > 0, got {self.opts}")

    @hookimpl
    def ltbench_build_classifier(self, in_features, num_classes, stage):
        return NormedLinear(in_features, num_classes) if stage == 1 else None

    def weight_at(self, run) -> torch.Tensor | None:
        return None

    @hookimpl
    def ltbench_build_loss(self, run):
        margins = ldam_margins(run.train_counts, self.opts["max_margin"]).to(run.device)
        scale = self.opts["scale"]
        return lambda cosine, targets, row_weights=None: ldam_loss(cosine, targets, margins, scale, self.weight_at(run),
                                                                   row_weights)


class LDAMDRW(LDAM):
    name = "ldam-drw"
    options = {"max_margin": 0.5, "scale": 30.0, "beta": 0.9999, "drw_start": 0.8}
    metadata = MethodMetadata(
        family="loss",
        title="LDAM with deferred re-weighting (DRW)", paper=_LDAM_PAPER, venue="NeurIPS", year=2019,
        code_url=_LDAM_CODE,
        summary="LDAM loss; from epoch 160 of 200 (scaled with the budget: drw_start x epochs) the loss is weighted "
        "by class-balanced weights with beta 0.9999.",
        reference_results={"cifar100-lt-if100": {"overall": 42.04, **LDAM_SETTING,
                                                 "source": "LDAM-DRW paper, Table 2 (ResNet-32)"},
                           "cifar10-lt-if100": {"overall": 77.03, **LDAM_SETTING,
                                                "source": "LDAM-DRW paper, Table 2 (ResNet-32)"},
                           "cifar100-lt-if50": {"overall": 47.29, **LDAM_SETTING,
                                                "source": BOT_GALLERY + ", DRW with the LDAM loss (100 - 52.71 "
                                                "top-1 error; the paper's Table 2 has no imbalance 50)"},
                           "cifar100-lt-if200": {"overall": None, **LDAM_SETTING,
                                                 "source": "no same-setting number found: LDAM-DRW's Table 2 reports "
                                                 "imbalance 100 and 10, BagofTricks-LT 100 and 50, and SAFA's "
                                                 "supplement gives LDAM-DRW only with SAFA (Table 4)"}},
        interpretations=("The switch epoch is round(drw_start x epochs), 0-based, so 160 of 200 in the paper budget.",),
    )

    def check_options(self):
        super().check_options()
        _check_beta(self)
        if not 0 <= self.opts["drw_start"] <= 1:
            raise ConfigError(f"ldam-drw.drw_start is a fraction of the epochs in [0, 1], got {self.opts['drw_start']}")

    _weight: torch.Tensor | None = None

    def drw_epoch(self, run) -> int:
        return round(self.opts["drw_start"] * run.config["epochs"])

    def weight_at(self, run) -> torch.Tensor | None:
        if run.stage == 1 and run.epoch >= self.drw_epoch(run):
            if self._weight is None:
                self._weight = class_balanced_weights(run.train_counts, self.opts["beta"])
            return self._weight
        return None

    @hookimpl
    def ltbench_record(self, run):
        return {"drw_epoch": self.drw_epoch(run)}


class BalancedSoftmax(Method):
    name = "balanced-softmax"
    metadata = MethodMetadata(
        family="loss",
        title="Balanced Softmax", paper="Ren et al., Balanced Meta-Softmax for Long-Tailed Visual Recognition",
        venue="NeurIPS", year=2020, code_url="https://github.com/jiawei-ren/BalancedMetaSoftmax-Classification",
        summary="Cross-entropy on logits + log(n_c): the softmax is re-balanced by the training prior.",
        reference_results={"cifar100-lt-if100": {"overall": 42.99, **LDAM_SETTING, "source": _BOT + ", plain recipe"},
                           "cifar10-lt-if100": {"overall": 77.54, "source": _BOT + ", plain recipe"}},
        interpretations=("Identical in arithmetic to logit-adjust at tau 1; both are listed because the literature "
                         "reports them separately.",),
    )

    @hookimpl
    def ltbench_build_loss(self, run):
        prior = log_prior(run.train_counts).to(run.device)
        return lambda logits, targets, row_weights=None: logit_adjusted_loss(logits, targets, prior, 1.0, row_weights)


class LogitAdjustLoss(Method):
    name = "logit-adjust"
    options = {"tau": 1.0}
    metadata = MethodMetadata(
        family="loss",
        title="Logit-adjusted loss", paper="Menon et al., Long-Tail Learning via Logit Adjustment", venue="ICLR",
        year=2021, code_url="https://github.com/google-research/google-research/tree/master/logit_adjustment",
        summary="Cross-entropy on logits + tau * log(prior), tau 1.",
        reference_results={"cifar100-lt-if100": {"overall": 43.89, "source": "Menon et al. (as quoted by OpenLT; "
                                                 "ResNet-32)"}},
        interpretations=("At tau 1 (the default) the arithmetic is balanced-softmax's, so the two rows give the "
                         "same predictions (the board marks them as identical); they differ at tau != 1. The two "
                         "papers report different numbers for the same loss, from different training recipes.",),
    )

    def check_options(self):
        if self.opts["tau"] < 0:
            raise ConfigError(f"logit-adjust.tau must be >= 0, got {self.opts['tau']}")

    @hookimpl
    def ltbench_build_loss(self, run):
        prior = log_prior(run.train_counts).to(run.device)
        tau = self.opts["tau"]
        return lambda logits, targets, row_weights=None: logit_adjusted_loss(logits, targets, prior, tau, row_weights)


@hookimpl
def ltbench_register_methods(register):
    for cls in (ClassBalancedLoss, ClassBalancedFocal, Focal, LDAM, LDAMDRW, BalancedSoftmax, LogitAdjustLoss):
        register(cls)

