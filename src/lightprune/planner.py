"""Planner: importance scores -> per-layer ratios -> kept channel indices (a :class:`Plan`).

The core (:func:`plan_groups`) is a pure function on tensors and dicts; :func:`plan` wraps it for
a model: it finds the prunable layers and the coupled groups (layers whose output channels must be
removed together: residual additions, depthwise convs, ...) with torch-pruning's dependency graph.

**Group scores.** A group's channel importance is the mean of its members' importances (members
share the same channel indices; layers of the group without scores are skipped). Layer-level
scores (AFIE) are averaged the same way.

**Counting.** A group of C channels pruned at ratio r removes ``round(r * C)`` channels
(half-up), keeps at least ``max(1, ceil(min_keep_fraction * C))`` channels, and, with
``round_to=N``, keeps a multiple of N (at least N, at most C). The kept channels are the most
important ones; ties are broken by the lower channel index. Indices are sorted ascending.

Strategies (``strategy=``):

- ``uniform``: the same ratio for every group.
- ``afie``: ``lambda_l = lambda_min * AFIE_max / AFIE_l`` with ``sum_l lambda_l c_l = ratio * sum_l c_l``
  (CRITERIA.md); a layer capped by the minimum it keeps is fixed at its cap and the remaining
  budget is re-spread over the others (repeated until no new cap), so the global ratio still holds.
  Needs ``scores.layer_scores`` (the ``afie`` criterion).
- ``global``: channels of all groups ranked together on layer-normalised importance
  (``normalize="minmax"`` default, or ``"max"``, ``"mean"``, ``"rank"``, ``"none"``), the
  ``round(ratio * total)`` lowest removed, no group losing more than ``max_layer_ratio`` (default 0.9).
- ``flops``: ``ratio`` is read as the target MACs reduction; the global channel ratio of
  ``base_strategy`` (default ``uniform``) is searched (bisection) until the pruned model's MACs
  are at most ``(1 - ratio)`` of the original, counted by torch-pruning on a pruned copy.
- ``params``: the same search, on the parameter count.
- ``manual``: ``ratios={layer: ratio}``; layers not named keep all their channels.

Strategies live in a registry (:func:`register_strategy`, :func:`list_strategies`); the targets
(``flops``, ``params``) are searches on top of a registered strategy.

Per-layer criteria: pass ``scores`` as a mapping ``layer -> Scores`` (see :func:`scores_by_depth`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .collect import find_prunable_layers, not_prunable
from .criteria.base import Scores
from .errors import ConfigError, check_choice, check_fraction, check_positive_int
from .graph import Group, find_groups, group_blockers
from .plan import Plan
from .surgery import count_macs_params, prune

__all__ = [
    "Group", "Plan", "StrategyContext", "TARGETS", "find_groups", "list_strategies", "normalise_importance", "plan",
    "plan_groups", "register_strategy", "scores_by_depth", "STRATEGIES",
]

STRATEGIES = ("uniform", "afie", "global", "flops", "params", "manual")
NORMALIZERS = ("minmax", "max", "mean", "rank", "none")


# --------------------------------------------------------------------------------------------------
# pure core
# --------------------------------------------------------------------------------------------------
def _round_keep(keep: int, channels: int, round_to: int, at_least: int) -> int:
    """``keep`` rounded to a multiple of ``round_to`` (at least ``round_to``, at most ``channels``),
    rounded up instead where rounding down would go below ``at_least``."""
    k = max(round_to, int(round(keep / round_to)) * round_to)
    if k < at_least:
        k = math.ceil(at_least / round_to) * round_to
    return min(channels, k)


def _n_keep(channels: int, ratio: float, min_keep_fraction: float, round_to: int | None) -> int:
    keep = channels - math.floor(ratio * channels + 0.5)
    floor_keep = max(1, math.ceil(min_keep_fraction * channels - 1e-9))
    keep = max(keep, floor_keep)
    if round_to and round_to > 1:
        keep = _round_keep(keep, channels, round_to, floor_keep)
    return min(keep, channels)


def _top(importance: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Indices of the ``n_keep`` largest values, ties -> lower index, returned ascending."""
    imp = importance.double()
    order = sorted(range(imp.numel()), key=lambda i: (-float(imp[i]), i))
    return torch.tensor(sorted(order[:n_keep]), dtype=torch.long)


