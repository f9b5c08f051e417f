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
important ones; **ties are broken by a secondary key, the L1 norm of the filter** (``sum |W_i|``
over the channel's weights, averaged over a group's members; :func:`plan` fills it in from the
model, the pure :func:`plan_groups` takes it as ``tiebreak=``): among equal importances the channel
with the smaller filter goes first, so a dead channel (zero filter, all-zero output) is removed
before live channels it ties with (feature entropy's minimum, KL selectivity / labeled MI of
class-independent units, AFIE's per-layer constant). Remaining ties: the lower channel index is
kept. Indices are sorted ascending.

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
- ``latency``: ``ratio`` is read as the target reduction of the *measured* latency on the device,
  dtype, batch size and input size named by the ``latency_*`` options (:func:`plan` lists them).
  A per-layer latency table (:mod:`lightprune.latency`, cached on disk) predicts the latency of a
  plan; a greedy search removes, step by step, the channels with the least importance lost per
  millisecond saved until the prediction meets the target; the pruned network is then measured
  (shared timer) and, if the measured reduction misses ``ratio`` by more than
  ``latency_tolerance``, the search is repeated with a corrected target (``latency_refine`` times).
  ``plan.meta`` holds the predicted and measured latencies of every round.
- ``manual``: ``ratios={layer: ratio}``; layers not named keep all their channels.

**Rounding.** ``round_to="auto"`` (the default of :func:`plan`) is 8 on CUDA with float16 /
bfloat16 (tensor cores) and 1 (no rounding) otherwise, for the device of ``example_inputs`` (or
``latency_device``) and the dtype of the model (or ``latency_dtype``); see
:func:`lightprune.latency.auto_round_to`.

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

from . import latency as lat
from .collect import find_prunable_layers, not_prunable, select_layers
from .criteria.base import Scores
from .errors import ConfigError, check_choice, check_fraction, check_positive_int
from .evaluation import measure_latency as evaluation_latency
from .graph import Group, find_groups, group_blockers
from .plan import Plan
from .surgery import count_macs_params, prune

__all__ = [
    "Group", "Plan", "StrategyContext", "TARGETS", "find_groups", "list_strategies", "normalise_importance", "plan",
    "plan_groups", "register_strategy", "scores_by_depth", "STRATEGIES",
]

STRATEGIES = ("uniform", "afie", "global", "flops", "params", "latency", "manual")
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


def _top(importance: torch.Tensor, n_keep: int, secondary: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of the ``n_keep`` largest values, ties -> larger ``secondary`` (filter L1), then lower
    index; returned ascending."""
    imp = importance.double()
    sec = secondary.double() if secondary is not None else torch.zeros_like(imp)
    order = sorted(range(imp.numel()), key=lambda i: (-float(imp[i]), -float(sec[i]), i))
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


def filter_l1(module: nn.Module) -> torch.Tensor:
    """The tie-break key: L1 norm of each output channel's weights, (C,) float64 (CRITERIA.md, Planner)."""
    w = module.weight.detach().double()
    return w.abs().reshape(w.shape[0], -1).sum(1).cpu()


def _group_tiebreak(group: Group, tiebreak: Mapping[str, torch.Tensor] | None) -> torch.Tensor | None:
    vals = [tiebreak[m].double() for m in group.members if tiebreak and m in tiebreak
            and tiebreak[m].numel() == group.channels]
    return torch.stack(vals).mean(0) if vals else None


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
    tiebreak: Mapping[str, torch.Tensor] | None = None,
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
        idx = _top(v, k, _group_tiebreak(g, tiebreak)) if g.channel_groups <= 1 else _top_grouped(v, k, g.channel_groups)
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
    """Registered strategy names plus the target searches (``flops``, ``params``, ``latency``)."""
    return sorted([n for n in _STRATEGIES if not n.startswith("_")] + list(TARGETS) + ["latency"])


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
    layers: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    layer_types: str | Sequence[str] | None = None,
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
        layers, exclude, layer_types: plan only these of the scored layers (names or glob patterns,
            names or patterns left out, ``"conv"`` / ``"linear"``;
            :func:`lightprune.collect.select_layers`); the others keep every channel.
        **options: ``ratios`` (manual), ``round_to`` (an int, None, or ``"auto"``, the default: 8
            on CUDA float16/bfloat16, else 1), ``min_keep_fraction`` (0.01),
            ``max_layer_ratio`` (0.9, global and latency), ``normalize`` (global), ``head_ratio``
            (fraction of the heads of every head-prunable attention module removed, whole heads, scored
            by their weights' L1 norm; :mod:`lightprune.attention`): ``"auto"`` (default) is ``ratio``
            for ``uniform`` / ``global`` / ``afie`` and 0 (every head kept) for the others; the
            ``flops`` / ``params`` searches keep the heads fixed and search the channel ratio.
            ``latency`` options: ``latency_batch_size`` (default: the batch of ``example_inputs``),
            ``latency_input_size`` (int or (H, W); default: that of ``example_inputs``),
            ``latency_device`` (default: that of ``example_inputs``), ``latency_dtype`` (default: the
            model's), ``latency_threads``, ``latency_runs`` (10, per measurement), ``latency_warmup`` (3),
            ``latency_tolerance`` (0.02: allowed gap between measured and target reduction),
            ``latency_refine`` (3: corrected re-searches), ``latency_verify`` (True: measure the
            pruned network), ``latency_cache_dir``, ``latency_cache`` (True), ``latency_grid``,
            ``latency_stat`` (``"median"``, or ``"min"``: more robust on a loaded machine),
            ``latency_table`` (a prebuilt :class:`lightprune.latency.LatencyTable`), ``latency_measure``
            (``fn(module, x) -> ms`` replacing the shared timer's median, for tests).

    Returns:
        :class:`Plan`.

    Raises:
        ConfigError: bad strategy, ratio, options, missing example inputs or scores.
    """
    if strategy not in _STRATEGIES and strategy not in TARGETS and strategy != "latency":
        check_choice("strategy", strategy, list_strategies())
    if example_inputs is None:
        raise ConfigError("example_inputs is needed to find coupled layers: pass e.g. torch.zeros(1, 3, 32, 32)")
    latency_opts = {k: options.pop(k) for k in list(options) if k.startswith("latency_")}
    if latency_opts and strategy != "latency":
        raise ConfigError(f"options {sorted(latency_opts)} are only for strategy='latency'")
    head_ratio = options.pop("head_ratio", "auto")
    if head_ratio == "auto":
        head_ratio = ratio if strategy in HEAD_RATIO_STRATEGIES else 0.0
    elif not isinstance(head_ratio, (int, float)) or isinstance(head_ratio, bool):
        raise ConfigError(f"head_ratio={head_ratio!r} is not allowed; give a fraction in [0, 1) or 'auto'")
    check_fraction("head_ratio", head_ratio)
    if head_ratio and strategy == "latency":
        raise ConfigError(f"head_ratio={head_ratio} is not supported with strategy='latency' (its latency table "
                          "covers channels only); pass head_ratio=0")
    heads, num_heads, head_skipped = plan_heads(model, head_ratio)
    options["round_to"] = _resolve_round_to(model, example_inputs, options.get("round_to", "auto"), latency_opts)
    per_layer, criterion, layer_scores = _flatten_scores(scores)
    # scores made without inputs may cover a layer the trace shows to be an output layer (a second
    # head, a conv classifier): such layers are left out of the plan (meta["not_planned"]), never pruned
    skipped = {n: why for n, why in not_prunable(model, example_inputs).items() if n in per_layer}
    per_layer = {n: v for n, v in per_layer.items() if n not in skipped}
    found = find_prunable_layers(model, example_inputs, [n for n in per_layer])
    if layers is not None or exclude is not None or layer_types is not None:
        found = select_layers(found, layers, exclude, layer_types)
        per_layer = {n: v for n, v in per_layer.items() if n in found}
        if layer_scores:
            layer_scores = {n: v for n, v in layer_scores.items() if n in found}
    # layers whose channels reach attention internals or an output layer stay whole (with their coupled
    # group: the check is symmetric). Checked per layer on one channel *before* the full groups are
    # derived: on Swin, the full-width groups of the residual stream (every window reshape expands the
    # index sets) are what took torch-pruning minutes, and they are never planned.
    one = [Group(n, [n], info.out_channels) for n, info in found.items()]
    blocked = group_blockers(model, example_inputs, one, find_prunable_layers(model, example_inputs))
    skipped.update({n: f"it is left whole: {why}" for n, why in blocked.items()})
    found = {n: info for n, info in found.items() if n not in blocked}
    groups = find_groups(model, example_inputs, found, skipped) if found else []
    if not groups and not heads:
        raise ConfigError(f"no layer of the model can be planned: {skipped}")
    per_layer = {n: v for n, v in per_layer.items() if n not in skipped}
    options.setdefault("tiebreak", {n: filter_l1(info.module) for n, info in found.items()})
    if strategy == "latency":
        return _latency_target(model, example_inputs, groups, per_layer, criterion, ratio, options, latency_opts)
    if strategy not in TARGETS:
        p = plan_groups(groups, per_layer, strategy=strategy, ratio=ratio, layer_scores=layer_scores, criterion=criterion, **options)
        p.meta["input_shape"] = [1, *example_inputs.shape[1:]]
        if skipped:
            p.meta["not_planned"] = skipped
        _add_heads(p, heads, num_heads, head_ratio, head_skipped)
        return p
    return _target_search(model, example_inputs, groups, per_layer, layer_scores, criterion, strategy, ratio,
                          base_strategy, tolerance, options, skipped, (heads, num_heads, head_ratio, head_skipped))


#: strategies whose ``ratio`` is a channel fraction: ``head_ratio="auto"`` prunes heads at that ratio
HEAD_RATIO_STRATEGIES = ("uniform", "global", "afie")


def plan_heads(model: nn.Module, head_ratio: float) -> tuple[dict[str, torch.Tensor], dict[str, int], dict[str, str]]:
    """Whole heads to keep in every head-prunable attention module at ``head_ratio``
    (:mod:`lightprune.attention`: L1 head scores, ``round(head_ratio * H)`` heads removed, half-up, at
    least one kept). Returns ``(kept heads, heads before, {attention module: why its heads are kept})``."""
    from .attention import find_attention, head_scores, head_unprunable, heads_to_keep

    if not head_ratio:
        return {}, {}, {}
    heads, num_heads = {}, {}
    for name, info in find_attention(model).items():
        heads[name] = heads_to_keep(head_scores(info), head_ratio)
        num_heads[name] = info.num_heads
    return heads, num_heads, head_unprunable(model)


def _add_heads(p: Plan, heads, num_heads, head_ratio, head_skipped) -> Plan:
    p.heads, p.num_heads = {n: k.clone() for n, k in heads.items()}, dict(num_heads)
    if heads or head_skipped:
        p.meta["head_ratio"] = float(head_ratio)
    if head_skipped:
        p.meta["heads_not_planned"] = dict(head_skipped)
    return p


def _macs(model: nn.Module, x: torch.Tensor) -> float:
    return float(count_macs_params(model, x)[0])


def _params(model: nn.Module, x: torch.Tensor) -> float:
    return float(count_macs_params(model, x)[1])


#: target searches: ``strategy=<name>`` reads ``ratio`` as the reduction of this measure
TARGETS: dict[str, Callable[[nn.Module, torch.Tensor], float]] = {"flops": _macs, "params": _params}


def _target_search(model, example_inputs, groups, per_layer, layer_scores, criterion, target_name, ratio,
                   base_strategy, tolerance, options, skipped=None, head_plan=None) -> Plan:
    """Bisection on the global channel ratio of ``base_strategy`` until ``measure(pruned copy)`` is at
    most ``(1 - ratio)`` of the original (channel counts are discrete: stops on a bracket < 1e-3)."""
    check_fraction("ratio", ratio)
    check_choice("base_strategy", base_strategy, [n for n in _STRATEGIES if n != "manual" and not n.startswith("_")])
    measure = TARGETS[target_name]
    value0 = measure(model, example_inputs)
    target = value0 * (1 - ratio)

    def at(r: float) -> tuple[float, Plan]:
        p = plan_groups(groups, per_layer, strategy=base_strategy, ratio=r, layer_scores=layer_scores, criterion=criterion, **options)
        if head_plan:
            _add_heads(p, *head_plan)  # the heads are fixed; the search is on the channel ratio
        clone = copy.deepcopy(model)
        prune(clone, p, example_inputs, measure_latency=False)
        return measure(clone, example_inputs), p

    lo, hi = 0.0, 0.99
    best = plan_groups(groups, per_layer, strategy=base_strategy, ratio=0.0, layer_scores=layer_scores, criterion=criterion, **options)
    if head_plan:
        _add_heads(best, *head_plan)
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


# --------------------------------------------------------------------------------------------------
# latency target
# --------------------------------------------------------------------------------------------------
def _latency_setting(model: nn.Module, example_inputs: torch.Tensor, opts: Mapping[str, Any]):
    p = next(iter(model.parameters()), None)
    device = torch.device(opts.get("latency_device") or example_inputs.device)
    dtype = lat.parse_dtype(opts.get("latency_dtype"), p.dtype if p is not None else torch.float32)
    return device, dtype


def _resolve_round_to(model, example_inputs, round_to, latency_opts) -> int | None:
    if round_to == "auto":
        device, dtype = _latency_setting(model, example_inputs, latency_opts)
        round_to = lat.auto_round_to(device, dtype)
    if round_to is None:
        return None
    check_positive_int("round_to", round_to)
    return None if round_to == 1 else int(round_to)


LATENCY_OPTIONS = ("latency_batch_size", "latency_input_size", "latency_device", "latency_dtype", "latency_threads",
                   "latency_runs", "latency_warmup", "latency_tolerance", "latency_refine", "latency_verify",
                   "latency_cache_dir", "latency_cache", "latency_grid", "latency_table", "latency_measure", "latency_stat")


def _latency_target(model, example_inputs, groups, per_layer, criterion, ratio, options, opts) -> Plan:
    """The ``latency`` target (module docstring): table -> greedy search -> measure -> refine."""
    check_fraction("ratio", ratio)
    unknown = sorted(set(opts) - set(LATENCY_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown latency option(s) {unknown}; allowed: {', '.join(LATENCY_OPTIONS)}")
    allowed = {"round_to", "min_keep_fraction", "max_layer_ratio", "tiebreak"}
    tiebreak = options.get("tiebreak")
    extra = sorted(set(options) - allowed)
    if extra:
        raise ConfigError(f"strategy='latency' does not take {extra}; it takes {sorted(allowed)} and the latency_* options")
    round_to = options.get("round_to")
    min_keep = options.get("min_keep_fraction", 0.01)
    max_layer_ratio = options.get("max_layer_ratio", 0.9)
    check_fraction("min_keep_fraction", min_keep)
    check_fraction("max_layer_ratio", max_layer_ratio, low_open=True)
    device, dtype = _latency_setting(model, example_inputs, opts)
    batch = check_positive_int("latency_batch_size", opts.get("latency_batch_size") or int(example_inputs.shape[0]))
    size = opts.get("latency_input_size")
    x = example_inputs[:1]
    if size is not None:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if x.ndim != 4 or len(hw) != 2:
            raise ConfigError(f"latency_input_size={size!r} is not allowed; give an int or (H, W) for image inputs")
        x = torch.zeros(1, x.shape[1], *hw, dtype=x.dtype, device=x.device)
    runs = check_positive_int("latency_runs", opts.get("latency_runs", 10))
    warmup = int(opts.get("latency_warmup", 3))
    threads = opts.get("latency_threads")
    tol = float(opts.get("latency_tolerance", 0.02))
    refine = int(opts.get("latency_refine", 3))
    measure = user_measure = opts.get("latency_measure")
    stat = opts.get("latency_stat", "median")
    check_choice("latency_stat", stat, ("median", "min"))
    if measure is None:
        def measure(mod, inp):
            return getattr(evaluation_latency(mod, inp, runs=runs, warmup=warmup, threads=threads), f"{stat}_ms")
    table = opts.get("latency_table")
    if table is None:
        table = lat.build_latency_table(
            model, x, groups, batch_size=batch, device=device, dtype=dtype, threads=threads, runs=runs, warmup=warmup,
            grid=opts.get("latency_grid", lat.DEFAULT_GRID), round_to=round_to,
            cache=opts.get("latency_cache", True), cache_path=opts.get("latency_cache_dir"), measure=measure, stat=stat)
    imp = [_group_importance(g, per_layer) for g in groups]
    keep_floor = [max(1, math.ceil(min_keep * g.channels - 1e-9)) for g in groups]
    full = [g.channels for g in groups]
    full_pred = table.predict(full, full)
    goal = full_pred * (1 - ratio)

    def search(target_ms, first):
        keep, pred = lat.greedy_search(table, imp, target_ms, keep_floor=keep_floor,
                                       max_layer_ratio=max_layer_ratio, round_to=round_to)
        if pred > target_ms + 1e-9 and first:  # a corrected target out of reach: the narrowest plan is tried
            raise ConfigError(
                f"strategy='latency': a reduction of {ratio} cannot be reached (max_layer_ratio={max_layer_ratio}, "
                f"min_keep_fraction={min_keep}); the best reachable reduction is {1 - pred / full_pred:.3f} "
                f"(predicted {pred:.3f} of {full_pred:.3f} ms)")
        return keep, pred

    def to_plan(keep):
        kept: dict[str, torch.Tensor] = {}
        channels: dict[str, int] = {}
        for g, k, v in zip(groups, keep, imp, strict=True):
            idx = _top(v, k, _group_tiebreak(g, tiebreak))
            for m in g.members:
                kept[m], channels[m] = idx.clone(), g.channels
        return Plan(kept, channels, [list(g.members) for g in groups], "latency", float(ratio), criterion)

    verify = opts.get("latency_verify", True)
    target_ms = goal
    rounds = []
    best = None
    measured_full = table.full_ms if table.full_ms is not None else full_pred
    for i in range(1 + (refine if verify else 0)):
        keep, pred = search(target_ms, i == 0)
        p = to_plan(keep)
        rec = {"target_ms": target_ms, "predicted_ms": pred, "predicted_reduction": 1 - pred / full_pred}
        if verify:
            clone = copy.deepcopy(model)
            prune(clone, p, example_inputs, measure_latency=False)
            # the original and the pruned copy timed with their runs interleaved: the reduction is the
            # median of per-round ratios (a drifting machine load cancels out)
            m0, m, red = lat.measure_pair(model, clone, x, batch, device, dtype, measure=user_measure,
                                          runs=runs, warmup=warmup, threads=threads, stat=stat)
            rec.update({"measured_before_ms": m0, "measured_ms": m, "measured_reduction": red})
        rounds.append(rec)
        err = abs(rec.get("measured_reduction", rec["predicted_reduction"]) - ratio)
        if best is None or err < best[0]:
            best = (err, p, rec)
        if not verify or err <= tol:
            break
        # corrected target: scale the predicted target by how far the measured remaining fraction
        # landed from the goal (damped to x0.7 .. x1.3 per round against measurement noise)
        factor = (1 - ratio) / max(1e-9, 1 - rec["measured_reduction"])
        target_ms = target_ms * min(1.3, max(0.7, factor))
    err, p, rec = best
    p.meta.update({
        "latency_target_met": bool(err <= tol), "latency_tolerance": tol,
        "input_shape": [1, *example_inputs.shape[1:]],
        "latency_setting": {"device": str(device), "device_name": lat.device_name(device), "dtype": str(dtype),
                            "batch_size": batch, "input_shape": list(x.shape[1:]),
                            "threads": threads or torch.get_num_threads(), "runs": runs, "stat": stat},
        "latency_before_ms": rec.get("measured_before_ms", measured_full), "latency_predicted_ms": rec["predicted_ms"],
        "latency_measured_ms": rec.get("measured_ms"), "latency_predicted_reduction": rec["predicted_reduction"],
        "latency_measured_reduction": rec.get("measured_reduction"), "latency_rounds": rounds,
        "latency_table": {"layers": len(table.layers), "measured": table.measured_layers, "cached": table.cached_layers},
        "round_to": round_to or 1,
    })
    return p
