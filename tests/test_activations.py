"""Activation-statistics criteria (CRITERIA.md, "Activation statistics"): apoz, class_selectivity,
entropy, mutual_information, kl_selectivity, labeled_mi.

Checked against hand-computed tiny cases, against a plain-Python-loop reference on random data
(conv and Linear layers, several quantisers, batch sizes 1 / 3 / all), on a network with a dead
channel, and for every bad input."""

import math

import pytest
import torch
from torch import nn

import lightprune as lp
from lightprune.collect import find_prunable_layers
from lightprune.criteria.activations import APoZMetric, ClassSelectivityMetric, InformationMetric
from lightprune.errors import ConfigError

NAMES = ["apoz", "class_selectivity", "entropy", "mutual_information", "kl_selectivity", "labeled_mi"]
INFO = ["entropy", "mutual_information", "kl_selectivity", "labeled_mi"]
LABELED = ["class_selectivity", "mutual_information", "kl_selectivity", "labeled_mi"]
LOG2, LOG3, LOG5 = math.log(2), math.log(3), math.log(5)


def H(*p):
    """Entropy of a distribution given by its probabilities (0 log 0 = 0)."""
    return -sum(x * math.log(x) for x in p if x > 0)


def score(net, name, x, y, batch_size=None, num_classes=None, **hp):
    bs = batch_size or len(x)
    batches = [(x[i : i + bs], y[i : i + bs]) for i in range(0, len(x), bs)]
    return lp.score(net, name, batches, num_classes=num_classes, progress=False, **hp)


# ------------------------------------------------------------------------------------------------
# registry
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_registered_with_flags(name):
    crit = lp.create_criterion(name)
    assert name in lp.list_criteria() and crit.name == name
    assert crit.needs_data is True
    assert crit.needs_labels is (name in LABELED)


# ------------------------------------------------------------------------------------------------
# hand case 1: a Linear layer, K = 3, six images, 1 bit at 0 (the default after ReLU)
# ------------------------------------------------------------------------------------------------
# post-ReLU outputs (rows = images, columns = neurons) and labels
LIN_T = [
    [2.0, 5.0, 0.0],
    [1.0, 0.0, 0.0],
    [0.0, 1.0, 0.0],
    [0.0, 3.0, 0.0],
    [0.0, 0.0, 0.0],
    [0.0, 0.0, 0.0],
]
LIN_Y = [0, 0, 1, 1, 2, 2]
# Q(t) = 1[t > 0]:  neuron 0: 1 1 | 0 0 | 0 0   neuron 1: 1 0 | 1 1 | 0 0   neuron 2 (dead): all 0
LIN_EXPECTED = {
    # zeros: 4/6, 3/6, 6/6
    "apoz": [1 - 4 / 6, 1 - 3 / 6, 0.0],
    # class means: n0 (1.5, 0, 0): a_max 1.5, a_rest 0;  n1 (2.5, 2, 0): a_max 2.5, a_rest 1;  n2: all 0
    "class_selectivity": [1.5 / (1.5 + 1e-12), 1.5 / (3.5 + 1e-12), 0.0],
    # n0: P(T=1) = 1/3;  n1: P(T=1) = 1/2
    "entropy": [H(1 / 3, 2 / 3), LOG2, 0.0],
    # n0: each class pure, H(T|Y) = 0;  n1: only class 0 is mixed, H(T|Y) = 1/3 log 2
    "mutual_information": [H(1 / 3, 2 / 3), LOG2 - LOG2 / 3, 0.0],
    # n0: y=0: (0, 1) vs (2/3, 1/3) -> log 3 (y=1,2: log 3/2);  n1: y=1: (0, 1) vs (1/2, 1/2) -> log 2
    "kl_selectivity": [LOG3, LOG2, 0.0],
    # n0: 1[Y=0] determines T -> H(T);  n1: y=0 gives 0, y=1 (and y=2): Z=1 pure, Z=0 has T = 1 0 0 0:
    #     log 2 - 4/6 H(1/4, 3/4) = 1/2 log 3 - 1/3 log 2
    "labeled_mi": [H(1 / 3, 2 / 3), LOG3 / 2 - LOG2 / 3, 0.0],
}


