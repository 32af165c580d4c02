"""Backbones behind one interface, after timm's conventions.

A backbone is an ``nn.Module`` with

* ``forward_features(x) -> feature map`` (B, C, H, W): the last block's output,
  right before global pooling (what CAMs are computed on);
* ``forward_pool(feature_map) -> embedding`` (B, num_features);
* ``num_features``: the embedding width.

The classifier head is not part of the backbone; :class:`ltbench.training.model.LTModel`
joins the two. CIFAR ResNets expose ``stem, layer1, layer2, layer3`` (torchvision
ResNets, the CIFAR ResNet-18/34 among them, also ``layer4``) so that a method can
insert a module after a stage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ltbench.hookspecs import hookimpl
from ltbench.errors import ConfigError


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
    """Option A: subsample by 2 and zero-pad the channels, half of the new ones on each side (for a doubling
    of the width, ``planes // 4`` a side, as LDAM-DRW; RIDE's reduced experts widen 16 -> 24 -> 48)."""

    def __init__(self, in_planes: int, planes: int):
        super().__init__()
        self.pad = (planes - in_planes) // 2

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
            self.shortcut = _LambdaShortcut(in_planes, planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(_PooledBackbone):
    """The CIFAR ResNets (He et al.; LDAM-DRW's code): a 3x3 stem, three stages of ``blocks_per_stage`` basic
    blocks (``layer1..3``, widths 16/32/64, option-A shortcuts) and global average pooling."""

    def __init__(self, blocks_per_stage: int, in_chans: int = 3, widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        planes = widths[0]
        stages = []
        for i, width in enumerate(widths):
            stages.append(self.make_stage(planes, width, blocks_per_stage, 2 if i > 0 else 1))
            planes = width
        self.layer1, self.layer2, self.layer3 = stages
        self.num_features = widths[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    @staticmethod
    def make_stage(in_planes: int, width: int, blocks: int, stride: int) -> nn.Sequential:
        """A stage of ``blocks`` basic blocks ``in_planes -> width``, the first with ``stride`` (e.g. for a
        method that builds narrower copies of a stage, as RIDE's reduced experts). Convolutions are left at
        PyTorch's default initialisation; the backbone re-initialises its own kaiming-normal."""
        return nn.Sequential(*[_CifarBlock(in_planes if j == 0 else width, width, stride if j == 0 else 1)
                               for j in range(blocks)])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer3(self.layer2(self.layer1(self.stem(x))))


# ---- ResNet-10 for ImageNet-LT-style data ----------------------------------


class TorchvisionResNet(_PooledBackbone):
    """A torchvision ResNet (``arch``: resnet18, resnet34, resnet50, resnet152, resnext50_32x4d, or resnet10:
    [1, 1, 1, 1] basic blocks, as Decoupling, BLT and Breadcrumb use) as ``stem, layer1..layer4``. Its state dict
    is torchvision's with ``conv1``/``bn1`` under ``stem.0``/``stem.1`` and no ``fc``.

    ``cifar_stem=True`` gives the ResNet-18/34 of the CIFAR literature, as kuangliu/pytorch-cifar defines them
    (CAM fusion's CIFAR tables use ResNet-18/34 "adapted" to CIFAR): a 3x3 stride-1 stem of 64 channels and no
    max-pool, then torchvision's basic-block stages (widths 64-512, strides 1, 2, 2, 2, 1x1-conv + BN shortcuts).
    A 32x32 image reaches ``layer4`` as a 4x4 map; the ImageNet stem (stride 2, then a stride-2 max-pool) leaves
    it 1x1, where a class activation map has one location."""

    def __init__(self, arch: str = "resnet10", in_chans: int = 3, cifar_stem: bool = False):
        super().__init__()
        import torchvision
        from torchvision.models.resnet import BasicBlock, ResNet

        self.arch, self.cifar_stem = arch, cifar_stem
        net = ResNet(BasicBlock, [1, 1, 1, 1]) if arch == "resnet10" else getattr(torchvision.models, arch)()
        if cifar_stem:
            net.conv1 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's own
            self.stem = nn.Sequential(net.conv1, net.bn1, net.relu)
        else:
            if in_chans != 3:
                net.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
            self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.num_features = net.fc.in_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))

    @staticmethod
    def from_torchvision(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A torchvision ResNet state dict in this module's names (the classifier ``fc`` dropped)."""
        rename = {"conv1.": "stem.0.", "bn1.": "stem.1."}
        out = {}
        for key, value in state.items():
            if key.startswith("fc."):
                continue
            prefix = next((p for p in rename if key.startswith(p)), None)
            out[rename[prefix] + key[len(prefix):] if prefix else key] = value
        return out

    def pretrained_state(self) -> dict[str, torch.Tensor]:
        """torchvision's ImageNet weights for this architecture (downloaded, or from torch's cache)."""
        import torchvision

        if self.arch == "resnet10":
            raise ConfigError("backbone resnet10 has no published pretrained weights; give a local file with "
                              "--set pretrained_path=FILE")
        if self.cifar_stem:
            raise ConfigError(f"backbone cifar-{self.arch} has no published pretrained weights (torchvision's are "
                              f"for the ImageNet stem); give a local file with --set pretrained_path=FILE")
        weights = torchvision.models.get_model_weights(self.arch).DEFAULT
        return weights.get_state_dict(progress=True)


def ResNet10(in_chans: int = 3) -> TorchvisionResNet:
    return TorchvisionResNet("resnet10", in_chans)


def load_pretrained(backbone: nn.Module, name: str, path: str = "") -> dict[str, Any]:
    """Load pretrained weights into ``backbone``: from ``path`` (a state dict saved with ``torch.save``, read
    with ``weights_only=True``; torchvision ResNet names are translated), else the library's own weights.
    Returns what the record says: the source, the file's sha256, and the tensors loaded."""
    import hashlib

    if path:
        file = Path(path).expanduser()
        if not file.is_file():
            raise ConfigError(f"pretrained_path {path}: no such file")
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle.UnpicklingError, RuntimeError, ...
            raise ConfigError(f"pretrained_path {file} is not a loadable state dict ({type(exc).__name__}: "
                              f"{exc})") from exc
        for wrapper in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                state = state[wrapper]
        source, digest = str(file), hashlib.sha256(file.read_bytes()).hexdigest()
    elif hasattr(backbone, "pretrained_state"):
        state, source, digest = backbone.pretrained_state(), f"{name} (library weights)", ""
    else:
        raise ConfigError(f"backbone {name!r} has no pretrained weights; give a local file with "
                          f"--set pretrained_path=FILE, or use a torchvision ResNet or timm/ backbone")
    if isinstance(backbone, TorchvisionResNet):
        state = TorchvisionResNet.from_torchvision(state)
    own = backbone.state_dict()
    matched = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not matched:
        raise ConfigError(f"pretrained weights from {source} share no tensor (by name and shape) with backbone "
                          f"{name!r}")
    backbone.load_state_dict(matched, strict=False)
    if not digest:
        digest = hashlib.sha256(b"".join(v.detach().cpu().numpy().tobytes() for v in matched.values())).hexdigest()
    return {"source": source, "sha256": digest, "tensors_loaded": len(matched), "tensors_in_backbone": len(own)}


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

        self.model_name, self.in_chans = model_name, in_chans
        self.model = timm.create_model(model_name, pretrained=False, num_classes=0, in_chans=in_chans)
        self.num_features = self.model.num_features

    def pretrained_state(self) -> dict[str, torch.Tensor]:
        """timm's pretrained weights for this model (downloaded, or from the hub's cache), in this module's
        names."""
        import timm

        try:
            net = timm.create_model(self.model_name, pretrained=True, num_classes=0, in_chans=self.in_chans)
        except RuntimeError as exc:
            raise ConfigError(f"timm/{self.model_name}: no pretrained weights ({exc})") from exc
        return {f"model.{k}": v for k, v in net.state_dict().items()}

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
    for arch, text in (("resnet18", "ResNet-18 (2-2-2-2 blocks, 11.2M params)"),
                       ("resnet34", "ResNet-34 (3-4-6-3 blocks, 21.3M params)")):
        register(BackboneSpec(f"cifar-{arch}", f"CIFAR {text}: 3x3 stem, no max-pool; CAM fusion's CIFAR tables",
                              lambda c, arch=arch: TorchvisionResNet(arch, c, cifar_stem=True)))
    for arch, text in (("resnet18", "ResNet-18 (ImageNet stem; cifar-resnet18 for 32x32 images)"),
                       ("resnet50", "ResNet-50 (iNaturalist, ImageNet-LT)"),
                       ("resnet152", "ResNet-152 (Places-LT, ImageNet-pretrained)"),
                       ("resnext50_32x4d", "ResNeXt-50 32x4d (ImageNet-LT)")):
        register(BackboneSpec(arch, f"torchvision {text}; --set pretrained=true for torchvision's weights",
                              lambda c, arch=arch: TorchvisionResNet(arch, c)))
    register(BackboneSpec("tiny-cnn", "two conv layers (tests)", TinyCNN))
