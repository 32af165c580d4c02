"""The model every run trains: backbone + classifier head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ModelOutput:
    """What one forward pass computed (``LTModel.forward_all``), handed to ``ltbench_extra_losses`` and
    ``ltbench_eval_logits`` so that a method reuses it instead of running the model again. On a stage
    trained on cached features, ``features`` and ``feature_map`` are both the cached pooled features."""

    #: the classifier's output, ``(B, C)``
    logits: torch.Tensor
    #: the pooled embedding, ``(B, num_features)``
    features: torch.Tensor
    #: the last block's output before pooling, ``(B, C', H, W)``
    feature_map: torch.Tensor


class LTModel(nn.Module):
    """``backbone`` (the backbone interface: ``docs/writing-a-backbone.md``) followed by ``classifier``.

    Fields: ``backbone`` (an ``nn.Module`` with ``forward_features``, ``forward_pool`` and
    ``num_features``: the backbone interface), ``classifier`` (the head: pooled features ``(B,
    num_features)`` to logits ``(B, C)``; :func:`ltbench_build_classifier` makes it, and stage 2 replaces
    it) and ``heads`` (an ``nn.ModuleDict``, empty unless a method adds auxiliary modules in
    :func:`ltbench_configure_model`: they are trained by the stage-1 optimizer with the rest, saved in
    checkpoints, and unused for the logits unless the method's ``ltbench_eval_logits`` uses them).

    ``forward(x)`` returns logits; ``forward_all(x)`` also returns the pooled
    features and the feature map so that methods can reuse them.
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


def projection_head(dim: int, out: int) -> nn.Sequential:
    """The MLP projection contrastive methods put on the pooled features (SimCLR / MoCo v2, as BCL's and
    PaCo's official code build it): ``Linear(dim, dim)``, ``BatchNorm1d``, ``ReLU``, ``Linear(dim, out)``.
    A method adds it to ``model.heads`` in ``ltbench_configure_model``."""
    return nn.Sequential(nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True), nn.Linear(dim, out))


@dataclass(frozen=True)
class ParamGroup:
    """A group of the optimiser's parameters with its own weight decay or learning rate (``ltbench_param_groups``).

    ``prefixes`` select parameters by the start of their name in ``model.named_parameters()``
    (``"classifier."``, ``"backbone.layer3."``; ``""`` selects every parameter). ``weight_decay`` replaces the
    stage's weight decay for them (``None`` keeps it); ``lr_factor`` multiplies the stage's learning rate at every
    epoch of its schedule. ``label`` names the group in the record (the prefixes when empty).
    """

    prefixes: tuple[str, ...]
    weight_decay: float | None = None
    lr_factor: float = 1.0
    label: str = ""

    def describe(self) -> str:
        return self.label or " ".join(repr(p) for p in self.prefixes)
