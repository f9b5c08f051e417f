"""The same checks for every registered criterion (parametrized over the registry)."""

import json

import pytest
import torch
from torch import nn

import lightprune as lp
from lightprune.errors import ConfigError, UnknownNameError

EXPECTED = {
    "l1", "fpgm", "afie", "apoz", "class_selectivity", "entropy", "mutual_information",
    "kl_selectivity", "labeled_mi", "nisp", "random", "taylor", "bn_scale", "feature_entropy",
}


def tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(),
        nn.Conv2d(5, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 4 * 4, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 3),
    ).double().eval()  # float64: batch-size independence is then exact to 1e-9 for every criterion


def data(n=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64), torch.arange(n) % 3


def test_registry_names():
    assert EXPECTED <= set(lp.list_criteria())
    with pytest.raises(UnknownNameError, match="Unknown criterion 'l2'. Known criteria: .*fpgm.*l1"):
        lp.create_criterion("l2")
    with pytest.raises(ConfigError, match="bad hyperparameters for criterion 'l1'"):
        lp.create_criterion("l1", alpha=3)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_criterion_scores_every_layer(name):
    net = tiny_net()
    x, y = data()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    crit = lp.create_criterion(name)
    batches = [(x[i : i + 10], y[i : i + 10]) for i in range(0, 30, 10)] if crit.needs_data else None
    s = lp.score(net, crit, batches, num_classes=3, progress=False)
    assert list(s) == ["0", "3", "8"]
    assert [s[k].numel() for k in s] == [5, 6, 7]
    for v in s.values():
        assert v.dtype == torch.float64 and torch.isfinite(v).all()
    assert s.criterion == name
    # plain-data round trip through JSON
    back = lp.Scores.from_dict(json.loads(json.dumps(s.to_dict())))
    assert all(torch.equal(back[k], s[k]) for k in s) and back.layer_scores == s.layer_scores
    # the user's model is untouched (weights, buffers, mode)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not net.training
    if crit.needs_data:  # batch size does not change the scores
        other = lp.score(net, name, [(x[i : i + 4], y[i : i + 4]) for i in range(0, 30, 4)], num_classes=3, progress=False)
        for k in s:
            torch.testing.assert_close(other[k], s[k], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", sorted(n for n in EXPECTED if lp.create_criterion(n).needs_data))
def test_data_criteria_need_data(name):
    with pytest.raises(ConfigError, match=f"criterion '{name}' needs a scoring set"):
        lp.score(tiny_net(), name)


def test_score_accepts_a_datamodule_and_draws_a_balanced_set(digits_dm):
    net = lp.create_model("cifar_vgg11", 10, width_mult=0.25)
    s = lp.score(net, "apoz", digits_dm, samples_per_class=5, classes=[0, 1], progress=False)
    assert s.meta["num_images"] == 10


def test_scores_errors():
    with pytest.raises(ConfigError, match=r"scores\['a'\] must be 1-D"):
        lp.Scores({"a": torch.zeros(2, 2)}, "l1")
    with pytest.raises(ConfigError, match="missing key 'scores'"):
        lp.Scores.from_dict({"criterion": "l1"})
    with pytest.raises(ConfigError, match="hyperparameters \\['seed'\\] given with a Criterion instance"):
        lp.score(tiny_net(), lp.create_criterion("random"), seed=3)
    with pytest.raises(ConfigError, match="criterion=3 is not allowed"):
        lp.score(tiny_net(), 3)


def dead_channel_net():
    """conv0 channel 1 has a zero filter and a negative bias: after ReLU it is 0 on every image."""
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    )
    with torch.no_grad():
        net[0].weight[1].zero_()
        net[0].bias[1] = -1.0
        net[0].bias[[0, 2, 3]] = 0.1
    return net.eval()


# entropy is not here: on the layer's equal-width grid a live unit whose output stays inside one bin
# (channel 3 here, next to the wide channel 2) also gets H = 0, a tie the planner's secondary key
# resolves (test_dead_channel_is_pruned_first_by_every_criterion).
@pytest.mark.parametrize("name", ["l1", "apoz", "class_selectivity", "mutual_information", "taylor"])
def test_dead_channel_ranks_least_important(name):
    net = dead_channel_net()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(60, 1, 6, 6, generator=g)
    y = torch.arange(60) % 3
    x = x + y.view(-1, 1, 1, 1) * 0.5  # class-dependent brightness, so live channels carry information
    s = lp.score(net, name, [(x[i : i + 20], y[i : i + 20]) for i in range(0, 60, 20)], num_classes=3, progress=False)
    imp = s["0"]
    assert imp.argmin().item() == 1 and (imp[1] < imp[[0, 2, 3]]).all(), imp


#: criteria that cannot see a dead channel (the reason), left out of the planning test below
CANNOT_SEE_DEAD = {
    "random": "random scores",
    "bn_scale": "needs a BatchNorm; the net has none",
    "fpgm": "distance to the other filters: a zero filter is not near the geometric median",
    "nisp": "backward |W| propagation does not read the activations",
}


@pytest.mark.parametrize("name", [n for n in lp.list_criteria() if n not in CANNOT_SEE_DEAD])
def test_dead_channel_is_pruned_first_by_every_criterion(name):
    """The plan removes the dead channel first: a criterion that ties it with live channels (feature entropy's
    minimum, AFIE's per-layer constant, ...) is resolved by the planner's secondary key, the filter's L1."""
    net = dead_channel_net()
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    x = torch.rand(60, 1, 6, 6, generator=g) + y.view(-1, 1, 1, 1) * 0.5
    s = lp.score(net, name, [(x[i : i + 20], y[i : i + 20]) for i in range(0, 60, 20)], num_classes=3, progress=False)
    assert float(s["0"][1]) == float(s["0"].min()), s["0"]  # the minimum, possibly tied
    p = lp.plan(net, s, strategy="uniform", ratio=0.25, example_inputs=x[:1], layers=["0"])
    assert 1 not in p.keep["0"].tolist() and len(p.keep["0"]) == 3, p.keep["0"]


def test_tiebreak_hand_case_dead_channel_tied_with_a_live_one():
    """Equal importance for channels 0 and 1: the zero filter (channel 1) goes, whatever its index."""
    from lightprune.planner import _top

    imp = torch.tensor([0.0, 0.0, 5.0])
    assert _top(imp, 2).tolist() == [0, 2]  # no secondary key: the lower index is kept
    assert _top(imp, 2, torch.tensor([3.0, 0.0, 1.0])).tolist() == [0, 2]
    assert _top(imp, 2, torch.tensor([0.0, 3.0, 1.0])).tolist() == [1, 2]
