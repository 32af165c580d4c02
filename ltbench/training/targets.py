"""Training targets that can be mixed: hard labels, or one probability distribution per row.

A task loss (``ltbench_build_loss``) is called as ``loss(logits, targets)`` where ``targets`` is either

* hard labels: a ``long`` tensor of shape ``(B,)``, or
* soft targets: a float tensor of shape ``(B, C)`` whose rows are probability distributions over the classes.

A method that mixes images (mixup, cutmix, remix) sets ``batch.targets`` to soft targets, usually with
:func:`mix_pairs`: row ``i`` is ``lam[i] * onehot(a[i]) + (1 - lam[i]) * onehot(b[i])``. Every loss in
ltbench's zoo handles both forms, and on one-hot soft targets gives what it gives on the hard labels.
For a loss that is a per-row mean, a pair target gives exactly ``lam * loss(a) + (1 - lam) * loss(b)``
row by row (the "mixup criterion"); class-weighted losses normalise by the rows' target-weighted class
weights, which is PyTorch's weighted mean on hard labels.

The helpers here are what a third-party loss needs to accept mixed targets.

**Per-row weights.** A method may weight the rows of a batch (``batch.row_weights``, one non-negative number per
row). The core then calls the task loss as ``loss(logits, targets, row_weights=r)``; a loss that accepts the
keyword weights each row's contribution and keeps its normaliser, so ``r = 1`` gives the unweighted loss exactly:
a mean over rows becomes ``sum_i r_i l_i / B``, a class-weighted mean ``sum_i r_i w_i l_i / sum_i w_i``. Every
helper here takes ``row_weights``; :func:`cross_entropy` is the core's default loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ltbench.training.distributed import global_normaliser


def is_soft(targets: torch.Tensor) -> bool:
    """True for soft targets ``(B, C)``, false for hard labels ``(B,)``."""
    return targets.dim() == 2


def as_soft(targets: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Soft targets ``(B, C)``: one-hot rows for hard labels, the targets themselves when already soft."""
    if is_soft(targets):
        return targets.to(dtype)
    return F.one_hot(targets, num_classes).to(dtype)


def mix_pairs(labels_a: torch.Tensor, labels_b: torch.Tensor, lam: torch.Tensor | float,
              num_classes: int) -> torch.Tensor:
    """Soft targets ``lam * onehot(a) + (1 - lam) * onehot(b)``; ``lam`` a number or one weight per row."""
    lam = torch.as_tensor(lam, dtype=torch.float32, device=labels_a.device)
    lam = lam.reshape(-1, 1) if lam.dim() else lam
    return lam * F.one_hot(labels_a, num_classes).float() + (1 - lam) * F.one_hot(labels_b, num_classes).float()


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None,
                       row_weights: torch.Tensor | None = None) -> torch.Tensor:
    """``-sum_c q_c log softmax(logits)_c`` averaged over rows; with class weights ``w``, each row's
    ``q_c`` is weighted by ``w_c`` and the sum is divided by ``sum_i sum_c q_ic w_c`` (on one-hot rows:
    ``F.cross_entropy(..., weight=w)`` exactly). ``row_weights`` as the module says."""
    q = as_soft(targets, logits.shape[1], logits.dtype)
    per_class = -q * F.log_softmax(logits, dim=1)
    return weighted_mean(per_class, q, weight, row_weights)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, row_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The core's default task loss: ``F.cross_entropy`` (hard labels or soft targets); with ``row_weights``,
    the mean over rows of ``r_i * CE_i``."""
    if row_weights is None:
        return F.cross_entropy(logits, targets)
    return soft_cross_entropy(logits, targets, row_weights=row_weights)


def weighted_mean(per_class: torch.Tensor, q: torch.Tensor, weight: torch.Tensor | None,
                  row_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Reduce a ``(B, C)`` tensor of target-weighted per-class loss terms: the mean over rows of their sums,
    or, with class weights ``w``, ``sum(per_class * w) / sum(q * w)`` (PyTorch's weighted mean; under torchrun the
    normaliser is the global batch's, :func:`ltbench.api.global_normaliser`). Row weights ``r`` scale each row's
    sum and leave the normaliser alone."""
    if row_weights is None:  # (the expressions every committed record was trained with)
        if weight is None:
            return per_class.sum(1).mean()
        w = weight.to(per_class.device, per_class.dtype)
        return (per_class * w).sum() / global_normaliser((q * w).sum(), len(q))
    r = row_weights.to(per_class.device, per_class.dtype)[:, None]
    if weight is None:
        return (per_class * r).sum(1).mean()
    w = weight.to(per_class.device, per_class.dtype)
    return (per_class * w * r).sum() / global_normaliser((q * w).sum(), len(q))