def linear_identity_net(activation: nn.Module) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(3, 3), activation, nn.Linear(3, 3))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(3))
        net[0].bias.zero_()
    return net.eval()


@pytest.mark.parametrize("name", NAMES)
def test_hand_case_linear_direct_and_through_score(name):
    x, y = torch.tensor(LIN_T), torch.tensor(LIN_Y)
    expected = torch.tensor(LIN_EXPECTED[name], dtype=torch.float64)
    net = linear_identity_net(nn.ReLU())
    # through lp.score (the hidden Linear "0" is the only prunable layer), in 2 batches
    s = score(net, name, x, y, batch_size=4, num_classes=3)
    assert list(s) == ["0"]
    torch.testing.assert_close(s["0"], expected, rtol=0, atol=1e-12)
    # the metric fed directly with the activations
    layer = find_prunable_layers(net, x[:2])["0"]
    assert isinstance(layer.activation, nn.ReLU)
    metric = lp.create_criterion(name).make_state(layer, 3)
    metric.update(x[:1], y[:1])
    metric.update(x[1:], y[1:])
    out = metric.compute()
    assert out.dtype == torch.float64 and out.shape == (3,)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# hand case 2: a conv layer (1x1, weights +1 / -1 -> maps relu(x), relu(-x)), K = 2, five images,
# default quantiser = 1 bit at the median, with values equal to the median (tie -> lower bin)
# ------------------------------------------------------------------------------------------------
CONV_X = [
    [[1.0, 0.0], [2.0, -1.0]],  # y=0  ch0 [[1,0],[2,0]] mean 3/4, 2 zeros   ch1 [[0,0],[0,1]] mean 1/4, 3 zeros
    [[3.0, 1.0], [0.0, 0.0]],  # y=0  ch0 mean 1, 2 zeros                   ch1 all 0, mean 0, 4 zeros
    [[-2.0, -2.0], [0.0, 0.0]],  # y=1  ch0 all 0, 4 zeros                  ch1 [[2,2],[0,0]] mean 1, 2 zeros
    [[-1.0, 1.0], [-3.0, -1.0]],  # y=1  ch0 [[0,1],[0,0]] mean 1/4, 3 zeros  ch1 [[1,0],[3,1]] mean 5/4, 1 zero
    [[1.0, 1.0], [1.0, 1.0]],  # y=1  ch0 all 1, mean 1, 0 zeros           ch1 all 0, mean 0, 4 zeros
]
CONV_Y = [0, 0, 1, 1, 1]
# ch0 t = (3/4, 1, 0, 1/4, 1): median (rank 2 of sorted 0, 1/4, 3/4, 1, 1) = 3/4 -> Q = 0 1 | 0 0 1
# ch1 t = (1/4, 0, 1, 5/4, 0): median (rank 2 of sorted 0, 0, 1/4, 1, 5/4) = 1/4 -> Q = 0 0 | 1 1 0
# both: P(T=1) = 2/5.  ch0: H(T|Y) = 2/5 H(1/2) + 3/5 H(1/3);  ch1: H(T|Y) = 3/5 H(1/3)
_HT = H(2 / 5, 3 / 5)
_MI = [_HT - 2 / 5 * LOG2 - 3 / 5 * H(1 / 3, 2 / 3), _HT - 3 / 5 * H(1 / 3, 2 / 3)]  # 0.013844, 0.291103
CONV_EXPECTED = {
    "apoz": [1 - 11 / 20, 1 - 14 / 20],
    # ch0: a = (7/8, 5/12);  ch1: a = (1/8, 3/4)
    "class_selectivity": [(7 / 8 - 5 / 12) / (7 / 8 + 5 / 12 + 1e-12), (3 / 4 - 1 / 8) / (3 / 4 + 1 / 8 + 1e-12)],
    # entropy's conv default: 8 equal-width bins over the layer's range [0, 5/4], edges j 5/32:
    # ch0 t = (3/4, 1, 0, 1/4, 1) -> levels 4 6 0 1 6;  ch1 t = (1/4, 0, 1, 5/4, 0) -> levels 1 0 6 7 0
    # (with quantizer="median" both would be H(2/5, 3/5), see test_median_and_quantile_edges_and_ties)
    "entropy": [H(2 / 5, 1 / 5, 1 / 5, 1 / 5), H(2 / 5, 1 / 5, 1 / 5, 1 / 5)],
    "mutual_information": _MI,
    # ch0: y=0: (1/2, 1/2) vs (3/5, 2/5) = 1/2 log(25/24) = 0.0204 beats y=1: (2/3, 1/3) = 0.0095
    # ch1: y=0: (1, 0) vs (3/5, 2/5) = log(5/3) beats y=1: (1/3, 2/3) = 0.1446
    "kl_selectivity": [0.5 * math.log(25 / 24), LOG5 - LOG3],
    "labeled_mi": _MI,  # two classes: 1[Y=y] carries the same information as Y
}


