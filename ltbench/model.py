"""The model every run trains: backbone + classifier head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ModelOutput:
    logits: torch.Tensor
    features: torch.Tensor  # pooled embedding (B, D)
    feature_map: torch.Tensor  # last block's output before pooling (B, C, H, W)


class LTModel(nn.Module):
    """``backbone`` (see :mod:`ltbench.backbones`) followed by ``classifier``.

    ``forward(x)`` returns logits; ``forward_all(x)`` also returns the pooled
    features and the feature map so that methods can reuse them. ``heads`` is
    where a method adds auxiliary modules (trained with the model, unused for
    the logits unless the method says otherwise).
    """

    def __init__(self, backbone: nn.Module, classifier: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.heads = nn.ModuleDict()

    @property
    def num_features(self) -> int:
        return int(self.backbone.num_features)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_pool(self.backbone.forward_features(x))

    def forward_all(self, x: torch.Tensor) -> ModelOutput:
        fmap = self.backbone.forward_features(x)
        feats = self.backbone.forward_pool(fmap)
        return ModelOutput(self.classifier(feats), feats, fmap)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