def _top_grouped(importance: torch.Tensor, n_keep: int, channel_groups: int) -> torch.Tensor:
    """Grouped channels (``channel_groups`` blocks of ``C / G``, feeding a grouped convolution): the
    same positions are kept in every block. A position's importance is its mean over the blocks
    (torch-pruning's rule); ``n_keep`` is rounded half-up to a multiple of ``G`` (at least one
    position per block); the kept positions are the most important ones (ties -> lower position)."""
    c = importance.numel()
    if c % channel_groups:
        raise ConfigError(f"{c} channels cannot be split into {channel_groups} groups of a grouped convolution")
    size = c // channel_groups
    per = min(size, max(1, math.floor(n_keep / channel_groups + 0.5)))
    pos = _top(importance.double().view(channel_groups, size).mean(0), per)
    return torch.cat([pos + b * size for b in range(channel_groups)])


def _group_importance(group: Group, scores: Mapping[str, torch.Tensor]) -> torch.Tensor:
    vals = [scores[m].double() for m in group.members if m in scores]
    if not vals:
        raise ConfigError(f"no scores for the group {group.members}; score these layers or leave them out")
    for m, v in zip([m for m in group.members if m in scores], vals, strict=True):
        if v.numel() != group.channels:
            raise ConfigError(f"scores[{m!r}] has {v.numel()} values but the layer has {group.channels} channels")
    return torch.stack(vals).mean(0)


def _afie_ratios(groups: list[Group], layer_scores: Mapping[str, float], ratio: float, caps: list[float]) -> list[float]:
    afie = []
    for g in groups:
        vals = [layer_scores[m] for m in g.members if m in layer_scores]
        if not vals:
            raise ConfigError(f"strategy='afie' needs layer scores for every layer; missing for {g.members}")
        v = float(sum(vals) / len(vals))
        if not v > 0:
            raise ConfigError(f"AFIE of {g.root!r} is {v}; strategy='afie' needs positive layer scores")
        afie.append(v)
    c = [g.channels for g in groups]
    weight = [max(afie) / a for a in afie]  # lambda_l = lambda_min * weight_l
    budget = ratio * sum(c)
    fixed: dict[int, float] = {}
    while True:
        free = [i for i in range(len(groups)) if i not in fixed]
        left = budget - sum(fixed[i] * c[i] for i in fixed)
        denom = sum(weight[i] * c[i] for i in free)
        lam_min = left / denom if denom > 0 else 0.0
        new = {i: caps[i] for i in free if lam_min * weight[i] > caps[i]}
        if not new:
            return [fixed.get(i, lam_min * weight[i]) for i in range(len(groups))]
        fixed.update(new)
        if len(fixed) == len(groups):
            return [fixed[i] for i in range(len(groups))]


def normalise_importance(v: torch.Tensor, how: str) -> torch.Tensor:
    """Layer normalisation of importance (``NORMALIZERS``): ``minmax`` to [0, 1], divide by the
    ``max`` or ``mean`` absolute value, ``rank`` / (C - 1) (ties: lower index first), or ``none``."""
    v = v.double()
    if how == "minmax":
        rng = v.max() - v.min()
        return (v - v.min()) / rng if rng > 0 else torch.zeros_like(v)
    if how == "max":
        m = v.abs().max()
        return v / m if m > 0 else v
    if how == "mean":
        m = v.abs().mean()
        return v / m if m > 0 else v
    if how == "rank":
        r = torch.empty_like(v)
        r[torch.sort(v, stable=True).indices] = torch.arange(v.numel(), dtype=torch.float64) / max(1, v.numel() - 1)
        return r
    return v