def conv_pm_net() -> nn.Sequential:
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        net[0].bias.zero_()
    return net.eval()


@pytest.mark.parametrize("batch_size", [1, 2, 5])
@pytest.mark.parametrize("name", NAMES)
def test_hand_case_conv_median(name, batch_size):
    x, y = torch.tensor(CONV_X).unsqueeze(1), torch.tensor(CONV_Y)
    s = score(conv_pm_net(), name, x, y, batch_size=batch_size, num_classes=2)
    expected = torch.tensor(CONV_EXPECTED[name], dtype=torch.float64)
    torch.testing.assert_close(s["0"], expected, rtol=0, atol=1e-12)


def test_median_and_quantile_edges_and_ties():
    # 7 values, 3 equal-frequency bins: edges at ranks 2 and 4 -> 2.0 and 4.0; 2.0 and 4.0 go down
    t = torch.arange(7.0).view(7, 1)
    m = InformationMetric(1, quantizer="quantile", bins=3)
    m.update(t)
    torch.testing.assert_close(m.compute().reshape(-1), torch.tensor([H(3 / 7, 2 / 7, 2 / 7)], dtype=torch.float64), rtol=0, atol=1e-12)
    # heavy ties: edges at ranks 5/3 (0.0) and 10/3 (0 + 1/3 * (1 - 0)); bin 1 stays empty: levels 0 0 0 0 2 2
    m = InformationMetric(1, quantizer="quantile", bins=3)
    m.update(torch.tensor([[0.0], [0.0], [1.0], [0.0], [2.0], [0.0]]))
    torch.testing.assert_close(m.compute().reshape(-1), torch.tensor([H(4 / 6, 2 / 6)], dtype=torch.float64), rtol=0, atol=1e-12)
    # median of an even count interpolates: 1, 2, 3, 4 -> 2.5; a constant unit falls in one bin
    m = InformationMetric(2, quantizer="median")
    m.update(torch.tensor([[1.0, 7.0], [2.0, 7.0], [3.0, 7.0], [4.0, 7.0]]))
    torch.testing.assert_close(m.compute().reshape(-1), torch.tensor([LOG2, 0.0], dtype=torch.float64), rtol=0, atol=1e-12)
    # equal-width bins over the layer's range [0, 6] (both units): edges 2 and 4; 2.0 and 4.0 go down.
    # unit 0: 0 1 2 | 3 4 | 5 6 -> 3/7 2/7 2/7; unit 1: 1 1 1 1 1 1 6 -> levels 0 x6, 2 x1
    m = InformationMetric(2, quantizer="width", bins=3)
    m.update(torch.tensor([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0], [3.0, 1.0], [4.0, 1.0], [5.0, 1.0], [6.0, 6.0]]))
    torch.testing.assert_close(
        m.compute().reshape(-1), torch.tensor([H(3 / 7, 2 / 7, 2 / 7), H(6 / 7, 1 / 7)], dtype=torch.float64), rtol=0, atol=1e-12
    )
    # explicit threshold: a value equal to it goes to the lower bin
    m = InformationMetric(1, quantizer="threshold", threshold=1.0)
    m.update(torch.tensor([[1.0], [1.0], [1.0], [1.5]]))
    torch.testing.assert_close(m.compute().reshape(-1), torch.tensor([H(1 / 4, 3 / 4)], dtype=torch.float64), rtol=0, atol=1e-12)


