import pytest
import torch

from ltbench.catalog import build_catalog
from ltbench.errors import UnknownNameError


@pytest.fixture(scope="module")
def catalog():
    return build_catalog(entry_points=False)


@pytest.mark.parametrize("name, in_chans, size, width, fmap_hw", [
    ("resnet32", 3, 32, 64, 8), ("resnet8", 1, 28, 64, 7), ("resnet10", 3, 64, 512, 2), ("tiny-cnn", 3, 16, 32, 8),
    ("timm/resnet18", 3, 64, 512, 2),
])
def test_backbones_share_one_interface(catalog, name, in_chans, size, width, fmap_hw):
    net = catalog.backbone(name).build(in_chans).eval()
    x = torch.randn(2, in_chans, size, size)
    fmap = net.forward_features(x)
    assert fmap.shape == (2, width, fmap_hw, fmap_hw)
    emb = net.forward_pool(fmap)
    assert emb.shape == (2, net.num_features) and net.num_features == width
    assert torch.allclose(emb, fmap.mean((2, 3)), atol=1e-5)  # global average pooling


def test_resnet32_is_the_standard_cifar_model(catalog):
    net = catalog.backbone("resnet32").build(3)
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(464_000, rel=0.01)


def test_unknown_backbone_and_timm_model_names(catalog):
    with pytest.raises(UnknownNameError, match="Did you mean 'resnet32'"):
        catalog.backbone("resnet23")
    with pytest.raises(UnknownNameError, match="unknown timm model 'resnet_18'"):
        catalog.backbone("timm/resnet_18")
