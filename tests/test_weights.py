"""Weight-only criteria: hand-computed cases, AFIE's bound and scale invariance."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lightprune as lp
from lightprune.criteria.weights import afie_upper_bound, afie_value
from lightprune.errors import ConfigError


def net_with(weight: torch.Tensor) -> nn.Module:
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2], bias=False)
    with torch.no_grad():
        conv.weight.copy_(weight)
    return nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))


def test_l1_hand_case():
    w = torch.tensor([[[[1.0, -2.0], [0.0, 0.5]]], [[[0.0, 0.0], [0.0, -0.25]]], [[[3.0, 3.0], [-3.0, 3.0]]]])
    s = lp.score(net_with(w), "l1")
    assert s["0"].tolist() == [3.5, 0.25, 12.0]
    assert s["0"].dtype == torch.float64 and s.criterion == "l1"


def test_fpgm_hand_case():
    # three 1x1 filters with values 0, 1, 3: g = [1 + 3, 1 + 2, 3 + 2]
    w = torch.tensor([0.0, 1.0, 3.0]).view(3, 1, 1, 1)
    assert lp.score(net_with(w), "fpgm")["0"].tolist() == [4.0, 3.0, 5.0]
    # 2-D filters: distances are Euclidean over the flattened filter
    w = torch.tensor([[0.0, 0.0], [3.0, 4.0]]).view(2, 2, 1, 1)
    assert lp.score(net_with(w), "fpgm")["0"].tolist() == [5.0, 5.0]


def test_afie_step_by_step():
    # kernel average M = diag(3, 1): a 2x2 kernel whose four positions average to it
    m = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    w = m.view(2, 2, 1, 1).repeat(1, 1, 2, 2).clone()
    w[:, :, 0, 0] += 1.0
    w[:, :, 1, 1] -= 1.0  # the mean over H x W is still M
    s_norm = torch.tensor([1.0, 0.0])  # singular values (3, 1) min-max normalised
    p = torch.softmax(s_norm.double(), 0)
    k = -(p * p.log()).sum().item()
    assert math.isclose(afie_value(w), k / 2, rel_tol=1e-14)
    # equal singular values: s_norm = 0, p uniform, K = log p
    eye = torch.eye(3).view(3, 3, 1, 1)
    assert math.isclose(afie_value(eye), math.log(3) / 3, rel_tol=1e-14)
    scores = lp.score(net_with(w), "afie")
    assert math.isclose(scores.layer_scores["0"], k / 2, rel_tol=1e-14)
    torch.testing.assert_close(scores["0"], lp.score(net_with(w), "l1")["0"])  # intra-layer: L1 by default


@settings(max_examples=60, deadline=None)
@given(
    out_c=st.integers(1, 12),
    in_c=st.integers(1, 12),
    k=st.sampled_from([1, 3]),
    scale=st.floats(1e-3, 1e3),
    seed=st.integers(0, 10_000),
)
def test_afie_bound_and_scale_invariance(out_c, in_c, k, scale, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_c, in_c, k, k, generator=g, dtype=torch.float64)
    value = afie_value(w)
    assert value <= afie_upper_bound(w) + 1e-15
    assert math.isclose(afie_value(w * scale), value, rel_tol=1e-9, abs_tol=1e-15)


def test_afie_intra_random_and_bad_option():
    w = torch.randn(4, 2, 3, 3)
    a = lp.score(net_with(w), "afie", intra="random", seed=1)
    b = lp.score(net_with(w), "random", seed=1)
    assert torch.equal(a["0"], b["0"])
    with pytest.raises(ConfigError, match="intra='median' is not allowed; choose one of: l1, random"):
        lp.create_criterion("afie", intra="median")


def test_random_is_seeded():
    net = lp.create_model("cifar_vgg11", 10, width_mult=0.25)
    a, b, c = lp.score(net, "random", seed=0), lp.score(net, "random", seed=0), lp.score(net, "random", seed=1)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not torch.equal(a["features.0"], c["features.0"])
    only = lp.score(net, "random", seed=0, layers=["features.4"])
    assert torch.equal(only["features.4"], a["features.4"])  # independent of which layers are scored
    with pytest.raises(ConfigError, match="seed=-1 is not allowed"):
        lp.create_criterion("random", seed=-1)


def test_linear_layers_are_scored_by_rows():
    net = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -1.0, 2.0], [0.5, 0.0, 0.0]]))
    s = lp.score(net, "l1")
    assert list(s) == ["0"] and s["0"].tolist() == [4.0, 0.5]