def test_linear_default_threshold_follows_the_activation():
    # sigmoid outputs vs 0.5: column 0 -> 1 0 0(tie, sigmoid(0) = 0.5) 1;  column 1 -> 0 0 0 1
    x, y = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0], [2.0, 3.0]]), torch.tensor([0, 1, 0, 1])
    net = nn.Sequential(nn.Linear(2, 2), nn.Sigmoid(), nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(2))
        net[0].bias.zero_()
    s = score(net.eval(), "entropy", x, y)
    torch.testing.assert_close(s["0"], torch.tensor([LOG2, H(1 / 4, 3 / 4)], dtype=torch.float64), rtol=0, atol=1e-12)
    # (a threshold at 0 would put every sigmoid output in bin 1: entropy 0)
    s0 = score(net.eval(), "entropy", x, y, quantizer="threshold", threshold=0.0)
    assert s0["0"].tolist() == [0.0, 0.0]
    # no activation after the Linear: the default is the median (1 bit): column 0 = 1 -1 0 2 -> median 0.5
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(2))
        net[0].bias.zero_()
    s = score(net.eval(), "entropy", x, y)
    torch.testing.assert_close(s["0"], torch.tensor([LOG2, H(1 / 4, 3 / 4)], dtype=torch.float64), rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# plain-Python-loop reference on random data
# ------------------------------------------------------------------------------------------------
def ref_unit_output(unit_map):
    """A Linear neuron's scalar, or the spatial mean of a conv unit's map (nested lists)."""
    if not isinstance(unit_map, list):
        return float(unit_map)
    total, count = 0.0, 0
    for row in unit_map:
        for v in row:
            total += v
            count += 1
    return total / count


def ref_apoz(acts):
    out = []
    for c in range(len(acts[0])):
        zeros = total = 0
        for image in acts:
            entries = [v for row in image[c] for v in row] if isinstance(image[c], list) else [image[c]]
            for v in entries:
                zeros += v == 0
                total += 1
        out.append(1 - zeros / total)
    return out


def ref_class_selectivity(t, y, k):
    out = []
    for c in range(len(t[0])):
        means = []
        for cls in range(k):
            vals = [t[n][c] for n in range(len(t)) if y[n] == cls]
            if vals:  # classes without images are excluded
                means.append(sum(vals) / len(vals))
        i_max = max(range(len(means)), key=lambda i: means[i])
        rest = [means[i] for i in range(len(means)) if i != i_max]
        a_max, a_rest = means[i_max], sum(rest) / len(rest)
        out.append((a_max - a_rest) / (a_max + a_rest + 1e-12))
    return out


def ref_quantile(values, q):
    """torch.quantile(..., interpolation='linear'), written out (including torch.lerp's two branches)."""
    s = sorted(values)
    rank = q * (len(s) - 1)
    lo, hi = math.floor(rank), math.ceil(rank)
    w = rank - lo
    a, b = s[lo], s[hi]
    return a + w * (b - a) if w < 0.5 else b - (b - a) * (1 - w)


def ref_levels(values, threshold, bins, width_range=None):
    if threshold is not None:
        return [1 if v > threshold else 0 for v in values]
    if width_range is not None:  # equal-width bins over the layer's range (lo, hi)
        lo, hi = width_range
        edges = [lo + j / bins * (hi - lo) for j in range(1, bins)]
        return [sum(1 for e in edges if v > e) for v in values]
    edges = [ref_quantile(values, j / bins) for j in range(1, bins)]
    return [sum(1 for e in edges if v > e) for v in values]


def ref_information(levels, y, k, measure):
    n = len(levels)
    values = sorted(set(levels))

    def entropy(ts):
        return H(*[ts.count(v) / len(ts) for v in values]) if ts else 0.0

    h_t = entropy(levels)
    if measure == "entropy":
        return h_t
    by_class = [[levels[i] for i in range(n) if y[i] == cls] for cls in range(k)]
    if measure == "mutual_information":
        return h_t - sum(len(ts) / n * entropy(ts) for ts in by_class)
    if measure == "kl_selectivity":
        best = -math.inf
        for ts in by_class:
            if not ts:
                continue
            kl = 0.0
            for v in values:
                p_cond, p = ts.count(v) / len(ts), levels.count(v) / n
                if p_cond > 0:
                    kl += p_cond * math.log(p_cond / p)
            best = max(best, kl)
        return best
    assert measure == "labeled_mi"
    best = -math.inf
    for cls in range(k):
        inside = [levels[i] for i in range(n) if y[i] == cls]
        outside = [levels[i] for i in range(n) if y[i] != cls]
        best = max(best, h_t - len(inside) / n * entropy(inside) - len(outside) / n * entropy(outside))
    return best


def reference(name, acts, y, k, threshold=None, bins=2, width=False):
    """acts: per image, per channel, a nested list (conv map) or a float (Linear); ``width``: equal-width
    bins over the layer's range (all units)."""
    if name == "apoz":
        return ref_apoz(acts)
    t = [[ref_unit_output(unit) for unit in image] for image in acts]
    if name == "class_selectivity":
        return ref_class_selectivity(t, y, k)
    out = []
    rng = (min(min(r) for r in t), max(max(r) for r in t)) if width else None
    for c in range(len(t[0])):
        column = [t[i][c] for i in range(len(t))]
        out.append(ref_information(ref_levels(column, threshold, bins, rng), y, k, name))
    return out


def random_net(last_activation: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 5, 3), nn.ReLU(),
        nn.Flatten(), nn.Linear(5 * 4 * 4, 6), last_activation, nn.Linear(6, 3),
    ).eval()


