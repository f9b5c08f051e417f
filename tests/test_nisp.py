"""NISP: Inf-FS against a numpy reference and hand cases; the propagation against closed-form
|W|^T products on linear, ReLU, conv + pool + flatten and residual networks; real networks."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import rankdata
from torch import nn

import lightprune as lp
from lightprune.criteria.nisp import NISP, inf_fs, linearized_copy
from lightprune.errors import ConfigError

EXACT = {"rtol": 1e-10, "atol": 1e-12}


def inf_fs_reference(x, alpha=0.5, factor=0.9, spearman=True):
    """Roffo et al. 2015, unsupervised, written out directly in numpy."""
    x = np.asarray(x, dtype=np.float64)
    d = x.shape[1]
    std = x.std(axis=0, ddof=1)
    m = np.maximum.outer(std, std)
    m = m - m.min()
    sigma = m / m.max() if m.max() > 0 else np.zeros_like(m)
    with np.errstate(all="ignore"):
        rho = np.corrcoef(rankdata(x, axis=0) if spearman else x, rowvar=False)
    c = 1.0 - np.abs(np.nan_to_num(rho, nan=0.0))
    a = alpha * sigma + (1 - alpha) * c
    r = factor / np.max(np.abs(np.linalg.eigvals(a)))
    s = np.linalg.inv(np.eye(d) - r * a) - np.eye(d)
    return torch.from_numpy(s.sum(axis=1))


def batches(x, size):
    return [(x[i : i + size], torch.zeros(len(x[i : i + size]), dtype=torch.long)) for i in range(0, len(x), size)]


def nisp(net, x, size=4, **hparams):
    return lp.score(net, NISP(**hparams), batches(x, size), progress=False)


# ---------------------------------------------------------------------------------------------- Inf-FS
def test_inf_fs_hand_cases():
    # equal stds (sigma = 0), Spearman 0.5: A = [[0, .25], [.25, 0]], r A = [[0, .9], [.9, 0]],
    # (I - rA)^-1 1 = 1.9 / 0.19 = 10 per row, minus 1
    x = torch.tensor([[0.0, 0.0], [1.0, 2.0], [2.0, 1.0]])
    torch.testing.assert_close(inf_fs(x), torch.tensor([9.0, 9.0], dtype=torch.float64), **EXACT)
    # stds 1 and 2, perfectly rank-correlated (c = 0): sigma = [[0, 1], [1, 1]], A = sigma / 2,
    # rho(A) = golden / 2, t = r / 2 = 0.9 / golden; (I - tB)^-1 1 = [1, 1 + t] / ((1 - t) - t^2)
    x = torch.tensor([[0.0, 0.0], [1.0, 2.0], [2.0, 4.0]])
    t = 0.9 / ((1 + math.sqrt(5)) / 2)
    det = (1 - t) - t * t
    torch.testing.assert_close(inf_fs(x), torch.tensor([1 / det - 1, (1 + t) / det - 1], dtype=torch.float64), **EXACT)


@pytest.mark.parametrize("alpha,factor,correlation", [(0.5, 0.9, "spearman"), (0.2, 0.5, "spearman"), (0.8, 0.99, "pearson")])
def test_inf_fs_matches_numpy_reference(alpha, factor, correlation):
    g = torch.Generator().manual_seed(1)
    x = torch.relu(torch.randn(12, 6, generator=g)).mul(4).round()  # many ties, like post-ReLU responses
    x[:, 4] = 3.0  # a constant feature: no correlation defined, counted as uncorrelated
    expected = inf_fs_reference(x.numpy(), alpha, factor, spearman=correlation == "spearman")
    got = inf_fs(x, alpha, factor, correlation)
    torch.testing.assert_close(got, expected, **EXACT)
    assert got.dtype == torch.float64
    # rows are exchangeable: the scores do not depend on the order of the images
    torch.testing.assert_close(inf_fs(x[torch.randperm(12, generator=g)], alpha, factor, correlation), got, **EXACT)


def test_inf_fs_errors():
    with pytest.raises(ConfigError, match="at least 2 samples"):
        inf_fs(torch.ones(1, 3))
    with pytest.raises(ConfigError, match=r"must be \(N samples, D features\)"):
        inf_fs(torch.ones(5))
    with pytest.raises(ConfigError, match="NaN or infinite"):
        inf_fs(torch.tensor([[0.0, 1.0], [float("nan"), 2.0]]))
    with pytest.raises(ConfigError, match=r"alpha=1.5 is not allowed; it must be a number in \[0, 1\]"):
        inf_fs(torch.ones(3, 2), alpha=1.5)
    with pytest.raises(ConfigError, match=r"factor=1.0 is not allowed"):
        inf_fs(torch.ones(3, 2), factor=1.0)
    # equal stds (sigma = 0) and alpha = 1: A = 0, every score 0
    assert inf_fs(torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]]), alpha=1.0).tolist() == [0.0, 0.0]


# ------------------------------------------------------------------------------------ propagation
def forward_rows(layers, x):
    h = x
    for m in layers:
        h = m(h)
    return h


@pytest.mark.parametrize("relu", [False, True])
def test_linear_network_closed_form(relu):
    torch.manual_seed(0)
    widths = [6, 5, 4, 3, 2]
    mods = []
    for i in range(4):
        mods.append(nn.Linear(widths[i], widths[i + 1]))
        if relu and i < 3:
            mods.append(nn.ReLU())
    net = nn.Sequential(*mods).double().eval()
    lin = [m for m in net if isinstance(m, nn.Linear)]
    names = [str(i) for i, m in enumerate(net) if isinstance(m, nn.Linear)][:3]
    x = torch.randn(20, 6, dtype=torch.float64)
    with torch.no_grad():
        frl = forward_rows(net[:-1], x)  # the input of the last Linear
    s3 = inf_fs_reference(frl.numpy())
    s2 = lin[2].weight.abs().T.detach() @ s3
    s1 = lin[1].weight.abs().T.detach() @ s2
    got = nisp(net, x)
    assert list(got) == names and got.meta["frl"] == str(len(net) - 1) and got.meta["num_images"] == 20
    for name, expected in zip(names, [s1, s2, s3], strict=True):
        torch.testing.assert_close(got[name], expected, **EXACT)


def conv_net():
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(16, 5), nn.ReLU(), nn.Linear(5, 2),
    ).double()
    with torch.no_grad():  # BatchNorm with real statistics: it must pass scores through all the same
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
        net[1].weight.uniform_(-2, 2)
    return net.eval()


@pytest.mark.parametrize("pooling", ["mean", "sum"])
def test_conv_pool_flatten_closed_form(pooling):
    net = conv_net()
    x = torch.randn(15, 2, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        frl = net[:9](x)
    s7 = inf_fs_reference(frl.numpy())
    flat = net[7].weight.abs().T.detach() @ s7  # (16,) = (4 channels x 2 x 2 positions)
    s4 = flat.view(4, 2, 2).sum(dim=(1, 2))  # flatten: a channel's score is the sum over its positions
    s0 = net[4].weight.abs().sum(dim=(2, 3)).T.detach() @ s4  # conv: |W| summed over kernel positions
    if pooling == "sum":  # the 2x2 sum pool multiplies every upstream score by 4
        s0 = 4 * s0
    got = nisp(net, x, pooling=pooling)
    torch.testing.assert_close(got["7"], s7, **EXACT)
    torch.testing.assert_close(got["4"], s4, **EXACT)
    torch.testing.assert_close(got["0"], s0, **EXACT)


@pytest.mark.parametrize(
    "pool",
    [
        nn.MaxPool2d(3, stride=2, padding=1),  # overlapping windows with padding (ResNet stem)
        nn.MaxPool2d(2, ceil_mode=True),  # a clipped last window
        nn.AvgPool2d(3, stride=2, padding=1),  # count_include_pad=True in the model
        nn.AdaptiveMaxPool2d(2),  # 5 -> 2: uneven, overlapping regions
        nn.AdaptiveAvgPool2d((2, 3)),
    ],
    ids=repr,
)
def test_any_pooling_passes_channel_scores_through(pool):
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), pool, nn.Flatten(), nn.LazyLinear(4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(10, 2, 5, 5)
    net(x)  # materialise the lazy layer
    net = net.double().eval()
    x = x.double()
    with torch.no_grad():
        frl = net[:6](x)
    s4 = inf_fs_reference(frl.numpy())
    s0 = (net[4].weight.abs().T.detach() @ s4).view(3, -1).sum(dim=1)
    got = nisp(net, x)
    torch.testing.assert_close(got["4"], s4, **EXACT)
    torch.testing.assert_close(got["0"], s0, **EXACT)


class TinyResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 3, 1)
        self.a = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(3, 4)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x):
        h = self.relu(self.stem(x))
        y = self.bn(self.a(h))
        y.mul_(0.5)  # a scaled branch, in place: the score read at `a` must include the 0.5
        y += h  # residual addition (in place, as torchvision's blocks do)
        y = self.pool(self.relu(y)).flatten(1)
        return self.fc2(self.relu(self.fc1(y)))


def test_residual_additions_add():
    torch.manual_seed(2)
    net = TinyResidual().double().eval()
    x = torch.randn(12, 2, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        y = net.relu(0.5 * net.bn(net.a(net.relu(net.stem(x)))) + net.relu(net.stem(x)))
        frl = net.relu(net.fc1(net.pool(y).flatten(1)))
    s_fc1 = inf_fs_reference(frl.numpy())
    s_y = net.fc1.weight.abs().T.detach() @ s_fc1  # through flatten of a 1x1 map and the global pool
    s_a = 0.5 * s_y
    s_stem = s_y + net.a.weight.abs().sum(dim=(2, 3)).T.detach() @ s_a  # shortcut + main branch
    got = nisp(net, x)
    assert list(got) == ["stem", "a", "fc1"]
    torch.testing.assert_close(got["fc1"], s_fc1, **EXACT)
    torch.testing.assert_close(got["a"], s_a, **EXACT)
    torch.testing.assert_close(got["stem"], s_stem, **EXACT)


def test_scores_do_not_depend_on_batch_size_or_precision():
    net = conv_net()
    x = torch.randn(13, 2, 4, 4, dtype=torch.float64)
    ref = nisp(net, x, size=13)
    for size in (1, 2, 5):
        other = nisp(net, x, size=size)
        for k in ref:
            torch.testing.assert_close(other[k], ref[k], **EXACT)
    model_dtype = nisp(net, x, size=5, precision="model")  # the net is float64 already
    for k in ref:
        torch.testing.assert_close(model_dtype[k], ref[k], **EXACT)


def test_linearized_copy_leaves_the_model_alone():
    net = conv_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    lin = linearized_copy(net)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert isinstance(net[1], nn.BatchNorm2d) and isinstance(net[3], nn.MaxPool2d)
    kinds = [type(m).__name__ for m in lin]
    assert kinds == ["Conv2d", "Identity", "Identity", "_LinearPool", "Conv2d", "Identity", "Flatten", "Linear", "Identity", "Linear"]
    assert torch.equal(lin[0].weight, net[0].weight.abs()) and not lin[0].bias.any()
    assert lin[0].padding_mode == "circular" and net[0].padding_mode == "zeros"


# ----------------------------------------------------------------------------------- real networks
@pytest.mark.parametrize("name,kw", [("cifar_vgg16", {"width_mult": 0.25}), ("cifar_resnet18", {})])
def test_real_networks(name, kw):
    torch.manual_seed(0)
    net = lp.create_model(name, 10, **kw)  # training mode, float32
    assert net.training
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(6, 3, 32, 32)
    s = nisp(net, x, size=3)
    layers = lp.collect.find_prunable_layers(net, x[:2])
    assert list(s) == list(layers)
    for layer_name, v in s.items():
        assert v.shape == (layers[layer_name].out_channels,) and v.dtype == torch.float64
        assert torch.isfinite(v).all() and (v > 0).all(), layer_name
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert net.training and all(p.grad is None for p in net.parameters())
    if name == "cifar_vgg16":
        assert s.meta["frl"] == "classifier.2" and s.meta["frl_width"] == 128
        other = nisp(net, x, size=2)  # a float32 model still scores independently of the batch size
        for k in s:
            torch.testing.assert_close(other[k], s[k], rtol=1e-9, atol=0)
    else:  # both convs feeding the same addition get the same scores
        torch.testing.assert_close(s["layer2.0.conv2"], s["layer2.0.downsample.0"], rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "hparams,match",
    [
        ({"alpha": 1.5}, r"alpha=1.5 is not allowed"),
        ({"alpha": True}, r"alpha=True is not allowed"),
        ({"factor": 0}, r"factor=0 is not allowed; it must be a number in \(0, 1\)"),
        ({"correlation": "kendall"}, r"correlation='kendall' is not allowed; choose one of: spearman, pearson"),
        ({"pooling": "max"}, r"pooling='max' is not allowed; choose one of: mean, sum"),
        ({"precision": "half"}, r"precision='half' is not allowed"),
        ({"frl": 3}, r"frl=3 is not allowed"),
        ({"frl": ""}, r"frl='' is not allowed"),
    ],
)
def test_bad_hyperparameters(hparams, match):
    with pytest.raises(ConfigError, match=match):
        lp.create_criterion("nisp", **hparams)


def test_bad_inputs():
    net = conv_net()
    x = torch.randn(6, 2, 4, 4, dtype=torch.float64)
    layers = lp.collect.find_prunable_layers(net, x[:2])
    with pytest.raises(ConfigError, match="criterion 'nisp' needs a scoring set"):
        lp.score(net, "nisp")
    with pytest.raises(ConfigError, match="needs a scoring set"):
        NISP().score(net, layers, None)
    with pytest.raises(ConfigError, match="holds no image"):
        NISP().score(net, layers, [])
    with pytest.raises(ConfigError, match="at least 2 samples"):
        nisp(net, x[:1])
    with pytest.raises(ConfigError, match="frl='nope' is not a module of the model"):
        nisp(net, x, frl="nope")
    with pytest.raises(ConfigError, match=r"layers \['7'\] do not feed the FRL '5'"):
        nisp(net, x, frl="5")
    s = lp.score(net, NISP(frl="5"), batches(x, 3), layers=["0", "4"], progress=False)  # a conv FRL
    assert s.meta["frl_width"] == 16 and all(torch.isfinite(v).all() for v in s.values())
    wide = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match="'0' has 9216 features per image; Inf-FS supports at most 8192"):
        nisp(wide, torch.randn(3, 1, 48, 48), frl="0")


def test_models_it_cannot_handle():
    no_linear = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    x = torch.randn(4, 1, 6, 6)
    with pytest.raises(ConfigError, match="ran no nn.Linear layer; name the FRL module with frl="):
        nisp(no_linear, x)
    for pool, match in [(nn.LPPool2d(2, 2), "cannot pass scores through LPPool2d"), (nn.MaxPool2d(2, dilation=2), "dilated pooling")]:
        net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), pool, nn.Flatten(), nn.LazyLinear(4), nn.ReLU(), nn.Linear(4, 2))
        net(x)  # materialise the lazy layer
        with pytest.raises(ConfigError, match=match):
            nisp(net, x)
