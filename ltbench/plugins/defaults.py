"""The core defaults: plain cross-entropy, instance-balanced sampling, a
linear head, one stage. A plugin like any other, registered first in every
run, whose first-result hooks answer last (``trylast``)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ltbench.hookspecs import hookimpl
from ltbench.data.samplers import instance_balanced
from ltbench.training.targets import cross_entropy


class CoreDefaults:
    name = "core"

    @hookimpl(trylast=True)
    def ltbench_build_classifier(self, in_features: int, num_classes: int, previous: nn.Module | None) -> nn.Module:
        # stage 1: a fresh linear head; stage 2: keep training the stage-1 head
        return previous if previous is not None else nn.Linear(in_features, num_classes)

    @hookimpl(trylast=True)
    def ltbench_build_sampler(self, run, labels: np.ndarray) -> torch.utils.data.Sampler:
        return instance_balanced(labels, run.generator)

    @hookimpl(trylast=True)
    def ltbench_build_loss(self):
        return cross_entropy  # F.cross_entropy, and per-row weights when a method sets them