def plan_groups(
    groups: Sequence[Group],
    scores: Mapping[str, torch.Tensor],
    *,
    strategy: str = "uniform",
    ratio: float = 0.5,
    layer_scores: Mapping[str, float] | None = None,
    ratios: Mapping[str, float] | None = None,
    round_to: int | None = None,
    min_keep_fraction: float = 0.01,
    max_layer_ratio: float = 0.9,
    normalize: str = "minmax",
    criterion: str | None = None,
) -> Plan:
    """Pure planner on groups and per-layer importance (no model). ``strategy="flops"`` needs
    :func:`plan` (it measures MACs). See the module docstring for the rules."""
    check_choice("strategy", strategy, list(_STRATEGIES))
    check_fraction("ratio", ratio)
    check_fraction("min_keep_fraction", min_keep_fraction)
    check_fraction("max_layer_ratio", max_layer_ratio, low_open=True)
    check_choice("normalize", normalize, NORMALIZERS)
    if round_to is not None:
        check_positive_int("round_to", round_to)
    groups = list(groups)
    keep_floor = [max(1, math.ceil(min_keep_fraction * g.channels - 1e-9)) for g in groups]
    imp = [_group_importance(g, scores) for g in groups]
    ctx = StrategyContext(groups, imp, float(ratio), keep_floor, min_keep_fraction, round_to, layer_scores)
    fn, declared = _STRATEGIES[strategy]
    given = {"ratios": ratios, "max_layer_ratio": max_layer_ratio, "normalize": normalize}
    n_keep = fn(ctx, **{k: v for k, v in given.items() if k in declared})
    for g, k, floor in zip(groups, n_keep, keep_floor, strict=True):
        if not floor <= k <= g.channels:
            raise ConfigError(f"strategy {strategy!r} keeps {k} channels of {g.root!r}; allowed: {floor} to {g.channels}")

    keep: dict[str, torch.Tensor] = {}
    channels: dict[str, int] = {}
    for g, k, v in zip(groups, n_keep, imp, strict=True):
        idx = _top(v, k) if g.channel_groups <= 1 else _top_grouped(v, k, g.channel_groups)
        for m in g.members:
            keep[m] = idx.clone()
            channels[m] = g.channels
    return Plan(keep, channels, [list(g.members) for g in groups], strategy, float(ratio), criterion)


def _exact_counts(groups, group_ratio, ratio, keep_floor, round_to) -> list[int]:
    """Integer keep counts from real-valued ratios so the total removed is round(ratio * total)."""
    c = [g.channels for g in groups]
    if round_to and round_to > 1:
        return [_n_keep(ci, r, kf / ci, round_to) for ci, r, kf in zip(c, group_ratio, keep_floor, strict=True)]
    target_remove = math.floor(ratio * sum(c) + 0.5)
    want = [r * ci for r, ci in zip(group_ratio, c, strict=True)]
    remove = [min(math.floor(w), ci - kf) for w, ci, kf in zip(want, c, keep_floor, strict=True)]
    # largest remainders get the leftover channels (deterministic: ties by group order)
    order = sorted(range(len(c)), key=lambda i: (-(want[i] - math.floor(want[i])), i))
    short = target_remove - sum(remove)
    for i in order * 2:
        if short <= 0:
            break
        if remove[i] < c[i] - keep_floor[i]:
            remove[i] += 1
            short -= 1
    return [ci - r for ci, r in zip(c, remove, strict=True)]


def _global_counts(groups, imp, ratio, keep_floor, max_layer_ratio, normalize, round_to) -> list[int]:
    c = [g.channels for g in groups]
    limit = [min(ci - kf, math.floor(max_layer_ratio * ci)) for ci, kf in zip(c, keep_floor, strict=True)]
    cand = []
    for gi, v in enumerate(imp):
        nv = normalise_importance(v, normalize)
        cand += [(float(nv[ch]), gi, ch) for ch in range(v.numel())]
    cand.sort()
    target_remove = math.floor(ratio * sum(c) + 0.5)
    removed = [0] * len(c)
    total = 0
    for _, gi, _ch in cand:
        if total >= target_remove:
            break
        if removed[gi] < limit[gi]:
            removed[gi] += 1
            total += 1
    keep = [ci - r for ci, r in zip(c, removed, strict=True)]
    if round_to and round_to > 1:
        keep = [_round_keep(k, ci, round_to, ci - lim) for ci, k, lim in zip(c, keep, limit, strict=True)]
    return keep



