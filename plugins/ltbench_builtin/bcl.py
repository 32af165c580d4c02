"""``bcl``: Balanced Contrastive Learning (Zhu et al., CVPR 2022).

Two branches share the backbone. The classification branch trains a cosine classifier scaled by 30 (the official
``NormedLinear`` hard-codes ``self.s = 30``; ltbench's ``scale`` option, default 30) with the logit-adjusted
cross-entropy on one view of each image. The contrastive branch projects two more views (an MLP head to
normalised ``feat_dim`` embeddings) and trains them with the *balanced* supervised contrastive loss:

* **class-complement**: the C class centres, an MLP (``head_fc``) applied to the classifier's weight vectors
  and normalised, join every batch as anchors' positives and negatives, so every class is in every batch;
* **class-averaging**: in an anchor's denominator the exp-similarities of each class are averaged over that
  class's members in the batch (centres included), so a head class with many rows weighs as much as a tail
  class with one.

The loss is ``alpha * LA-CE + beta * BCL`` (official ``main.py``; ``loss/contrastive.py`` ``BalSCL``;
``loss/logitadjust.py``; ``models/resnext.py`` ``NormedLinear`` and ``BCLModel``), every view in one forward pass
(``ltbench_train_views`` asks for three).

Augmentation: the released code trains ImageNet-LT and iNaturalist only. There the classification view is
RandomResizedCrop, flip, colour jitter and RandAugment (``rand-n2-m10``), and the two contrastive views are
SimCLR-style (RandomResizedCrop, flip, colour jitter with p 0.8, grayscale with p 0.2; ``--cl_views sim-sim``, the
default; ``sim-rand`` adds RandAugment to one of them). It ships no CIFAR script, so the augmentation behind the
paper's CIFAR numbers is not in the code. ltbench gives all three views the core's pad-crop-flip.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ltbench.api import (ConfigError, Method, MethodMetadata, gather_batch, hookimpl, is_distributed, projection_head,
                         soft_cross_entropy)


def balanced_contrastive_loss(features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor,
                              temperature: float) -> torch.Tensor:
    """BalSCL of the official code: ``features`` (2B, d) the two contrastive views view by view (normalised),
    ``labels`` (B,), ``centers`` (C, d) the normalised class centres.

    For anchor i (one of the 2B view rows) and every other row or centre j: ``z_ij = f_i . f_j / T``.
    Positives are the rows and centres of i's class. The denominator averages exp(z_ij) within each class k,
    ``sum_k (1/n_k) sum_{j in k} exp(z_ij)`` with ``n_k`` the members of k among the 2B rows and C centres
    (less one for i's own class: i is not its own contrast). The loss is minus the mean over positives of
    ``z_ip - log(denominator)``, averaged over anchors."""
    n, num_classes = len(labels), len(centers)
    device = features.device
    targets = torch.cat([labels.repeat(2), torch.arange(num_classes, device=device)])
    class_count = F.one_hot(targets, num_classes).sum(0).to(features.dtype)  # (C,): 2B rows + one centre each
    mask = (targets[: 2 * n, None] == targets[None, :]).to(features.dtype)  # (2B, 2B + C)
    not_self = torch.ones_like(mask).scatter_(1, torch.arange(2 * n, device=device)[:, None], 0.0)
    mask = mask * not_self
    every = torch.cat([features, centers])
    logits = every[: 2 * n] @ every.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()  # for stability (cancels in the loss)
    exp_logits = logits.exp() * not_self
    per_member = class_count[targets][None, :].expand_as(mask) - mask  # class-averaging
    log_prob = logits - (exp_logits / per_member).sum(1, keepdim=True).log()
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
    return -mean_log_prob_pos.view(2, n).mean()


class ScaledCosine(nn.Module):
    """A cosine classifier, ``s * cos(x, w_c)``; ``weight`` is (in_features, C) as the official NormedLinear."""

    def __init__(self, in_features: int, num_classes: int, scale: float):
        super().__init__()
        self.scale = scale
        self.weight = nn.Parameter(torch.empty(in_features, num_classes))
        self.weight.data.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * (F.normalize(x, dim=1) @ F.normalize(self.weight, dim=0))


class BalancedContrastiveLearning(Method):
    name = "bcl"
    options = {"alpha": 2.0, "beta": 0.6, "temperature": 0.1, "feat_dim": 128, "scale": 30.0}
    metadata = MethodMetadata(
        family="contrastive",
        title="Balanced Contrastive Learning (BCL)",
        paper="Zhu et al., Balanced Contrastive Learning for Long-Tailed Visual Recognition",
        venue="CVPR", year=2022,
        code_url="https://github.com/FlamieZhu/Balanced-Contrastive-Learning",
        summary="Logit-adjusted CE on a cosine classifier scaled by 30 (one view) plus a supervised contrastive "
                "loss on two more views that averages each class's negatives and adds the C class centres (an MLP "
                "of the classifier's weights) to every batch; loss alpha CE + beta BCL (2.0, 0.6; temperature 0.1).",
        reference_results={
            "cifar100-lt-if100": {"overall": 53.9, "backbone": "resnet32",
                                  "source": "BCL (ResNet-32), CIFAR-100-LT rho=100, error 46.1 as listed for the "
                                  "paper by Papers with Code; its augmentation is not in the released code (no CIFAR "
                                  "script), whose ImageNet-LT/iNaturalist runs use RandAugment on the classification "
                                  "view and SimCLR augmentation on the contrastive views, which ltbench does not "
                                  "apply"},
        },
        interpretations=(
            "Every view is the core pad-crop-flip augmentation. The released code (ImageNet-LT/iNaturalist only, no "
            "CIFAR script) uses RandAugment with colour jitter on the classification view and SimCLR colour "
            "jitter/grayscale on the contrastive views; none is applied, so both branches see weaker views than "
            "the official code's.",
            "The official repository ships the ImageNet-LT/iNaturalist script only (alpha 1, beta 0.35, "
            "temperature 0.07, feat_dim 1024); alpha 2.0, beta 0.6, temperature 0.1 and feat_dim 128 are our "
            "reading of the paper's CIFAR setting.",
            "The logit scale is an option (scale, default 30): the official NormedLinear hard-codes s = 30, so the "
            "default is the official computation, not an ltbench choice; the class centres are taken from its "
            "weight vectors, as the official BCLModel does.",
            "Under torchrun the contrastive term is over the global batch (every rank's rows, gathered), as the "
            "official code computes it over the whole batch under DataParallel and as one process does.",
        ),
    )

    def check_options(self) -> None:
        super().check_options()
        for key in ("alpha", "beta"):
            if self.opts[key] < 0:
                raise ConfigError(f"bcl.{key} is a loss weight, >= 0; got {self.opts[key]}")
        if not self.opts["temperature"] > 0:
            raise ConfigError(f"bcl.temperature must be > 0, got {self.opts['temperature']}")
        if self.opts["feat_dim"] < 1 or self.opts["scale"] <= 0:
            raise ConfigError(f"bcl.feat_dim must be >= 1 and bcl.scale > 0; got {self.opts['feat_dim']}, "
                              f"{self.opts['scale']}")

    @hookimpl
    def ltbench_build_classifier(self, in_features, num_classes, stage):
        return ScaledCosine(in_features, num_classes, self.opts["scale"]) if stage == 1 else None

    @hookimpl
    def ltbench_configure_model(self, model):
        d = model.num_features
        model.heads["bcl_projection"] = projection_head(d, self.opts["feat_dim"])
        model.heads["bcl_centres"] = projection_head(d, self.opts["feat_dim"])

    @hookimpl
    def ltbench_train_views(self, stage):
        return 3 if stage == 1 else None

    @hookimpl
    def ltbench_build_loss(self, run, stage):
        if stage != 1:
            return None
        counts = np.asarray(run.train_counts, dtype=np.float64)
        log_prior = torch.tensor(np.log(counts / counts.sum()), dtype=torch.float32, device=run.device)
        alpha = self.opts["alpha"]

        def loss(logits: torch.Tensor, targets: torch.Tensor, row_weights: torch.Tensor | None = None):
            adjusted = logits + log_prior  # logit adjustment (official LogitAdjust, tau 1)
            if targets.dim() == 2 or row_weights is not None:
                return alpha * soft_cross_entropy(adjusted, targets, row_weights=row_weights)
            return alpha * F.cross_entropy(adjusted, targets)
        return loss

    @hookimpl
    def ltbench_extra_losses(self, run, model, batch, output) -> dict[str, Any] | None:
        if run.stage != 1 or batch.views < 3:
            return None
        rows = slice(batch.view_rows(1).start, batch.view_rows(2).stop)
        features = F.normalize(model.heads["bcl_projection"](output.features[rows]), dim=1)
        centres = F.normalize(model.heads["bcl_centres"](model.classifier.weight.T), dim=1)
        labels = batch.labels[: len(batch.images)]
        if is_distributed():  # the contrast is over the global batch, as in one process: every rank's rows
            n = len(labels)
            features = torch.cat([gather_batch(run, features[:n]), gather_batch(run, features[n:])])
            labels = gather_batch(run, labels)
        scl = balanced_contrastive_loss(features.float(), labels, centres.float(), self.opts["temperature"])
        return {"bcl": self.opts["beta"] * scl}


@hookimpl
def ltbench_register_methods(register):
    register(BalancedContrastiveLearning)