# (criterion, hyperparameters, activation after the hidden Linear, its default threshold)
RANDOM_CASES = [
    ("apoz", {}, "relu"),
    ("class_selectivity", {}, "relu"),
    *[(name, {}, "relu") for name in INFO],  # conv: median (entropy: 8 equal-width bins); Linear: 1 bit at 0
    *[(name, {}, "sigmoid") for name in INFO],  # Linear: 1 bit at 0.5
    *[(name, {"quantizer": "median"}, "relu") for name in INFO],
    *[(name, {"quantizer": "threshold", "threshold": 0.05}, "relu") for name in INFO],
    *[(name, {"quantizer": "quantile", "bins": 3}, "relu") for name in INFO],
    *[(name, {"quantizer": "width", "bins": 3}, "relu") for name in INFO],
]


@pytest.mark.parametrize("num_classes", [3, 4])  # 4: class 3 has no image
@pytest.mark.parametrize(("name", "hp", "act"), RANDOM_CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in RANDOM_CASES])
def test_streaming_equals_plain_loop_reference(name, hp, act, num_classes):
    net = random_net(nn.ReLU() if act == "relu" else nn.Sigmoid())
    g = torch.Generator().manual_seed(1)
    n = 12
    x = torch.randn(n, 3, 6, 6, generator=g)
    y = torch.arange(n) % 3
    y_list = y.tolist()
    with torch.no_grad():
        acts = {"0": net[:2](x), "2": net[:4](x), "5": net[:7](x)}
    results = [score(net, name, x, y, batch_size=bs, num_classes=num_classes, **hp) for bs in (1, 3, n)]
    seen = []
    for layer, a in acts.items():
        width = False
        if hp.get("quantizer") == "threshold":
            threshold, bins = hp["threshold"], 2
        elif hp.get("quantizer") in ("quantile", "width"):
            threshold, bins, width = None, hp["bins"], hp["quantizer"] == "width"
        elif hp.get("quantizer") is None and name == "entropy" and layer != "5":  # entropy's conv default
            threshold, bins, width = None, 8, True
        elif hp.get("quantizer") is None and layer == "5":  # the default for a Linear neuron
            threshold, bins = (0.0 if act == "relu" else 0.5), 2
        else:  # the median
            threshold, bins = None, 2
        expected = torch.tensor(reference(name, a.tolist(), y_list, num_classes, threshold, bins, width), dtype=torch.float64)
        for bs, s in zip((1, 3, n), results, strict=True):
            torch.testing.assert_close(
                s[layer], expected, rtol=0, atol=1e-6, msg=lambda m, lay=layer, b=bs: f"layer {lay}, batch {b}: {m}"
            )
        seen.append(expected)
    seen = torch.cat(seen)  # the data is not degenerate: not every unit scores 0
    assert torch.isfinite(seen).all() and (seen > 1e-3).any()


