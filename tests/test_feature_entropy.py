"""The feature_entropy criterion: against a plain-loop reference built on giotto-tda birth indices,
exact rescaling invariance, orientation, variants and errors."""

import math
import warnings

import pytest
import torch
from torch import nn

import lightprune as lp
from lightprune.collect import capture_activations, find_prunable_layers
from lightprune.errors import ConfigError
from lightprune.topology import betti_curves, giotto_birth_times


def conv_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.ReLU(),
        nn.Conv2d(4, 5, 3, padding=1, bias=False), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3),
    ).eval()


def data(n=24, size=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=g), torch.arange(n) % 3


def reference_importance(net, x, y, layer, p=0.1, values=None):
    """Plain loops: giotto-tda birth indices per image and unit (or ``values(maps)``: any
    characterisation, 0 / -1 = none), CRITERIA.md steps 5-6 by hand."""
    layers = find_prunable_layers(net, x[:1], [layer])
    maps = {}
    with torch.no_grad(), capture_activations(net, layers, lambda n, a: maps.__setitem__(n, a.clone())):
        net(x)
    if values is None:
        births, ambiguous = giotto_birth_times(maps[layer].double())
        assert not ambiguous.any()
    else:
        births = values(maps[layer].double())
    n_units = births.shape[1]
    out = []
    for u in range(n_units):
        per_class = []
        for c in sorted(set(y.tolist())):
            b = [int(births[i, u]) for i in range(len(y)) if int(y[i]) == c]
            n = len(b)
            with_birth = [v for v in b if v > 0]
            eps = len(with_birth) / n
            if eps < p:
                h = (1 - eps) * math.log(n)
            else:
                h = 0.0
                for v in set(with_birth):
                    q = with_birth.count(v) / len(with_birth)
                    h -= q * math.log(q)
            per_class.append(h / max(eps, 1 / n))
        out.append(-sum(per_class) / len(per_class))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("layer", ["0", "2"])
def test_matches_plain_loop_reference_on_giotto_births(layer):
    net = conv_net()
    x, y = data()
    s = lp.score(net, "feature_entropy", [(x[:10], y[:10]), (x[10:], y[10:])], num_classes=3, progress=False)
    torch.testing.assert_close(s[layer], reference_importance(net, x, y, layer), rtol=1e-12, atol=1e-12)


def test_giotto_method_gives_the_same_scores():
    net = conv_net()
    x, y = data(n=12)
    a = lp.score(net, "feature_entropy", [(x, y)], progress=False)
    b = lp.score(net, "feature_entropy", [(x, y)], method="giotto", progress=False)
    for k in a:
        assert torch.equal(a[k], b[k])


@pytest.mark.parametrize("factor", [0.5, 3.0, 1e-3])
def test_exactly_invariant_to_rescaling_inputs_and_filters(factor):
    """No biases, ReLU: scaling the input or a layer's filters scales every later map, and the birth
    index depends only on the order of values: the scores are identical, bit for bit."""
    net = conv_net()
    x, y = data()
    base = lp.score(net, "feature_entropy", [(x, y)], progress=False)
    scaled_input = lp.score(net, "feature_entropy", [(x * factor, y)], progress=False)
    with torch.no_grad():
        net[0].weight.mul_(factor)
    scaled_filters = lp.score(net, "feature_entropy", [(x, y)], progress=False)
    for k in base:
        assert torch.equal(base[k], scaled_input[k])
        assert torch.equal(base[k], scaled_filters[k])


def test_dead_channel_gets_the_minimum_possible_importance():
    net = conv_net()
    with torch.no_grad():
        net[0].weight[2].zero_()  # a constant (all-zero) map never has a birth
    x, y = data(n=30)
    s = lp.score(net, "feature_entropy", [(x, y)], progress=False)["0"]
    n = 10  # images per class: eps = 0 -> H = log N, score = H / (1/N) = N log N
    assert s[2].item() == pytest.approx(-n * math.log(n), rel=1e-12)
    assert s[2] == s.min()