# --------------------------------------------------------------------------------------------------
# strategy registry: name -> function(StrategyContext, **options) -> kept channels per group
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StrategyContext:
    """What a strategy sees: the coupled groups (execution order), each group's channel importance,
    the global ratio, the minimum each group keeps, ``min_keep_fraction``, ``round_to`` and the
    layer-level scores (AFIE) when the criterion gives them."""

    groups: list[Group]
    importance: list[torch.Tensor]
    ratio: float
    keep_floor: list[int]
    min_keep_fraction: float
    round_to: int | None
    layer_scores: Mapping[str, float] | None


_STRATEGIES: dict[str, tuple[Callable[..., list[int]], tuple[str, ...]]] = {}


def register_strategy(name: str, options: tuple[str, ...] = ()):
    """Function decorator: register a planning strategy ``fn(ctx: StrategyContext, **options) -> list[int]``
    (channels kept per group, each in ``[ctx.keep_floor[i], groups[i].channels]``). ``options``: the
    names of the planner options the strategy takes as keyword arguments.

    Example::

        >>> @register_strategy("_doc_keep_all")
        ... def keep_all(ctx):
        ...     return [g.channels for g in ctx.groups]
        >>> "_doc_keep_all" in _STRATEGIES
        True
    """

    def deco(fn: Callable[..., list[int]]) -> Callable[..., list[int]]:
        if name in _STRATEGIES and _STRATEGIES[name][0] is not fn:
            raise ConfigError(f"strategy name {name!r} is already registered")
        _STRATEGIES[name] = (fn, tuple(options))
        return fn

    return deco


def list_strategies() -> list[str]:
    """Registered strategy names plus the target searches (``flops``, ``params``)."""
    return sorted([n for n in _STRATEGIES if not n.startswith("_")] + list(TARGETS))


@register_strategy("uniform")
def _uniform(ctx: StrategyContext) -> list[int]:
    return [_n_keep(g.channels, ctx.ratio, ctx.min_keep_fraction, ctx.round_to) for g in ctx.groups]


@register_strategy("afie")
def _afie(ctx: StrategyContext) -> list[int]:
    if not ctx.layer_scores:
        raise ConfigError("strategy='afie' needs scores with layer_scores (score with the 'afie' criterion)")
    caps = [1 - kf / g.channels for kf, g in zip(ctx.keep_floor, ctx.groups, strict=True)]
    group_ratio = _afie_ratios(ctx.groups, ctx.layer_scores, ctx.ratio, caps)
    return _exact_counts(ctx.groups, group_ratio, ctx.ratio, ctx.keep_floor, ctx.round_to)


@register_strategy("global", options=("max_layer_ratio", "normalize"))
def _global(ctx: StrategyContext, max_layer_ratio: float = 0.9, normalize: str = "minmax") -> list[int]:
    return _global_counts(ctx.groups, ctx.importance, ctx.ratio, ctx.keep_floor, max_layer_ratio, normalize, ctx.round_to)


@register_strategy("manual", options=("ratios",))
def _manual(ctx: StrategyContext, ratios: Mapping[str, float] | None = None) -> list[int]:
    if not ratios:
        raise ConfigError("strategy='manual' needs ratios={layer: ratio}")
    root_of = {m: g for g in ctx.groups for m in g.members}
    per_group: dict[str, float] = {}
    for name, r in ratios.items():
        if name not in root_of:
            raise ConfigError(f"ratios names {name!r}, which is not a planned layer; planned layers: {list(root_of)}")
        check_fraction(f"ratios[{name!r}]", r)
        g = root_of[name]
        if g.root in per_group and per_group[g.root] != r:
            raise ConfigError(f"ratios disagree inside the coupled group {g.members}: give one ratio for the group")
        per_group[g.root] = float(r)
    # layers not named keep every channel (round_to must not round their width down)
    return [
        _n_keep(g.channels, per_group[g.root], ctx.min_keep_fraction, ctx.round_to) if g.root in per_group else g.channels
        for g in ctx.groups
    ]

