"""Where the post-activation output of each prunable layer is captured, checked against the
network's own modules computed by hand, on VGG, ResNet, MobileNetV2 and DenseNet."""

import pytest
import torch
from torch import nn

import lightprune as lp
from lightprune.collect import all_finite, capture_activations, find_prunable_layers
from lightprune.errors import ConfigError


def captured(model, layers, x):
    out = {}

    def fn(name, act):
        assert name not in out, f"{name} captured twice in one forward"
        out[name] = act.clone()

    model.eval()
    with torch.no_grad(), capture_activations(model, layers, fn):
        model(x)
    return out


def test_cifar_vgg16_captures_relu_outputs():
    model = lp.create_model("cifar_vgg16", 10, width_mult=0.25).eval()
    x = torch.randn(3, 3, 32, 32)
    layers = find_prunable_layers(model, x[:1])
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert list(layers) == convs + ["classifier.0"]  # 13 convs + hidden Linear; final Linear excluded
    acts = captured(model, layers, x)
    with torch.no_grad():
        for name in convs:
            k = int(name.split(".")[1])
            expected = model.features[: k + 3](x)  # conv, bn, relu
            assert layers[name].chain == ("Conv2d", "BatchNorm2d", "ReLU")
            torch.testing.assert_close(acts[name], expected, rtol=0, atol=0)
        hidden = torch.relu(model.classifier[0](torch.flatten(model.avgpool(model.features(x)), 1)))
        torch.testing.assert_close(acts["classifier.0"], hidden, rtol=0, atol=0)


def test_torchvision_vgg16_captures_relu_and_hidden_linears():
    model = lp.create_model("vgg16", 10).eval()
    layers = find_prunable_layers(model, torch.zeros(1, 3, 32, 32))
    assert len(layers) == 13 + 2
    assert layers["features.0"].capture == "features.1" and layers["features.0"].chain == ("Conv2d", "ReLU")
    assert layers["classifier.0"].capture == "classifier.1" and layers["classifier.3"].capture == "classifier.4"
    assert "classifier.6" not in layers


def test_resnet18_residual_capture_is_block_output():
    model = lp.create_model("cifar_resnet18", 10).eval()
    x = torch.randn(2, 3, 32, 32)
    layers = find_prunable_layers(model, x[:1])
    assert len(layers) == 20  # stem + 16 block convs + 3 downsample convs; fc excluded
    acts = captured(model, layers, x)
    with torch.no_grad():
        stem = model.relu(model.bn1(model.conv1(x)))
        torch.testing.assert_close(acts["conv1"], stem, rtol=0, atol=0)
        b = model.layer1[0]
        torch.testing.assert_close(acts["layer1.0.conv1"], b.relu(b.bn1(b.conv1(stem))), rtol=0, atol=0)
        block_out = b(stem)
        torch.testing.assert_close(acts["layer1.0.conv2"], block_out, rtol=0, atol=0)
        assert layers["layer1.0.conv2"].capture == "layer1.0.relu" and layers["layer1.0.conv2"].capture_call == 1
        l1 = model.layer1(stem)
        b2 = model.layer2[0]
        torch.testing.assert_close(acts["layer2.0.downsample.0"], b2.downsample(l1), rtol=0, atol=0)
        assert layers["layer2.0.downsample.0"].chain == ("Conv2d", "BatchNorm2d")
        torch.testing.assert_close(acts["layer2.0.conv2"], b2(l1), rtol=0, atol=0)


def test_resnet50_bottleneck_third_relu_call():
    model = lp.create_model("resnet50", 10).eval()
    layers = find_prunable_layers(model, torch.zeros(1, 3, 64, 64))
    assert len(layers) == 53
    assert [layers[f"layer1.0.conv{i}"].capture_call for i in (1, 2, 3)] == [0, 1, 2]


def test_mobilenet_v2_expansion_projection_and_depthwise():
    model = lp.create_model("mobilenet_v2", 10).eval()
    x = torch.randn(2, 3, 32, 32)
    layers = find_prunable_layers(model, x[:1])
    assert not any(m.module.groups > 1 for m in layers.values())  # depthwise convs are not scored alone
    assert "features.2.conv.1.0" not in layers  # the depthwise conv of block 2
    acts = captured(model, layers, x)
    with torch.no_grad():
        h = model.features[:2](x)
        blk = model.features[2]
        torch.testing.assert_close(acts["features.2.conv.0.0"], blk.conv[0](h), rtol=0, atol=0)  # ReLU6 output
        assert layers["features.2.conv.0.0"].chain == ("Conv2d", "BatchNorm2d", "ReLU6")
        torch.testing.assert_close(acts["features.2.conv.2"], blk.conv(h), rtol=0, atol=0)  # linear bottleneck
        assert layers["features.2.conv.2"].chain == ("Conv2d", "BatchNorm2d")


def test_densenet_preactivation_captures_conv_output():
    model = lp.create_model("densenet121", 10).eval()
    layers = find_prunable_layers(model, torch.zeros(1, 3, 32, 32))
    assert layers["features.denseblock1.denselayer1.conv2"].chain == ("Conv2d",)
    assert layers["features.denseblock1.denselayer1.conv1"].chain == ("Conv2d", "BatchNorm2d", "ReLU")


def test_capture_resets_between_forwards_and_hooks_are_removed():
    model = lp.create_model("cifar_resnet18", 10).eval()
    layers = find_prunable_layers(model, torch.zeros(1, 3, 32, 32), layers=["layer1.0.conv2"])
    seen = []
    with torch.no_grad(), capture_activations(model, layers, lambda n, a: seen.append(n)):
        model(torch.zeros(1, 3, 32, 32))
        model(torch.zeros(1, 3, 32, 32))
    assert seen == ["layer1.0.conv2", "layer1.0.conv2"]
    model(torch.zeros(1, 3, 32, 32))
    assert len(seen) == 2


def test_without_example_inputs_uses_registration_order():
    model = lp.create_model("cifar_vgg11", 10, width_mult=0.25)
    layers = find_prunable_layers(model)
    assert "classifier.2" not in layers and "classifier.0" in layers
    assert all(layer.capture == layer.name for layer in layers.values())


def test_bad_layer_names():
    model = lp.create_model("cifar_vgg11", 10, width_mult=0.25)
    with pytest.raises(ConfigError, match="layers contains 'nope', which is not a module"):
        find_prunable_layers(model, layers=["nope"])
    with pytest.raises(ConfigError, match="layers contains 'classifier.2', which is the final classifier"):
        find_prunable_layers(model, layers=["classifier.2"])
    with pytest.raises(ConfigError, match="layers contains 'features.1', which is a BatchNorm2d, not a prunable"):
        find_prunable_layers(model, layers=["features.1"])


def test_all_finite_finds_every_nan_and_inf_and_tolerates_sum_overflow():
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        x = torch.rand(3, 4, 5, 5).to(dtype)
        assert all_finite(x)
        for bad in (float("nan"), float("inf"), -float("inf")):
            for pos in (0, 7, x.numel() - 1):
                y = x.clone()
                y.view(-1)[pos] = bad
                assert not all_finite(y), (dtype, bad, pos)
        y = x.clone()
        y.view(-1)[1], y.view(-1)[2] = float("inf"), -float("inf")  # the sum is NaN
        assert not all_finite(y)
        big = torch.full((4, 4), torch.finfo(dtype).max, dtype=dtype)  # finite; its sum overflows
        assert all_finite(big) and not bool(torch.isfinite(big.double().sum().to(dtype)))
    assert all_finite(torch.empty(0)) and all_finite(torch.arange(5))
