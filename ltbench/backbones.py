"""Backbones behind one interface, after timm's conventions.

A backbone is an ``nn.Module`` with

* ``forward_features(x) -> feature map`` (B, C, H, W): the last block's output,
  right before global pooling (what CAMs are computed on);
* ``forward_pool(feature_map) -> embedding`` (B, num_features);
* ``num_features``: the embedding width.

The classifier head is not part of the backbone; :class:`ltbench.model.LTModel`
joins the two. CIFAR ResNets expose ``stem, layer1, layer2, layer3`` so that a
method can insert a module after a stage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ltbench import hookimpl


@dataclass(frozen=True)
class BackboneSpec:
    """``build(in_chans)`` returns a backbone module."""

    name: str
    description: str
    build: Callable[[int], nn.Module]


class _PooledBackbone(nn.Module):
    num_features: int

    def forward_pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(fmap, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_pool(self.forward_features(x))


# ---- CIFAR ResNets (He et al. 2016, option-A shortcuts, as LDAM-DRW) ------


class _LambdaShortcut(nn.Module):
    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class _CifarBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = _LambdaShortcut(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(_PooledBackbone):
    def __init__(self, blocks_per_stage: int, in_chans: int = 3, widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        planes = widths[0]
        stages = []
        for i, width in enumerate(widths):
            layers = []
            for j in range(blocks_per_stage):
                layers.append(_CifarBlock(planes, width, 2 if (i > 0 and j == 0) else 1))
                planes = width
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.num_features = widths[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer3(self.layer2(self.layer1(self.stem(x))))


# ---- ResNet-10 for ImageNet-LT-style data ----------------------------------


class ResNet10(_PooledBackbone):
    """torchvision's ResNet with [1, 1, 1, 1] basic blocks (Decoupling, BLT, Breadcrumb)."""

    def __init__(self, in_chans: int = 3):
        super().__init__()
        from torchvision.models.resnet import BasicBlock, ResNet

        net = ResNet(BasicBlock, [1, 1, 1, 1])
        if in_chans != 3:
            net.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.num_features = 512

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))


# ---- a tiny CNN for tests ----------------------------------------------------


class TinyCNN(_PooledBackbone):
    def __init__(self, in_chans: int = 3, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        self.layer1 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * width),
                                    nn.ReLU(inplace=True))
        self.num_features = 2 * width

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer1(self.stem(x))


# ---- timm models by name -----------------------------------------------------


class TimmBackbone(_PooledBackbone):
    """Any timm model: ``timm/<model name>`` (random init; nothing is downloaded)."""

    def __init__(self, model_name: str, in_chans: int = 3):
        super().__init__()
        import timm

        self.model = timm.create_model(model_name, pretrained=False, num_classes=0, in_chans=in_chans)
        self.num_features = self.model.num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)

    def forward_pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(fmap, pre_logits=True)


TIMM_PREFIX = "timm/"


@hookimpl
def ltbench_register_backbones(register: Callable[[BackboneSpec], None]) -> None:
    register(BackboneSpec("resnet32", "CIFAR ResNet-32 (5-5-5 blocks, 16/32/64, 0.46M params)",
                          lambda c: CifarResNet(5, c)))
    register(BackboneSpec("resnet20", "CIFAR ResNet-20 (3-3-3 blocks)", lambda c: CifarResNet(3, c)))
    register(BackboneSpec("resnet8", "CIFAR ResNet-8 (1-1-1 blocks; CPU budgets)", lambda c: CifarResNet(1, c)))
    register(BackboneSpec("resnet10", "ResNet-10 for ImageNet-LT-style images ([1,1,1,1] basic blocks)", ResNet10))
    register(BackboneSpec("tiny-cnn", "two conv layers (tests)", TinyCNN))
