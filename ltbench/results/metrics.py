"""Many/medium/few-shot metrics.

A class's group comes from its *training* count: many if n > 100, few if
n < 20, medium otherwise (20..100 inclusive). Every accuracy is a mean of
per-class accuracies, in percent: overall over all classes, each group over
its classes. An empty group's accuracy is ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

GROUPS = ("many", "medium", "few")


def shot_groups(train_counts: np.ndarray, few_below: int = 20, many_above: int = 100) -> np.ndarray:
    """Return an array of group names, one per class."""
    counts = np.asarray(train_counts)
    return np.where(counts > many_above, "many", np.where(counts < few_below, "few", "medium"))


def confusion_matrix(targets: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """``cm[true, pred]`` counts."""
    return np.bincount(np.asarray(targets) * num_classes + np.asarray(preds), minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


@dataclass
class EvalResult:
    confusion: np.ndarray  # [true, pred]
    per_class_accuracy: list[float | None]  # percent; None for a class absent from the split
    overall: float
    many: float | None
    medium: float | None
    few: float | None
    group_sizes: dict[str, int] = field(default_factory=dict)
    #: the predicted class of each image, in the split's order (set by ``engine.evaluate``)
    predictions: np.ndarray | None = None
    #: each image's softmax probability of its predicted class and of its true class (``engine.evaluate``)
    confidence: np.ndarray | None = None
    true_probability: np.ndarray | None = None

    def calibration(self, labels: np.ndarray) -> dict[str, float] | None:
        """Expected calibration error and negative log-likelihood of these predictions (:func:`calibration`)."""
        if self.confidence is None or self.true_probability is None or self.predictions is None:
            return None
        return calibration(self.confidence, self.predictions == np.asarray(labels), self.true_probability)

    def metrics(self) -> dict[str, Any]:
        return {"overall": self.overall, "many": self.many, "medium": self.medium, "few": self.few}


#: equal-width confidence bins of the expected calibration error (Guo et al. 2017; MiSLAS reports it so)
ECE_BINS = 15


def calibration(confidence: np.ndarray, correct: np.ndarray, true_probability: np.ndarray,
                bins: int = ECE_BINS) -> dict[str, float]:
    """``ece``: the mean over ``bins`` equal-width confidence bins of |accuracy - mean confidence|, weighted by
    the share of images in each, in percent; ``nll``: the mean of -log p(true class). Both from the softmax of
    the logits a method predicts with: for a method whose logits are not scores (cosine or distance logits, e.g.
    LDAM's or NCM's), they measure those logits as they are."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    nll = float(-np.log(np.clip(np.asarray(true_probability, dtype=np.float64), 1e-12, None)).mean())
    return {"ece": 100.0 * float(ece), "nll": nll, "bins": bins}


def evaluate_predictions(
    targets: np.ndarray, preds: np.ndarray, train_counts: np.ndarray, thresholds: dict[str, int]
) -> EvalResult:
    """Accuracy of ``preds`` against ``targets``: overall (the mean of per-class accuracies), per class, and per
    shot group (many/medium/few by the training counts and the dataset's ``thresholds``)."""
    num_classes = len(train_counts)
    cm = confusion_matrix(targets, preds, num_classes)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(support > 0, 100.0 * np.diag(cm) / np.maximum(support, 1), np.nan)
    groups = shot_groups(train_counts, **thresholds)

    def mean(mask: np.ndarray) -> float | None:
        vals = acc[mask & (support > 0)]
        return float(vals.mean()) if len(vals) else None

    every = np.ones(num_classes, dtype=bool)
    return EvalResult(
        confusion=cm,
        per_class_accuracy=[None if np.isnan(a) else float(a) for a in acc],
        overall=mean(every) or 0.0,
        many=mean(groups == "many"),
        medium=mean(groups == "medium"),
        few=mean(groups == "few"),
        group_sizes={g: int((groups == g).sum()) for g in GROUPS},
    )