@pytest.mark.parametrize("name", NAMES)
def test_states_merge_like_processes(name):
    """Two metrics (two 'processes') merged through their declared reductions equal one metric on all data."""
    g = torch.Generator().manual_seed(2)
    act, y = torch.relu(torch.randn(20, 3, 4, 4, generator=g)), torch.arange(20) % 4
    layer = find_prunable_layers(nn.Sequential(nn.Conv2d(1, 3, 1), nn.ReLU(), nn.Linear(4, 2)), None)["0"]
    crit = lp.create_criterion(name)
    whole, a, b = (crit.make_state(layer, 4) for _ in range(3))
    whole.update(act, y)
    a.update(act[::2], y[::2])
    b.update(act[1::2], y[1::2])
    a.merge_state(b)
    torch.testing.assert_close(a.compute(), whole.compute(), rtol=1e-12, atol=1e-12)


def test_empty_class_is_excluded():
    """A class index with no image changes nothing (the same as remapping the labels onto the present classes)."""
    g = torch.Generator().manual_seed(3)
    act = torch.relu(torch.randn(12, 3, generator=g))
    y_sparse = torch.tensor([0, 2, 4] * 4)  # classes 1 and 3 are empty
    y_dense = y_sparse // 2
    layer = find_prunable_layers(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2)), None)["0"]
    for name in LABELED:
        crit = lp.create_criterion(name, quantizer="median") if name in INFO else lp.create_criterion(name)
        sparse, dense = crit.make_state(layer, 5), crit.make_state(layer, 3)
        sparse.update(act, y_sparse)
        dense.update(act, y_dense)
        torch.testing.assert_close(sparse.compute(), dense.compute(), rtol=0, atol=1e-12, msg=name)


# ------------------------------------------------------------------------------------------------
# orientation: a dead channel is the least important
# ------------------------------------------------------------------------------------------------
def dead_channel_net():
    """conv0 channel 2 has a zero filter and bias -1: its ReLU output is 0 on every image. No BatchNorm."""
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 3, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3),
    )
    with torch.no_grad():
        net[0].weight.copy_(torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(5)).abs() / 9)
        net[0].weight[1].neg_()  # channel 1 responds to dark images, the others to bright ones
        net[0].bias.copy_(torch.tensor([-0.2, 0.4, 0.0, -0.1]))
        net[0].weight[2].zero_()
        net[0].bias[2] = -1.0
    return net.eval()


