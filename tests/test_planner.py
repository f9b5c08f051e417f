"""Planner invariants (CRITERIA.md "Planner"; src/lightprune/planner.py).

The pure core :func:`plan_groups` is property-tested with hypothesis on random groups (widths
1..64, 1..3 coupled members, random scores with ties, ratio in [0, 0.95)); the model-facing
:func:`lightprune.plan` is tested on a small CIFAR VGG-16 (flops target, afie, per-layer criteria).
"""

from __future__ import annotations

import copy
import json
import math
import os

import pytest
import torch
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import lightprune as lp
from lightprune.criteria import Scores
from lightprune.errors import ConfigError
from lightprune.planner import Group, Plan, normalise_importance, plan_groups, scores_by_depth
from lightprune.surgery import count_macs_params

# LP_HYPOTHESIS_EXAMPLES=2000 for a deeper search than the suite's default
HSET = settings(
    max_examples=int(os.environ.get("LP_HYPOTHESIS_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# --------------------------------------------------------------------------------------------------
# random cases
# --------------------------------------------------------------------------------------------------
@st.composite
def cases(draw, max_groups: int = 6):
    """(groups, scores {member: (C,)}, layer_scores {member: AFIE > 0})."""
    n = draw(st.integers(1, max_groups))
    groups, scores, layer_scores = [], {}, {}
    value = st.one_of(st.floats(-10, 10, allow_nan=False, allow_infinity=False), st.integers(0, 3).map(float))
    for gi in range(n):
        c = draw(st.integers(1, 64))
        members = [f"g{gi}.m{j}" for j in range(draw(st.integers(1, 3)))]
        for m in members:
            scores[m] = torch.tensor(draw(st.lists(value, min_size=c, max_size=c)), dtype=torch.float64)
            layer_scores[m] = draw(st.floats(1e-4, 10.0))
        groups.append(Group(members[0], members, c))
    return groups, scores, layer_scores


def group_importance(g: Group, scores) -> torch.Tensor:
    return torch.stack([scores[m].double() for m in g.members]).mean(0)


def removed_of(p: Plan, g: Group) -> int:
    return g.channels - len(p.keep[g.root])


def min_keep(c: int, mkf: float) -> int:
    return max(1, math.ceil(mkf * c - 1e-9))


def half_up(x: float) -> int:
    return math.floor(x + 0.5)


def assert_plans_equal(a: Plan, b: Plan) -> None:
    assert list(a.keep) == list(b.keep)
    for n in a.keep:
        assert torch.equal(a.keep[n], b.keep[n]), n
    assert a.channels == b.channels and a.groups == b.groups
    assert (a.strategy, a.target_ratio, a.criterion, a.meta) == (b.strategy, b.target_ratio, b.criterion, b.meta)


def check_common(p: Plan, groups, scores, mkf: float, round_to) -> None:
    """Invariants of every strategy: all members planned, indices valid, min keep, coupling, top-k."""
    assert set(p.keep) == {m for g in groups for m in g.members}
    assert p.groups == [g.members for g in groups]
    for g in groups:
        root_keep = p.keep[g.root]
        # coupled layers: the same indices, channel by channel
        for m in g.members:
            assert torch.equal(p.keep[m], root_keep), (g.members, m)
            assert p.channels[m] == g.channels
        k = root_keep.tolist()
        assert k == sorted(set(k)), "kept indices must be distinct and ascending"
        assert 0 <= k[0] and k[-1] < g.channels
        # no layer emptied: >= 1 and >= min_keep_fraction of the channels
        assert len(k) >= 1
        assert len(k) >= min_keep(g.channels, mkf), (len(k), g.channels, mkf)
        if round_to is not None:
            assert len(k) % round_to == 0 or len(k) == g.channels
        # the most important channels are kept; ties go to the lower index
        imp = group_importance(g, scores)
        kept = set(k)
        worst_kept = min((float(imp[i]), -i) for i in kept)
        for j in range(g.channels):
            if j not in kept:
                assert (float(imp[j]), -j) < worst_kept, (j, worst_kept)


# --------------------------------------------------------------------------------------------------
# property tests on plan_groups
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["uniform", "afie", "global", "manual"])
@HSET
@given(
    case=cases(),
    ratio=st.floats(0.0, 0.95, exclude_max=True),
    round_to=st.sampled_from([None, None, 2, 8]),
    mkf=st.sampled_from([0.01, 0.01, 0.0, 0.2]),
    mlr=st.sampled_from([0.9, 0.5, 0.99]),
    data=st.data(),
)
def test_plan_groups_invariants(strategy, case, ratio, round_to, mkf, mlr, data):
    groups, scores, layer_scores = case
    kw = {"strategy": strategy, "ratio": ratio, "round_to": round_to, "min_keep_fraction": mkf, "max_layer_ratio": mlr}
    if strategy == "afie":
        kw["layer_scores"] = layer_scores
    named: dict[str, float] = {}
    if strategy == "manual":
        for g in groups:
            if data.draw(st.booleans()):
                named[data.draw(st.sampled_from(g.members))] = data.draw(st.floats(0.0, 0.95, exclude_max=True))
        assume(named)
        kw["ratios"] = named
    p = plan_groups(groups, scores, **kw)
    check_common(p, groups, scores, mkf, round_to)

    total = sum(g.channels for g in groups)
    removed = sum(removed_of(p, g) for g in groups)
    target = half_up(ratio * total)
    n_groups = len(groups)
    if strategy in ("uniform", "afie", "global"):
        cap = [g.channels - min_keep(g.channels, mkf) for g in groups]
        if strategy == "global":
            cap = [min(c, math.floor(mlr * g.channels)) for c, g in zip(cap, groups, strict=True)]
        feasible = sum(cap) >= target
        if round_to is None:
            if strategy == "uniform":
                # per group exactly: round(r * C) removed (half-up), floored by the minimum kept
                for g in groups:
                    assert len(p.keep[g.root]) == max(g.channels - half_up(ratio * g.channels), min_keep(g.channels, mkf))
                if mkf <= 0.01:
                    assert abs(removed - target) <= n_groups
            else:
                # afie and global meet the global target exactly whenever the caps allow it
                assert removed == min(target, sum(cap)), (removed, target, sum(cap))
                if feasible:
                    assert abs(removed - target) <= n_groups
        else:
            # keep counts are multiples of round_to: at most about round_to channels off per group
            if mkf <= 0.01 and (strategy != "global" or feasible):
                assert abs(removed - target) <= n_groups * round_to
    if strategy == "global":
        for g in groups:
            assert removed_of(p, g) <= math.floor(mlr * g.channels), "max_layer_ratio exceeded"
    if strategy == "afie" and round_to is None:
        # a higher AFIE never loses a (noticeably) larger fraction than a lower one, among groups
        # that are not held by their minimum: lambda_l = lambda_min * AFIE_max / AFIE_l
        afie = {g.root: sum(layer_scores[m] for m in g.members) / len(g.members) for g in groups}
        free = [g for g in groups if len(p.keep[g.root]) > min_keep(g.channels, mkf)]
        for a in free:
            for b in free:
                if afie[a.root] > afie[b.root]:
                    ra, rb = removed_of(p, a) / a.channels, removed_of(p, b) / b.channels
                    assert ra <= rb + 1 / a.channels + 1 / b.channels + 1e-12, (afie[a.root], ra, afie[b.root], rb)
    if strategy == "manual":
        root_of = {m: g for g in groups for m in g.members}
        named_roots = {root_of[n].root: r for n, r in named.items()}
        for g in groups:
            if g.root not in named_roots:
                assert len(p.keep[g.root]) == g.channels, "an unnamed layer must keep everything"
            elif round_to is None:
                r = named_roots[g.root]
                assert len(p.keep[g.root]) == max(g.channels - half_up(r * g.channels), min_keep(g.channels, mkf))

    # determinism: the same scores (fresh copies) give the same plan
    again = plan_groups(copy.deepcopy(groups), {k: v.clone() for k, v in scores.items()}, **copy.deepcopy(kw))
    assert_plans_equal(p, again)

    # plain-data round trip, through JSON and YAML too
    d = p.to_dict()
    assert_plans_equal(Plan.from_dict(d), p)
    assert_plans_equal(Plan.from_dict(json.loads(json.dumps(d))), p)
    assert_plans_equal(Plan.from_dict(yaml.safe_load(yaml.safe_dump(d))), p)


@HSET
@given(case=cases(), ratio=st.floats(0.0, 0.95, exclude_max=True), normalize=st.sampled_from(["minmax", "max", "rank"]))
def test_global_removes_lowest_normalised_channels(case, ratio, normalize):
    """global: the removed channels are the lowest layer-normalised ones, except where a layer's cap binds."""
    groups, scores, _ = case
    p = plan_groups(groups, scores, strategy="global", ratio=ratio, normalize=normalize, max_layer_ratio=0.9)
    check_common(p, groups, scores, 0.01, None)
    limit = {g.root: min(g.channels - min_keep(g.channels, 0.01), math.floor(0.9 * g.channels)) for g in groups}
    # which channels of a group go is the group's own top-k (checked in check_common); across
    # groups, the r_g lowest normalised values of every group (r_g = its removed count) are all
    # <= the values kept by any group that could still have lost a channel
    removed_vals, kept_vals = [], []
    for g in groups:
        nv = sorted(normalise_importance(group_importance(g, scores), normalize).tolist())
        r = removed_of(p, g)
        removed_vals += nv[:r]
        if r < limit[g.root]:
            kept_vals += nv[r:]
    if removed_vals and kept_vals:
        assert max(removed_vals) <= min(kept_vals)


def test_normalisers_by_hand():
    v = torch.tensor([2.0, 4.0, 6.0])
    assert normalise_importance(v, "minmax").tolist() == [0.0, 0.5, 1.0]
    assert normalise_importance(v, "max").tolist() == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert normalise_importance(v, "mean").tolist() == pytest.approx([0.5, 1.0, 1.5])
    assert normalise_importance(torch.tensor([5.0, 1.0, 3.0]), "rank").tolist() == [1.0, 0.0, 0.5]
    assert normalise_importance(torch.tensor([3.0, 3.0]), "minmax").tolist() == [0.0, 0.0]


# --------------------------------------------------------------------------------------------------
# hand-made cases
# --------------------------------------------------------------------------------------------------
def ones_scores(groups, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.rand(gr.channels, generator=g, dtype=torch.float64) for gr in groups for m in gr.members}


def test_ties_keep_lower_index_and_uniform_counts():
    g = [Group("a", ["a"], 6)]
    p = plan_groups(g, {"a": torch.tensor([1.0, 5.0, 1.0, 1.0, 5.0, 1.0])}, ratio=0.5)
    assert p.keep["a"].tolist() == [0, 1, 4]  # 5, 5, then the first of the tied 1s
    # half-up: 0.5 * 5 = 2.5 -> 3 removed
    p = plan_groups([Group("b", ["b"], 5)], {"b": torch.arange(5.0)}, ratio=0.5)
    assert p.keep["b"].tolist() == [3, 4]


def test_coupled_group_uses_mean_importance():
    g = [Group("a", ["a", "b"], 4)]
    s = {"a": torch.tensor([4.0, 0.0, 0.0, 1.0]), "b": torch.tensor([0.0, 3.0, 0.0, 2.0])}
    p = plan_groups(g, s, ratio=0.5)  # mean: [2, 1.5, 0, 1.5] -> keep 0 and the tie 1
    assert p.keep["a"].tolist() == p.keep["b"].tolist() == [0, 1]


def test_afie_allocation_by_hand():
    """lambda_l = lambda_min * AFIE_max / AFIE_l, sum lambda_l c_l = 0.5 * 192, AFIE = (1, 2, 4):
    lambda_min = 96 / (64 * (4 + 2 + 1)) = 0.2143 -> removes 54.86, 27.43, 13.71 channels ->
    integer counts 55, 27, 14 (floors 54, 27, 13 + the two largest remainders), total 96."""
    groups = [Group(n, [n], 64) for n in "abc"]
    p = plan_groups(groups, ones_scores(groups), strategy="afie", ratio=0.5, layer_scores={"a": 1.0, "b": 2.0, "c": 4.0})
    removed = [64 - len(p.keep[n]) for n in "abc"]
    assert removed == [55, 27, 14]
    assert sum(removed) == 96
    # the highest AFIE loses the smallest fraction
    assert p.ratios["c"] < p.ratios["b"] < p.ratios["a"]


def test_afie_capped_layer_excess_is_redistributed():
    """A tiny AFIE in 'a' asks for lambda_a ~ 1.5 > its cap (1 - 1/64): 'a' is held at 63 removed
    (keeps 1 channel = the 1 % minimum), and the remaining 96 - 63 = 33 go to 'b' and 'c' (equal
    AFIE: 17 + 16), so the global ratio is still exactly 0.5."""
    groups = [Group(n, [n], 64) for n in "abc"]
    p = plan_groups(groups, ones_scores(groups), strategy="afie", ratio=0.5, layer_scores={"a": 1e-3, "b": 1.0, "c": 1.0})
    removed = {n: 64 - len(p.keep[n]) for n in "abc"}
    assert len(p.keep["a"]) == 1
    assert removed["b"] + removed["c"] == 33
    assert abs(removed["b"] - removed["c"]) <= 1
    assert sum(removed.values()) == 96
    assert p.global_ratio == pytest.approx(0.5)
    # two capped layers out of four, different widths
    groups = [Group("a", ["a"], 10), Group("b", ["b"], 200), Group("c", ["c"], 30), Group("d", ["d"], 40)]
    ls = {"a": 1e-4, "b": 1.0, "c": 2e-4, "d": 0.5}
    p = plan_groups(groups, ones_scores(groups), strategy="afie", ratio=0.6, layer_scores=ls)
    assert len(p.keep["a"]) == 1 and len(p.keep["c"]) == 1
    assert sum(g.channels - len(p.keep[g.root]) for g in groups) == round(0.6 * 280)
    assert p.ratios["b"] < p.ratios["d"]


def test_global_respects_max_layer_ratio_and_normalisation():
    # layer 'a' has tiny raw scores: without normalisation it would lose everything
    groups = [Group("a", ["a"], 10), Group("b", ["b"], 10)]
    s = {"a": torch.arange(10.0) * 1e-3, "b": torch.arange(10.0) + 100}
    p = plan_groups(groups, s, strategy="global", ratio=0.5, normalize="none", max_layer_ratio=0.7)
    assert len(p.keep["a"]) == 3 and len(p.keep["b"]) == 7  # 'a' stopped at 70 %, 'b' takes the rest
    p = plan_groups(groups, s, strategy="global", ratio=0.5, normalize="minmax")
    assert len(p.keep["a"]) == 5 and len(p.keep["b"]) == 5


def test_round_to_never_breaks_min_keep_or_max_layer_ratio():
    """round_to rounds a keep count to the nearest multiple, but never below the minimum kept
    (min_keep_fraction) nor, for global, below what max_layer_ratio leaves (both were rounded down)."""
    g = [Group("a", ["a"], 55)]
    s = {"a": torch.arange(55.0)}
    # ratio 0.9 -> keep 5, floored at ceil(0.2 * 55) = 11, to a multiple of 8: 16 (not 8)
    for strategy, extra in (("uniform", {}), ("afie", {"layer_scores": {"a": 1.0}})):
        p = plan_groups(g, s, strategy=strategy, ratio=0.9, min_keep_fraction=0.2, round_to=8, **extra)
        assert len(p.keep["a"]) == 16, strategy
    # global: 17 channels, at most floor(0.5 * 17) = 8 removed -> keep >= 9 -> multiple of 2: 10 (not 8)
    g = [Group("a", ["a"], 17)]
    p = plan_groups(g, {"a": torch.arange(17.0)}, strategy="global", ratio=0.9, max_layer_ratio=0.5, round_to=2)
    assert len(p.keep["a"]) == 10


def test_manual_strategy_and_errors():
    groups = [Group("a", ["a", "a2"], 8), Group("b", ["b"], 4), Group("c", ["c"], 6)]
    s = ones_scores(groups)
    p = plan_groups(groups, s, strategy="manual", ratios={"a2": 0.5, "c": 0.34})
    assert len(p.keep["a"]) == len(p.keep["a2"]) == 4
    assert p.keep["b"].tolist() == [0, 1, 2, 3]  # unnamed: everything kept
    assert len(p.keep["c"]) == 4  # round(0.34 * 6) = 2 removed
    # round_to must not round an unnamed layer's width down (5 -> 4 before the fix)
    p = plan_groups(groups, s, strategy="manual", ratios={"a": 0.5}, round_to=4)
    assert len(p.keep["a"]) == 4 and len(p.keep["b"]) == 4 and len(p.keep["c"]) == 6
    p = plan_groups([Group("d", ["d"], 5), *groups], {**s, "d": torch.rand(5)}, strategy="manual", ratios={"a": 0.5}, round_to=2)
    assert p.keep["d"].tolist() == [0, 1, 2, 3, 4]
    assert p.keep["c"].tolist() == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ConfigError, match="'nope', which is not a planned layer"):
        plan_groups(groups, s, strategy="manual", ratios={"nope": 0.5})
    with pytest.raises(ConfigError, match=r"ratios\['b'\]=1.0 is not allowed"):
        plan_groups(groups, s, strategy="manual", ratios={"b": 1.0})
    with pytest.raises(ConfigError, match=r"ratios\['b'\]=-0.1 is not allowed"):
        plan_groups(groups, s, strategy="manual", ratios={"b": -0.1})
    with pytest.raises(ConfigError, match=r"ratios\['b'\]='half' is not allowed"):
        plan_groups(groups, s, strategy="manual", ratios={"b": "half"})
    with pytest.raises(ConfigError, match="ratios disagree inside the coupled group"):
        plan_groups(groups, s, strategy="manual", ratios={"a": 0.5, "a2": 0.25})
    with pytest.raises(ConfigError, match="needs ratios"):
        plan_groups(groups, s, strategy="manual")


def test_plan_groups_errors():
    groups = [Group("a", ["a"], 4)]
    s = {"a": torch.rand(4)}
    with pytest.raises(ConfigError, match="strategy='flops' is not allowed"):
        plan_groups(groups, s, strategy="flops")  # the pure planner cannot count MACs
    with pytest.raises(ConfigError, match="strategy='magic' is not allowed"):
        plan_groups(groups, s, strategy="magic")
    for bad in (1.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match=rf"ratio={bad!r} is not allowed"):
            plan_groups(groups, s, ratio=bad)
    with pytest.raises(ConfigError, match="round_to=0 is not allowed"):
        plan_groups(groups, s, round_to=0)
    with pytest.raises(ConfigError, match="max_layer_ratio=0 is not allowed"):
        plan_groups(groups, s, strategy="global", max_layer_ratio=0)
    with pytest.raises(ConfigError, match="normalize='z' is not allowed"):
        plan_groups(groups, s, strategy="global", normalize="z")
    with pytest.raises(ConfigError, match="needs scores with layer_scores"):
        plan_groups(groups, s, strategy="afie")
    with pytest.raises(ConfigError, match="positive layer scores"):
        plan_groups(groups, s, strategy="afie", layer_scores={"a": 0.0})
    with pytest.raises(ConfigError, match=r"scores\['a'\] has 3 values but the layer has 4 channels"):
        plan_groups(groups, {"a": torch.rand(3)})
    with pytest.raises(ConfigError, match="no scores for the group"):
        plan_groups(groups, {"b": torch.rand(4)})


def test_plan_from_dict_validation():
    with pytest.raises(ConfigError, match="missing key 'channels'"):
        Plan.from_dict({"keep": {"a": [0]}})
    with pytest.raises(ConfigError, match="no channel count"):
        Plan.from_dict({"keep": {"a": [0]}, "channels": {}})
    for bad in ([], [4], [-1], [1, 1]):
        with pytest.raises(ConfigError, match="must be distinct"):
            Plan.from_dict({"keep": {"a": bad}, "channels": {"a": 4}})


# --------------------------------------------------------------------------------------------------
# on a model
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_vgg():
    torch.manual_seed(0)
    return lp.create_model("cifar_vgg16", 10, width_mult=0.25).eval()


X32 = torch.zeros(1, 3, 32, 32)


@pytest.mark.parametrize("base", ["uniform", "global"])
def test_flops_strategy_reaches_macs_target(small_vgg, base):
    """strategy='flops', ratio=0.5: the pruned model's MACs (torch-pruning's count, measured here
    on the pruned copy) are at most half the original, and within the tolerance (0.01) above it.

    Channel counts are integers, so the reachable reductions are discrete: with ``uniform`` on this
    model they step from 0.498 (channel ratio 0.293) to 0.506 (0.297); the default tolerance
    (0.005) cannot be met there, and the search would run all its 30 bisection steps."""
    scores = lp.score(small_vgg, "l1", progress=False)
    p = lp.plan(small_vgg, scores, strategy="flops", ratio=0.5, example_inputs=X32, base_strategy=base, tolerance=0.01)
    net = copy.deepcopy(small_vgg)
    macs0, _ = count_macs_params(net, X32)
    lp.prune(net, p, X32, measure_latency=False)
    macs1, _ = count_macs_params(net, X32)
    reduction = 1 - macs1 / macs0
    print(f"flops target 0.5 ({base}): MACs {macs0:,} -> {macs1:,}, reduction {reduction:.4f}, channel ratio {p.meta['channel_ratio']:.4f}")
    assert 0.5 <= reduction <= 0.51
    assert p.meta["macs_after"] == macs1 and p.meta["macs_before"] == macs0
    assert p.strategy == "flops" and p.target_ratio == 0.5


def test_afie_plan_on_model_meets_global_ratio(small_vgg):
    s = lp.score(small_vgg, "afie", progress=False)
    assert s.layer_scores and set(s.layer_scores) == set(s)
    p = lp.plan(small_vgg, s, strategy="afie", ratio=0.5, example_inputs=X32)
    total = sum(p.channels.values())
    removed = total - sum(len(k) for k in p.keep.values())
    assert removed == round(0.5 * total)
    # not uniform: the per-layer ratios follow 1 / AFIE
    top = max(s.layer_scores, key=s.layer_scores.get)
    low = min(s.layer_scores, key=s.layer_scores.get)
    assert p.ratios[top] < p.ratios[low]


def test_scores_by_depth_equals_planning_each_half(small_vgg):
    """Per-layer criteria: the first half of the layers by L1, the rest by random; the plan equals
    the union of the L1 plan of the first half and the random plan of the second half."""
    s_l1 = lp.score(small_vgg, "l1", progress=False)
    s_rnd = lp.score(small_vgg, "random", seed=3, progress=False)
    names = list(s_l1)
    half = round(0.5 * len(names))
    per_layer = scores_by_depth([s_l1, s_rnd], split=0.5)
    assert list(per_layer) == names
    assert all(per_layer[n] is s_l1 for n in names[:half]) and all(per_layer[n] is s_rnd for n in names[half:])
    p = lp.plan(small_vgg, per_layer, strategy="uniform", ratio=0.5, example_inputs=X32)
    first = lp.plan(small_vgg, Scores({n: s_l1[n] for n in names[:half]}, "l1"), ratio=0.5, example_inputs=X32)
    second = lp.plan(small_vgg, Scores({n: s_rnd[n] for n in names[half:]}, "random"), ratio=0.5, example_inputs=X32)
    assert list(p.keep) == names
    for n in names:
        expected = first.keep[n] if n in first.keep else second.keep[n]
        assert torch.equal(p.keep[n], expected), n
    assert p.criterion == "l1+random"
    # the second half really follows the random scores (not L1)
    all_l1 = lp.plan(small_vgg, s_l1, ratio=0.5, example_inputs=X32)
    assert any(not torch.equal(all_l1.keep[n], p.keep[n]) for n in names[half:])
    with pytest.raises(ConfigError, match="give 1 split point"):
        scores_by_depth([s_l1, s_rnd], split=[0.3, 0.6])


def test_plan_model_errors(small_vgg):
    s = lp.score(small_vgg, "l1", progress=False)
    with pytest.raises(ConfigError, match="example_inputs is needed"):
        lp.plan(small_vgg, s, ratio=0.5)
    with pytest.raises(ConfigError, match="strategy='bogus' is not allowed"):
        lp.plan(small_vgg, s, strategy="bogus", example_inputs=X32)
    with pytest.raises(ConfigError, match="ratio=1.0 is not allowed"):
        lp.plan(small_vgg, s, ratio=1.0, example_inputs=X32)
    with pytest.raises(ConfigError, match="ratio=1.0 is not allowed"):
        lp.plan(small_vgg, s, strategy="flops", ratio=1.0, example_inputs=X32)
    with pytest.raises(ConfigError, match="scores must be a Scores"):
        lp.plan(small_vgg, {"features.0": torch.rand(16)}, example_inputs=X32)