def test_linear_and_small_maps_warn_that_they_cannot_be_ranked():
    net = conv_net()
    x, y = data(size=2)
    with pytest.warns(UserWarning, match=r"feature_entropy gives every channel the same score in \['0', '2'\]"):
        lp.score(net, "feature_entropy", [(x, y)], progress=False)


def test_betti_variants_run_and_differ_from_birth():
    net = conv_net()
    x, y = data(n=9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mx = lp.score(net, "feature_entropy", [(x, y)], variant="betti_max", progress=False)
        it = lp.score(net, "feature_entropy", [(x, y)], variant="betti_integral", axis="weight", levels=10,
                      progress=False)
    for s in (mx, it):
        assert all(torch.isfinite(v).all() and v.shape == (net[0].out_channels if k == "0" else 5,) for k, v in s.items())


@pytest.mark.parametrize("variant,reduce", [("betti_max", "amax"), ("betti_integral", "sum")])
def test_betti_variants_on_the_index_axis_match_a_direct_computation(variant, reduce):
    # the default axis is the paper's index axis: the value of a unit map is max_v or sum_v of
    # beta_1(v) (lightprune.topology.betti_curves), used as is (no levels)
    net = conv_net()
    x, y = data(n=9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = lp.score(net, "feature_entropy", [(x, y)], variant=variant, layers=["2"], progress=False)["2"]
    expected = reference_importance(net, x, y, "2", values=lambda maps: getattr(betti_curves(maps), reduce)(-1))
    torch.testing.assert_close(got.double(), expected, rtol=1e-12, atol=1e-12)
    births = reference_importance(net, x, y, "2")
    assert not torch.equal(expected, births)  # a different characterisation than the birth index


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"p": 1.5}, r"p=1.5 is not allowed; it must be a number in \[0, 1\]"),
        ({"variant": "persistence"}, "variant='persistence' is not allowed; choose one of: birth, betti_max, betti_integral"),
        ({"method": "cuda"}, "method='cuda' is not allowed"),
        ({"levels": 0, "variant": "betti_integral", "axis": "weight"}, "levels=0 is not allowed"),
        ({"levels": 10, "variant": "betti_integral"}, r"levels=10 is not allowed with variant='betti_integral', "
         r"axis='index'; levels quantise only the weight-axis integral"),
        ({"axis": "t"}, r"axis='t' is not allowed; choose one of: index, weight"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        lp.create_criterion("feature_entropy", **kwargs)


def test_non_square_maps_are_refused():
    net = conv_net()
    x = torch.rand(6, 1, 5, 7)
    with pytest.raises(ConfigError, match="feature_entropy needs square maps; got 5x7"):
        lp.score(net, "feature_entropy", [(x, torch.arange(6) % 3)], progress=False)


def test_all_classes_at_once_equals_per_class_scores():
    """The criterion's one-pass computation == feature_entropy_score class by class (CRITERIA.md 5-6)."""
    from lightprune.criteria.topology import _feature_entropy_importance
    from lightprune.topology import feature_entropy_score

    g = torch.Generator().manual_seed(0)
    for trial in range(100):
        n, units = int(torch.randint(1, 60, (1,), generator=g)), int(torch.randint(1, 12, (1,), generator=g))
        births = torch.randint(1, int(torch.randint(2, 30, (1,), generator=g)), (n, units), generator=g)
        births[torch.rand(n, units, generator=g) < torch.rand(1, generator=g)] = -1
        labels = torch.randint(0, 4, (n,), generator=g) * 3  # sparse class ids
        p = 0.0 if trial % 3 == 0 else float(torch.rand(1, generator=g))
        per_class = [feature_entropy_score(births[labels == c], p=p) for c in torch.unique(labels).tolist()]
        expected = -torch.stack(per_class).mean(0)
        got = _feature_entropy_importance(births.to(torch.int32), labels, p)
        assert got.dtype == torch.float64 and got.shape == (units,)
        torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-13)
