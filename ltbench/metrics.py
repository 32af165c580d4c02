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

    def metrics(self) -> dict[str, Any]:
        return {"overall": self.overall, "many": self.many, "medium": self.medium, "few": self.few}


def evaluate_predictions(
    targets: np.ndarray, preds: np.ndarray, train_counts: np.ndarray, thresholds: dict[str, int]
) -> EvalResult:
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