# --------------------------------------------------------------------------------------------------
# model-facing wrapper
# --------------------------------------------------------------------------------------------------
def scores_by_depth(scores: Sequence[Scores], split: Sequence[float] | float = 0.5) -> dict[str, Scores]:
    """Per-layer criteria: the first ``split`` fraction of the layers (execution order) use
    ``scores[0]``, the rest ``scores[1]`` (more scores: give one split point per boundary).

    Example: mutual information for the first half, KL selectivity for the rest (Liu et al.)::

        per_layer = lp.planner.scores_by_depth([s_mi, s_kl], split=0.5)
        lp.plan(model, per_layer, strategy="uniform", ratio=0.5, example_inputs=x)
    """
    splits = [split] if isinstance(split, (int, float)) else list(split)
    if len(splits) != len(scores) - 1:
        raise ConfigError(f"split={split!r}: give {len(scores) - 1} split point(s) for {len(scores)} scores")
    names = list(scores[0])
    for s in scores[1:]:
        if list(s) != names:
            raise ConfigError("scores_by_depth: every Scores must cover the same layers in the same order")
    bounds = [round(f * len(names)) for f in splits] + [len(names)]
    out: dict[str, Scores] = {}
    start = 0
    for s, end in zip(scores, bounds, strict=True):
        for n in names[start:end]:
            out[n] = s
        start = end
    return out


def plan(
    model: nn.Module,
    scores: Scores | Mapping[str, Scores],
    *,
    strategy: str = "uniform",
    ratio: float = 0.5,
    example_inputs: torch.Tensor | None = None,
    base_strategy: str = "uniform",
    tolerance: float = 0.005,
    **options: Any,
) -> Plan:
    """Plan which channels to keep in every scored layer of ``model``.

    Args:
        model: the network (not modified).
        scores: :class:`Scores` (one criterion), or ``{layer: Scores}`` (per-layer criteria, see
            :func:`scores_by_depth`). Only scored layers are planned.
        strategy: a registered strategy (``uniform``, ``afie``, ``global``, ``manual``; see
            :func:`list_strategies` and :func:`register_strategy`) or a target search: ``flops``
            (MACs) or ``params`` (parameter count).
        ratio: fraction of channels removed (targets: fraction of MACs / parameters removed), in [0, 1).
        example_inputs: an input batch (e.g. ``torch.zeros(1, 3, 32, 32)``); needed to find the
            coupled groups and, for ``flops``, to count MACs.
        base_strategy: the strategy whose global ratio ``flops`` searches, default ``uniform``.
        tolerance: ``flops`` stops when the MACs reduction is within this of ``ratio`` (default 0.005).
        **options: ``ratios`` (manual), ``round_to``, ``min_keep_fraction`` (0.01),
            ``max_layer_ratio`` (0.9, global), ``normalize`` (global).

    Returns:
        :class:`Plan`.

    Raises:
        ConfigError: bad strategy, ratio, options, missing example inputs or scores.
    """
    if strategy not in _STRATEGIES and strategy not in TARGETS:
        check_choice("strategy", strategy, list_strategies())
    if example_inputs is None:
        raise ConfigError("example_inputs is needed to find coupled layers: pass e.g. torch.zeros(1, 3, 32, 32)")
    per_layer, criterion, layer_scores = _flatten_scores(scores)
    # scores made without inputs may cover a layer the trace shows to be an output layer (a second
    # head, a conv classifier): such layers are left out of the plan (meta["not_planned"]), never pruned
    skipped = {n: why for n, why in not_prunable(model, example_inputs).items() if n in per_layer}
    per_layer = {n: v for n, v in per_layer.items() if n not in skipped}
    layers = find_prunable_layers(model, example_inputs, [n for n in per_layer])
    groups = find_groups(model, example_inputs, layers)
    # groups whose channels reach attention internals, an output layer or an unwrapped parameter stay whole
    blocked = group_blockers(model, example_inputs, groups, find_prunable_layers(model, example_inputs))
    for g in groups:
        if g.root in blocked:
            skipped.update({m: f"its group ({g.root!r}) is left whole: {blocked[g.root]}" for m in g.members})
    groups = [g for g in groups if g.root not in blocked]
    if not groups:
        raise ConfigError(f"no layer of the model can be planned: {skipped}")
    per_layer = {n: v for n, v in per_layer.items() if n not in skipped}
    if strategy not in TARGETS:
        p = plan_groups(groups, per_layer, strategy=strategy, ratio=ratio, layer_scores=layer_scores, criterion=criterion, **options)
        p.meta["input_shape"] = [1, *example_inputs.shape[1:]]
        if skipped:
            p.meta["not_planned"] = skipped
        return p
    return _target_search(model, example_inputs, groups, per_layer, layer_scores, criterion, strategy, ratio,
                          base_strategy, tolerance, options, skipped)


