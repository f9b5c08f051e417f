import pytest
import torch
from torch import nn

import lightprune as lp
from lightprune.errors import ConfigError, InputSizeError, UnknownNameError
from lightprune.models import model_info

TORCHVISION = ["vgg11_bn", "vgg16", "vgg16_bn", "resnet18", "resnet34", "resnet50", "mobilenet_v2", "densenet121"]
CIFAR = ["cifar_vgg11", "cifar_vgg16", "cifar_resnet18", "cifar_resnet34", "cifar_resnet50"]


def test_list_models_has_every_required_name():
    assert set(TORCHVISION + CIFAR) <= set(lp.list_models())
    assert lp.list_models() == sorted(lp.list_models())


@pytest.mark.parametrize("name", TORCHVISION + CIFAR)
def test_forward_at_input_size(name):
    info = model_info(name)
    model = lp.create_model(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, info.input_size, info.input_size))
    assert out.shape == (1, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["cifar_vgg16", "cifar_resnet18", "resnet18", "mobilenet_v2"])
def test_single_channel_input(name):
    model = lp.create_model(name, num_classes=10, in_channels=1).eval()
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 1
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_cifar_vgg16_layout():
    model = lp.create_model("cifar_vgg16", num_classes=10)
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [64, 64, 128, 128, 256, 256, 256] + [512] * 6
    linears = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears == [(512, 512), (512, 10)]
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == pytest.approx(14.99e6, rel=0.01)  # NOTES.md: CIFAR VGG-16-BN 14.99 M


def test_cifar_resnet_stem():
    model = lp.create_model("cifar_resnet18", num_classes=10)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)


def test_width_mult():
    model = lp.create_model("cifar_vgg16", num_classes=10, width_mult=0.25)
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [16, 16, 32, 32, 64, 64, 64] + [128] * 6


def test_unknown_model_lists_names():
    with pytest.raises(UnknownNameError, match="Unknown model 'vgg99'. Known models: alexnet, cifar_resnet18, .*mlp, .*resnet50, .*vgg16_bn"):
        lp.create_model("vgg99", 10)


@pytest.mark.parametrize("num_classes", [1, 0, -3, 2.5, True])
def test_num_classes_below_two(num_classes):
    with pytest.raises(ConfigError, match=f"num_classes={num_classes!r} is not allowed; a classifier needs an integer >= 2"):
        lp.create_model("cifar_vgg11", num_classes)


def test_image_size_too_small():
    with pytest.raises(InputSizeError, match="image_size=16 is too small for model 'cifar_vgg16': .*at least 32x32"):
        lp.create_model("cifar_vgg16", 10, image_size=16)
    with pytest.raises(InputSizeError, match="image_size=4 is too small for model 'cifar_resnet18'"):
        lp.create_model("cifar_resnet18", 10, image_size=4)
    lp.create_model("cifar_resnet18", 10, image_size=8)


def test_bad_channels_and_kwargs():
    with pytest.raises(ConfigError, match="in_channels=2 is not allowed; choose one of: 1, 3"):
        lp.create_model("resnet18", 10, in_channels=2)
    with pytest.raises(ConfigError, match="bad keyword arguments for model 'cifar_vgg16'"):
        lp.create_model("cifar_vgg16", 10, depth=3)
    with pytest.raises(ConfigError, match="width_mult=0 is not allowed"):
        lp.create_model("cifar_vgg16", 10, width_mult=0)
