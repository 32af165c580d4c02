import pytest
import torch

from ltbench.errors import UnknownNameError
from ltbench.plugins.catalog import build_catalog


@pytest.fixture(scope="module")
def catalog():
    return build_catalog(entry_points=False)


@pytest.mark.parametrize("name, in_chans, size, width, fmap_hw", [
    ("resnet32", 3, 32, 64, 8), ("resnet8", 1, 28, 64, 7), ("resnet10", 3, 64, 512, 2), ("tiny-cnn", 3, 16, 32, 8),
    ("timm/resnet18", 3, 64, 512, 2), ("cifar-resnet18", 3, 32, 512, 4), ("cifar-resnet34", 3, 32, 512, 4),
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


#: CIFAR ResNet-18/34 (kuangliu/pytorch-cifar) with a 100-class linear classifier: torchvision's resnet18/34 with
#: num_classes=100 (11,227,812 / 21,335,972) less its 7x7 stem (64*3*7*7 = 9,408) plus a 3x3 one (64*3*3*3 =
#: 1,728), and the same sum layer by layer
@pytest.mark.parametrize("name, parameters", [("cifar-resnet18", 11_220_132), ("cifar-resnet34", 21_328_292)])
def test_cifar_resnet18_and_34_are_the_cifar_literatures_networks(catalog, name, parameters):
    from ltbench.errors import ConfigError
    from ltbench.training.model import LTModel

    net = catalog.backbone(name).build(3)
    model = LTModel(net, torch.nn.Linear(net.num_features, 100)).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert sum(p.numel() for p in model.parameters()) == parameters
    stem = net.stem[0]
    assert (stem.kernel_size, stem.stride, stem.out_channels) == ((3, 3), (1, 1), 64)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in net.modules())
    with pytest.raises(ConfigError, match="no published pretrained weights"):
        net.pretrained_state()  # torchvision's ImageNet weights are for the other stem


def test_the_cifar_resnet18_keeps_a_4x4_last_map_on_cifar_where_the_imagenet_one_leaves_1x1(catalog):
    """CAM fusion computes its class activation maps on this map: at 1x1 a CAM has one location, so its
    class-specific and class-generic parts cannot be told apart."""
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert catalog.backbone("cifar-resnet18").build(3).eval().forward_features(x).shape == (2, 512, 4, 4)
        assert catalog.backbone("resnet18").build(3).eval().forward_features(x).shape == (2, 512, 1, 1)


def test_unknown_backbone_and_timm_model_names(catalog):
    with pytest.raises(UnknownNameError, match="Did you mean 'resnet32'"):
        catalog.backbone("resnet23")
    with pytest.raises(UnknownNameError, match="unknown timm model 'resnet_18'"):
        catalog.backbone("timm/resnet_18")


def test_pretrained_path_loads_a_saved_torchvision_resnet_and_the_record_says_so(tmp_path):
    from torchvision.models.resnet import BasicBlock, ResNet

    from ltbench.training.run import build_run
    from ltbench.grid.plan import plan_grid
    from ltbench.plugins.testing import catalog_with, run_methods

    torch.manual_seed(123)
    saved = ResNet(BasicBlock, [1, 1, 1, 1]).state_dict()  # a torchvision ResNet-10, as a user would save it
    path = tmp_path / "resnet10.pth"
    torch.save(saved, path)
    catalog = catalog_with()
    settings = {"backbone": "resnet10", "pretrained_path": str(path)}
    (cell,) = plan_grid(["ce"], ["synthetic-lt"], [0], "smoke", catalog=catalog, settings=settings)
    run = build_run(catalog, cell.dataset, cell.data, cell.config, 0, torch.device("cpu"), tmp_path,
                    log=lambda m: None)
    backbone = run.model.backbone
    assert torch.equal(backbone.stem[0].weight, saved["conv1.weight"])  # the first layer is the file's
    assert torch.equal(backbone.layer4[0].conv2.weight, saved["layer4.0.conv2.weight"])
    assert run.pretrained["source"] == str(path) and len(run.pretrained["sha256"]) == 64
    (rec,) = run_methods(catalog, ["ce"], tmp_path / "runs", settings=settings, epochs=1)
    assert rec["status"] == "completed" and rec["backbone_weights"]["sha256"] == run.pretrained["sha256"]


def test_pretrained_weights_that_cannot_be_had_are_a_named_error(tmp_path):
    from ltbench.plugins.testing import catalog_with, run_methods

    (rec,) = run_methods(catalog_with(), ["ce"], tmp_path, settings={"pretrained": "true"})  # tiny-cnn: none
    assert rec["status"] == "failed" and "has no pretrained weights" in rec["error"]
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    (rec,) = run_methods(catalog_with(), ["ce"], tmp_path / "b",
                         settings={"backbone": "resnet10", "pretrained_path": str(tmp_path / "bad.pth")})
    assert rec["status"] == "failed" and "is not a loadable state dict" in rec["error"]
