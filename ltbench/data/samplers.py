"""Samplers shared by the core and method plugins.

Every sampler here draws a class share per class and spreads it evenly over
that class's images, so what a sampler does is fully described by its class
shares: instance-balanced gives shares proportional to n_c, class-balanced
uniform shares, square-root shares proportional to sqrt(n_c).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import RandomSampler, Sampler, WeightedRandomSampler


def instance_balanced(labels: np.ndarray, generator: torch.Generator) -> Sampler:
    """Each training image once per epoch, in a random order."""
    return RandomSampler(range(len(labels)), generator=generator)


def class_share_sampler(
    labels: np.ndarray, class_shares: np.ndarray, generator: torch.Generator, num_samples: int | None = None
) -> Sampler:
    """Draw with replacement so that class c gets ``class_shares[c]`` of the draws
    (shares are normalised); ``num_samples`` defaults to the number of images."""
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=len(class_shares)).astype(np.float64)
    shares = np.asarray(class_shares, dtype=np.float64)
    if shares.shape != counts.shape or np.any(shares < 0) or shares.sum() <= 0:
        raise ValueError(f"class shares must be {len(counts)} non-negative numbers with a positive sum")
    shares = np.where(counts > 0, shares, 0.0)
    per_image = shares[labels] / counts[labels]
    return WeightedRandomSampler(torch.as_tensor(per_image / per_image.sum(), dtype=torch.double),
                                 num_samples or len(labels), replacement=True, generator=generator)


def class_balanced(labels: np.ndarray, generator: torch.Generator, num_samples: int | None = None) -> Sampler:
    """Every class equally likely; images uniform within a class."""
    counts = np.bincount(labels)
    return class_share_sampler(labels, (counts > 0).astype(np.float64), generator, num_samples)
