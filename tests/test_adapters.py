"""torch-pruning adapters: bn_scale equals |gamma| (and torch-pruning's group mean on residual groups);
taylor equals torch-pruning 1.6.1's formula computed by hand from the mean cross-entropy gradient."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightprune as lp
from lightprune.criteria.adapters import BNScale, Taylor
from lightprune.errors import ConfigError


def vgg():
    torch.manual_seed(0)
    net = lp.create_model("cifar_vgg16", 10, width_mult=0.25)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(-1, 1)  # signed, uneven gammas
    return net


def conv_names(net):
    return [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]


def labelled(n=12, size=32, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.arange(n) % classes


def batches(x, y, size):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def test_bn_scale_is_abs_gamma_on_vgg():
    net = vgg()
    convs = conv_names(net)
    s = lp.score(net, "bn_scale", layers=convs, progress=False)
    assert list(s) == convs
    for name in convs:
        idx = int(name.split(".")[1])
        bn = net.features[idx + 1]
        assert isinstance(bn, nn.BatchNorm2d)
        assert s[name].dtype == torch.float64 and s[name].shape == (bn.num_features,)
        assert torch.equal(s[name], bn.weight.detach().abs().double()), name
    # torch-pruning's own default normaliser divides by the mean
    s_mean = lp.score(net, BNScale(normalizer="mean"), layers=convs[:2], progress=False)
    gamma = net.features[1].weight.detach().abs().double()
    torch.testing.assert_close(s_mean[convs[0]], gamma / gamma.mean(), rtol=1e-6, atol=0)


def test_bn_scale_residual_groups_are_the_group_mean():
    torch.manual_seed(0)
    net = lp.create_model("cifar_resnet18", 10)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(-1, 1)
    names = ["layer1.0.conv1", "layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2"]
    s = lp.score(net, "bn_scale", layers=names, progress=False)
    g = {n: net.get_submodule(n).weight.detach().abs().double() for n in ["layer1.0.bn1", "layer2.0.bn2", "layer2.0.downsample.1", "layer2.1.bn2"]}
    assert torch.equal(s["layer1.0.conv1"], g["layer1.0.bn1"])  # an inner conv: its own BatchNorm
    group_mean = (g["layer2.0.bn2"] + g["layer2.0.downsample.1"] + g["layer2.1.bn2"]) / 3
    for name in names[1:]:  # every conv of the residual group: the same mean over the group's BatchNorms
        torch.testing.assert_close(s[name], group_mean, rtol=1e-6, atol=0)


def test_bn_scale_example_input_without_data():
    # 8x8 inputs only (a fixed Flatten -> Linear): the size is found among the trial sizes
    net = nn.Sequential(
        nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(5 * 4 * 4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2),
    ).eval()
    s = lp.score(net, "bn_scale", progress=False)
    assert torch.equal(s["0"], net[1].weight.detach().abs().double())
    assert torch.equal(s["5"], net[6].weight.detach().abs().double())
    assert torch.equal(lp.score(net, BNScale(input_size=8), progress=False)["0"], s["0"])
    assert torch.equal(lp.score(net, BNScale(input_size=(3, 8, 8)), progress=False)["0"], s["0"])
    with pytest.raises(ConfigError, match=r"could not run the model on a \(2, 3, s, s\) input for s in \[5\]"):
        lp.score(net, BNScale(input_size=5), progress=False)


def test_bn_scale_refuses_layers_without_batchnorm():
    net = vgg()
    with pytest.raises(ConfigError, match=r"\['classifier.0'\] have none.*pass layers= without them"):
        lp.score(net, "bn_scale", progress=False)
    no_bn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match=r"bn_scale needs a BatchNorm .*\['0', '2'\] have none"):
        lp.score(no_bn, "bn_scale", progress=False)


def test_taylor_on_vgg_shapes_and_model_untouched():
    net = vgg()  # training mode
    x, y = labelled()
    net.features[0].weight.grad = torch.full_like(net.features[0].weight, 7.0)
    old_grad = net.features[0].weight.grad
    net.classifier[2].bias.requires_grad_(False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    s = lp.score(net, "taylor", batches(x, y, 4), num_classes=10, progress=False)
    layers = lp.collect.find_prunable_layers(net, x[:2])
    assert list(s) == list(layers) and s.meta["num_images"] == 12
    for name, v in s.items():
        assert v.shape == (layers[name].out_channels,) and v.dtype == torch.float64 and torch.isfinite(v).all()
        assert (v >= 0).all() and v.sum() > 0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # BatchNorm statistics too
    assert net.training
    assert net.features[0].weight.grad is old_grad and (old_grad == 7.0).all()
    assert all(p.grad is None for n, p in net.named_parameters() if n != "features.0.weight")
    assert not net.classifier[2].bias.requires_grad and net.classifier[2].weight.requires_grad


def tiny():
    torch.manual_seed(4)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3),
    ).eval()


def hand_taylor(net, x, y):
    """torch-pruning 1.6.1 GroupTaylorImportance, written out: per channel c of a layer, the layer's
    own filter term sum |W[c] * G[c]| and each consumer's input-channel term sum |W[:, c] * G[:, c]|
    (BatchNorm members are skipped by 1.6.1), G the gradient of the mean cross-entropy."""
    ref = tiny().double()
    ref.load_state_dict(net.state_dict())
    F.cross_entropy(ref(x.double()), y).backward()

    def own(m):
        return (m.weight * m.weight.grad).abs().flatten(1).sum(1).detach()

    def consumer(m):
        return (m.weight * m.weight.grad).abs().transpose(0, 1).flatten(1).sum(1).detach()

    return {"0": (own(ref[0]), consumer(ref[3])), "3": (own(ref[3]), consumer(ref[8])), "8": (own(ref[8]), consumer(ref[10]))}


@pytest.mark.parametrize("reduction", ["mean", "sum", "first"])
def test_taylor_matches_hand_computation(reduction):
    net = tiny()
    x, y = labelled(n=10, size=6, classes=3)
    expected = hand_taylor(net, x, y)
    for size in (10, 3):  # the mean gradient over the scoring set: batch size does not matter
        s = lp.score(net, Taylor(group_reduction=reduction, precision="float64"), batches(x, y, size), progress=False)
        for name, (own, cons) in expected.items():
            want = {"mean": (own + cons) / 2, "sum": own + cons, "first": own}[reduction]
            torch.testing.assert_close(s[name], want, rtol=1e-6, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


def test_taylor_options():
    net = tiny()
    x, y = labelled(n=10, size=6, classes=3)
    raw = lp.score(net, Taylor(precision="float64"), batches(x, y, 5), progress=False)
    mean_norm = lp.score(net, Taylor(normalizer="mean", precision="float64"), batches(x, y, 5), progress=False)
    torch.testing.assert_close(mean_norm["0"], raw["0"] / raw["0"].mean(), rtol=1e-6, atol=0)
    fast = lp.score(net, Taylor(precision="model"), batches(x, y, 5), progress=False)
    torch.testing.assert_close(fast["3"], raw["3"], rtol=1e-4, atol=1e-9)  # float32 gradients


@pytest.mark.parametrize(
    "factory,match",
    [
        (lambda: Taylor(group_reduction="median"), r"group_reduction='median' is not allowed; choose one of: mean, sum"),
        (lambda: Taylor(normalizer="l2"), r"normalizer='l2' is not allowed"),
        (lambda: Taylor(precision="half"), r"precision='half' is not allowed"),
        (lambda: Taylor(multivariable=1), r"multivariable=1 is not allowed"),
        (lambda: BNScale(input_size=-3), r"input_size=-3 is not allowed"),
        (lambda: BNScale(input_size=(3, "a")), r"input_size=\(3, 'a'\) is not allowed"),
        (lambda: lp.create_criterion("bn_scale", p=2), r"bad hyperparameters for criterion 'bn_scale'"),
    ],
)
def test_bad_hyperparameters(factory, match):
    with pytest.raises(ConfigError, match=match):
        factory()


def test_taylor_bad_inputs():
    net = tiny()
    x, y = labelled(n=6, size=6, classes=3)
    layers = lp.collect.find_prunable_layers(net, x[:2])
    with pytest.raises(ConfigError, match="criterion 'taylor' needs a scoring set"):
        lp.score(net, "taylor")
    with pytest.raises(ConfigError, match="criterion 'taylor' needs a scoring set"):
        Taylor().score(net, layers, None)
    with pytest.raises(ConfigError, match="holds no image"):
        Taylor().score(net, layers, [])
    with pytest.raises(ConfigError, match=r"each scoring batch must be \(inputs, labels\); got Tensor"):
        Taylor().score(net, layers, [x])
    with pytest.raises(ConfigError, match=r"labels must lie in \[0, 3\)"):
        Taylor().score(net, layers, [(x, y + 5)])