@pytest.mark.parametrize("name", NAMES)
def test_dead_channel_ranks_least_important(name):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    x = torch.randn(60, 1, 6, 6, generator=g) + (y.view(-1, 1, 1, 1) - 1.0)  # class-dependent brightness
    s = score(dead_channel_net(), name, x, y, batch_size=16, num_classes=3)
    imp = s["0"]
    assert imp[2] == 0.0, imp  # apoz: all zeros; selectivity: all class means 0; information: T constant
    live = imp[[0, 1, 3]]
    assert (live > imp[2]).all(), imp  # strictly lowest (kl_selectivity and labeled_mi included)


# ------------------------------------------------------------------------------------------------
# bad inputs
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", INFO)
@pytest.mark.parametrize(
    ("hp", "match"),
    [
        ({"quantizer": "bogus"}, r"quantizer='bogus' is not allowed; choose one of: auto, median, threshold, quantile"),
        ({"quantizer": "quantile", "bins": 1}, r"bins=1 is not allowed; it must be an integer >= 2"),
        ({"quantizer": "quantile", "bins": 2.5}, r"bins=2.5 is not allowed; it must be an integer >= 2"),
        ({"quantizer": "quantile", "bins": True}, r"bins=True is not allowed"),
        ({"quantizer": "quantile"}, r"quantizer='quantile' needs bins="),
        ({"quantizer": "median", "bins": 3}, r"bins=3 is only used with quantizer='quantile' or 'width'; got quantizer='median'"),
        ({"threshold": 0.2}, r"threshold=0.2 is only used with quantizer='threshold'; got quantizer='auto'"),
        ({"quantizer": "threshold", "threshold": "0"}, r"threshold='0' is not allowed; it must be a finite number"),
        ({"quantizer": "threshold", "threshold": float("nan")}, r"threshold=nan is not allowed"),
        ({"quantizer": "threshold", "threshold": True}, r"threshold=True is not allowed"),
        ({"bogus": 1}, r"bad hyperparameters for criterion"),
    ],
)
def test_bad_information_hyperparameters(name, hp, match):
    with pytest.raises(ConfigError, match=match):
        lp.create_criterion(name, **hp)


@pytest.mark.parametrize("name", ["apoz", "class_selectivity"])
def test_no_hyperparameters_accepted(name):
    with pytest.raises(ConfigError, match=f"bad hyperparameters for criterion '{name}'"):
        lp.create_criterion(name, quantizer="median")


def _layer(activation=None, kind="conv"):
    if kind == "conv":
        net = nn.Sequential(nn.Conv2d(1, 3, 1), *([activation] if activation else []), nn.Flatten(), nn.Linear(3, 2))
        return find_prunable_layers(net, torch.zeros(1, 1, 1, 1))["0"]
    net = nn.Sequential(nn.Linear(2, 3), *([activation] if activation else []), nn.Linear(3, 2))
    return find_prunable_layers(net, torch.zeros(1, 2))["0"]


@pytest.mark.parametrize("name", LABELED)
def test_missing_or_bad_num_classes(name):
    crit = lp.create_criterion(name)
    with pytest.raises(ConfigError, match=f"criterion '{name}' needs num_classes"):
        crit.make_state(_layer(nn.ReLU()), None)
    with pytest.raises(ConfigError, match="num_classes=1 is not allowed; it must be an integer >= 2"):
        crit.make_state(_layer(nn.ReLU()), 1)


def test_unlabeled_criteria_need_no_num_classes():
    for name in ("apoz", "entropy"):
        m = lp.create_criterion(name).make_state(_layer(nn.ReLU()), None)
        m.update(torch.tensor([[[[1.0]], [[0.0]], [[2.0]]], [[[0.0]], [[0.0]], [[3.0]]]]), None)
        assert m.compute().shape == (3,)


def test_threshold_without_default_for_the_activation():
    crit = lp.create_criterion("entropy", quantizer="threshold")
    with pytest.raises(ConfigError, match=r"layer '0' is followed by Softplus, which has none; pass threshold="):
        crit.make_state(_layer(nn.Softplus(), kind="linear"), None)
    with pytest.raises(ConfigError, match=r"layer '0' is followed by no activation"):
        crit.make_state(_layer(None, kind="linear"), None)
    assert crit.make_state(_layer(nn.Sigmoid(), kind="linear"), None).threshold == 0.5