def _macs(model: nn.Module, x: torch.Tensor) -> float:
    return float(count_macs_params(model, x)[0])


def _params(model: nn.Module, x: torch.Tensor) -> float:
    return float(count_macs_params(model, x)[1])


#: target searches: ``strategy=<name>`` reads ``ratio`` as the reduction of this measure
TARGETS: dict[str, Callable[[nn.Module, torch.Tensor], float]] = {"flops": _macs, "params": _params}


def _target_search(model, example_inputs, groups, per_layer, layer_scores, criterion, target_name, ratio,
                   base_strategy, tolerance, options, skipped=None) -> Plan:
    """Bisection on the global channel ratio of ``base_strategy`` until ``measure(pruned copy)`` is at
    most ``(1 - ratio)`` of the original (channel counts are discrete: stops on a bracket < 1e-3)."""
    check_fraction("ratio", ratio)
    check_choice("base_strategy", base_strategy, [n for n in _STRATEGIES if n != "manual" and not n.startswith("_")])
    measure = TARGETS[target_name]
    value0 = measure(model, example_inputs)
    target = value0 * (1 - ratio)

    def at(r: float) -> tuple[float, Plan]:
        p = plan_groups(groups, per_layer, strategy=base_strategy, ratio=r, layer_scores=layer_scores, criterion=criterion, **options)
        clone = copy.deepcopy(model)
        prune(clone, p, example_inputs, measure_latency=False)
        return measure(clone, example_inputs), p

    lo, hi = 0.0, 0.99
    best = plan_groups(groups, per_layer, strategy=base_strategy, ratio=0.0, layer_scores=layer_scores, criterion=criterion, **options)
    best_value = value0
    for _ in range(30):
        mid = (lo + hi) / 2
        v, p = at(mid)
        if v <= target:
            hi, best, best_value = mid, p, v
        else:
            lo = mid
        if best_value <= target and (best_value - target) / value0 > -tolerance:
            break
        if hi - lo < 1e-3:
            break
    if best_value > target:
        reachable = 1 - at(0.99)[0] / value0
        raise ConfigError(
            f"strategy={target_name!r}: a reduction of {ratio} cannot be reached with {base_strategy!r}; "
            f"the most it reaches is {reachable:.3f}"
        )
    unit = {"flops": "macs"}.get(target_name, target_name)
    if skipped:
        best.meta["not_planned"] = skipped
    best.strategy = target_name
    best.meta["input_shape"] = [1, *example_inputs.shape[1:]]
    best.target_ratio = float(ratio)
    best.meta.update({"base_strategy": base_strategy, "channel_ratio": hi, f"{unit}_before": value0, f"{unit}_after": best_value})
    return best


def _flatten_scores(scores) -> tuple[dict[str, torch.Tensor], str | None, dict[str, float] | None]:
    if isinstance(scores, Scores):
        return dict(scores.items()), scores.criterion, scores.layer_scores
    if isinstance(scores, Mapping) and all(isinstance(v, Scores) for v in scores.values()):
        per_layer = {n: s[n] for n, s in scores.items()}
        names = sorted({s.criterion for s in scores.values()})
        ls = {n: s.layer_scores[n] for n, s in scores.items() if s.layer_scores and n in s.layer_scores}
        return per_layer, "+".join(names), ls or None
    raise ConfigError("scores must be a Scores or a mapping {layer: Scores}")