@pytest.mark.parametrize("name", LABELED)
def test_labels_out_of_range(name):
    x, y = torch.tensor(CONV_X).unsqueeze(1), torch.tensor([0, 1, 2, 1, 0])
    with pytest.raises(ConfigError, match=r"labels contain 2, outside \[0, num_classes=2\)"):
        score(conv_pm_net(), name, x, y, num_classes=2)
    m = lp.create_criterion(name).make_state(_layer(nn.ReLU()), 3)
    with pytest.raises(ConfigError, match=r"labels contain -1, outside \[0, num_classes=3\)"):
        m.update(torch.ones(2, 3, 1, 1), torch.tensor([0, -1]))


@pytest.mark.parametrize("name", NAMES)
def test_bad_update_inputs_and_empty_compute(name):
    m = lp.create_criterion(name).make_state(_layer(nn.ReLU()), 3)
    with pytest.raises(ConfigError, match=r"activations of shape \(2, 4, 1, 1\) do not fit: expected \(B, 3\)"):
        m.update(torch.ones(2, 4, 1, 1), torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match=r"activations of shape \(2, 3, 1\) do not fit"):
        m.update(torch.ones(2, 3, 1), torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="activations must be a torch.Tensor"):
        m.update([[1.0, 2.0, 3.0]], torch.tensor([0]))
    if name in LABELED:
        with pytest.raises(ConfigError, match=r"labels must be integer class indices, got dtype torch.float32"):
            m.update(torch.ones(2, 3, 1, 1), torch.tensor([0.0, 1.0]))
        with pytest.raises(ConfigError, match=r"labels of shape \(3,\) do not fit activations of batch size 2"):
            m.update(torch.ones(2, 3, 1, 1), torch.tensor([0, 1, 1]))
        with pytest.raises(ConfigError, match="labels are needed"):
            m.update(torch.ones(2, 3, 1, 1), None)
    with pytest.raises(ConfigError, match="no image was scored"):
        m.compute()


def test_class_selectivity_needs_two_classes_with_images():
    m = ClassSelectivityMetric(num_channels=2, num_classes=3)
    m.update(torch.ones(4, 2), torch.tensor([1, 1, 1, 1]))
    with pytest.raises(ConfigError, match=r"at least 2 classes; only class\(es\) \[1\] have any"):
        m.compute()


def test_metric_constructor_checks():
    with pytest.raises(ConfigError, match="num_channels=0 is not allowed"):
        APoZMetric(0)
    with pytest.raises(ConfigError, match="measure='bogus' is not allowed; choose one of: entropy, mutual_information"):
        InformationMetric(2, 3, measure="bogus")
    with pytest.raises(ConfigError, match="quantizer='auto' is not allowed; choose one of: median, threshold, quantile"):
        InformationMetric(2, 3, quantizer="auto")
    with pytest.raises(ConfigError, match="quantizer='threshold' needs threshold="):
        InformationMetric(2, 3, measure="mutual_information", quantizer="threshold")
    with pytest.raises(ConfigError, match="mutual_information needs num_classes"):
        InformationMetric(2, None, measure="mutual_information")


@pytest.mark.parametrize("name", NAMES)
def test_one_channel_layer_gets_a_1d_score(name):
    """torchmetrics squeezes one-element results; a one-channel layer must still get shape (1,)."""
    import pickle

    net = nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2)).eval()
    x, y = torch.tensor(CONV_X).unsqueeze(1), torch.tensor(CONV_Y)
    s = score(net, name, x, y, num_classes=2)
    assert s["0"].shape == (1,)
    m = pickle.loads(pickle.dumps(lp.create_criterion(name).make_state(_layer(nn.ReLU()), 2)))
    m.update(torch.rand(4, 3, 2, 2) + 0.1, torch.tensor([0, 1, 0, 1]))
    assert m.compute().shape == (3,)
