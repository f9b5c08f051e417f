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
- ``manual``: ``ratios={layer: ratio}``; layers not named keep all their channels.

Per-layer criteria: pass ``scores`` as a mapping ``layer -> Scores`` (see :func:`scores_by_depth`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .collect import PrunableLayer, find_prunable_layers
from .criteria.base import Scores
from .errors import ConfigError, check_choice, check_fraction, check_positive_int

__all__ = ["Group", "Plan", "find_groups", "normalise_importance", "plan", "plan_groups", "scores_by_depth", "STRATEGIES"]

STRATEGIES = ("uniform", "afie", "global", "flops", "manual")
NORMALIZERS = ("minmax", "max", "mean", "rank", "none")


@dataclass
class Group:
    """Prunable layers whose output channels are removed together (same indices).

    Attributes:
        root: the first member in execution order (torch-pruning's root for the group).
        members: every prunable layer of the group, root first.
        channels: number of channels the members share.
    """

    root: str
    members: list[str]
    channels: int


def _out_fn(tp, module: nn.Module):
    return tp.prune_conv_out_channels if isinstance(module, nn.Conv2d) else tp.prune_linear_out_channels


def dependency_graph(model: nn.Module, example_inputs: torch.Tensor):
    """torch-pruning DependencyGraph of ``model`` (built with autograd on, whatever the caller's mode)."""
    import torch_pruning as tp

    with torch.inference_mode(False), torch.enable_grad():
        x = example_inputs.detach().clone()
        was_training = model.training
        model.eval()
        try:
            return tp.DependencyGraph().build_dependency(model, example_inputs=x)
        finally:
            model.train(was_training)


def find_groups(model: nn.Module, example_inputs: torch.Tensor, layers: Mapping[str, PrunableLayer]) -> list[Group]:
    """Coupled groups among ``layers`` (every layer is in exactly one group), in execution order."""
    import torch_pruning as tp

    dg = dependency_graph(model, example_inputs)
    names = {m: n for n, m in model.named_modules()}
    seen: set[str] = set()
    groups: list[Group] = []
    for name, layer in layers.items():
        if name in seen:
            continue
        g = dg.get_pruning_group(layer.module, _out_fn(tp, layer.module), list(range(layer.out_channels)))
        members = [name]
        for item in g:
            other = names.get(item.dep.target.module)
            if dg.is_out_channel_pruning_fn(item.dep.handler) and other in layers and other != name:
                if list(item.idxs) != list(item.root_idxs):
                    raise ConfigError(f"layers {name!r} and {other!r} are coupled with a channel permutation; unsupported")
                if other not in members:
                    members.append(other)
        seen.update(members)
        groups.append(Group(name, members, layer.out_channels))
    return groups


@dataclass
class Plan:
    """Which channels every prunable layer keeps.

    Attributes:
        keep: ``{layer: LongTensor of kept channel indices, ascending}`` for every planned layer.
        channels: ``{layer: channels before pruning}``.
        groups: member lists of the coupled groups (root first).
        strategy, target_ratio, criterion: how the plan was made.
        meta: plain-data extras.
    """

    keep: dict[str, torch.Tensor]
    channels: dict[str, int]
    groups: list[list[str]]
    strategy: str = "manual"
    target_ratio: float | None = None
    criterion: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ratios(self) -> dict[str, float]:
        """``{layer: fraction of its channels removed}``."""
        return {n: 1 - len(k) / self.channels[n] for n, k in self.keep.items()}

    @property
    def global_ratio(self) -> float:
        """Fraction of all planned channels removed."""
        total = sum(self.channels.values())
        return 1 - sum(len(k) for k in self.keep.values()) / total if total else 0.0

    def removed(self, layer: str) -> list[int]:
        """Indices removed from ``layer``."""
        kept = set(self.keep[layer].tolist())
        return [i for i in range(self.channels[layer]) if i not in kept]

    def to_dict(self) -> dict[str, Any]:
        """Plain data (ints, floats, strings, lists): YAML/JSON-safe and weights_only-safe."""
        return {
            "keep": {n: [int(i) for i in k.tolist()] for n, k in self.keep.items()},
            "channels": {n: int(c) for n, c in self.channels.items()},
            "groups": [list(g) for g in self.groups],
            "strategy": self.strategy,
            "target_ratio": self.target_ratio,
            "criterion": self.criterion,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        """Inverse of :meth:`to_dict`; validates the indices."""
        try:
            keep = {n: torch.tensor(sorted(int(i) for i in k), dtype=torch.long) for n, k in data["keep"].items()}
            channels = {n: int(c) for n, c in data["channels"].items()}
        except KeyError as err:
            raise ConfigError(f"Plan.from_dict: missing key {err}; expected 'keep' and 'channels'") from None
        for n, k in keep.items():
            if n not in channels:
                raise ConfigError(f"Plan.from_dict: layer {n!r} has kept indices but no channel count")
            if len(k) == 0 or k.min() < 0 or k.max() >= channels[n] or len(set(k.tolist())) != len(k):
                raise ConfigError(f"Plan.from_dict: kept indices of {n!r} must be distinct, in [0, {channels[n]}) and not empty")
        return cls(
            keep, channels, [list(g) for g in data.get("groups", [[n] for n in keep])],
            data.get("strategy", "manual"), data.get("target_ratio"), data.get("criterion"), dict(data.get("meta") or {}),
        )

    def __str__(self) -> str:
        head = f"Plan(strategy={self.strategy!r}, criterion={self.criterion!r}, target={self.target_ratio}, removed={self.global_ratio:.3f})"
        rows = [head, f"  {'layer':<34}{'before':>7}{'after':>7}{'ratio':>8}  group"]
        root_of = {m: g[0] for g in self.groups for m in g}
        for n, k in self.keep.items():
            grp = "" if root_of.get(n, n) == n and len(next((g for g in self.groups if g[0] == n), [n])) == 1 else f"<- {root_of.get(n, n)}" if root_of.get(n, n) != n else "root"
            rows.append(f"  {n:<34}{self.channels[n]:>7}{len(k):>7}{self.ratios[n]:>8.3f}  {grp}")
        return "\n".join(rows)

    __repr__ = __str__


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
    check_choice("strategy", strategy, [s for s in STRATEGIES if s != "flops"])
    check_fraction("ratio", ratio)
    check_fraction("min_keep_fraction", min_keep_fraction)
    check_fraction("max_layer_ratio", max_layer_ratio, low_open=True)
    check_choice("normalize", normalize, NORMALIZERS)
    if round_to is not None:
        check_positive_int("round_to", round_to)
    groups = list(groups)
    keep_floor = [max(1, math.ceil(min_keep_fraction * g.channels - 1e-9)) for g in groups]
    caps = [1 - kf / g.channels for kf, g in zip(keep_floor, groups, strict=True)]
    imp = [_group_importance(g, scores) for g in groups]

    if strategy == "uniform":
        group_ratio = [ratio] * len(groups)
        n_keep = [_n_keep(g.channels, r, min_keep_fraction, round_to) for g, r in zip(groups, group_ratio, strict=True)]
    elif strategy == "afie":
        if not layer_scores:
            raise ConfigError("strategy='afie' needs scores with layer_scores (score with the 'afie' criterion)")
        group_ratio = _afie_ratios(groups, layer_scores, ratio, caps)
        n_keep = _exact_counts(groups, group_ratio, ratio, keep_floor, round_to)
    elif strategy == "global":
        n_keep = _global_counts(groups, imp, ratio, keep_floor, max_layer_ratio, normalize, round_to)
    else:  # manual
        if not ratios:
            raise ConfigError("strategy='manual' needs ratios={layer: ratio}")
        root_of = {m: g for g in groups for m in g.members}
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
        n_keep = [_n_keep(g.channels, per_group[g.root], min_keep_fraction, round_to) if g.root in per_group else g.channels for g in groups]

    keep: dict[str, torch.Tensor] = {}
    channels: dict[str, int] = {}
    for g, k, v in zip(groups, n_keep, imp, strict=True):
        idx = _top(v, k)
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
        strategy: one of ``uniform``, ``afie``, ``global``, ``flops``, ``manual``.
        ratio: fraction of channels removed (``flops``: fraction of MACs removed), in [0, 1).
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
    check_choice("strategy", strategy, STRATEGIES)
    if example_inputs is None:
        raise ConfigError("example_inputs is needed to find coupled layers: pass e.g. torch.zeros(1, 3, 32, 32)")
    per_layer, criterion, layer_scores = _flatten_scores(scores)
    layers = find_prunable_layers(model, example_inputs, [n for n in per_layer])
    groups = find_groups(model, example_inputs, layers)
    if strategy != "flops":
        p = plan_groups(groups, per_layer, strategy=strategy, ratio=ratio, layer_scores=layer_scores, criterion=criterion, **options)
        p.meta["input_shape"] = [1, *example_inputs.shape[1:]]
        return p

    check_fraction("ratio", ratio)
    check_choice("base_strategy", base_strategy, ("uniform", "afie", "global"))
    from .surgery import count_macs_params, prune

    macs0, _ = count_macs_params(model, example_inputs)
    target = macs0 * (1 - ratio)

    def macs_at(r: float) -> tuple[float, Plan]:
        p = plan_groups(groups, per_layer, strategy=base_strategy, ratio=r, layer_scores=layer_scores, criterion=criterion, **options)
        clone = copy.deepcopy(model)
        prune(clone, p, example_inputs, measure_latency=False)
        return count_macs_params(clone, example_inputs)[0], p

    lo, hi = 0.0, 0.99
    best = plan_groups(groups, per_layer, strategy=base_strategy, ratio=0.0, layer_scores=layer_scores, criterion=criterion, **options)
    best_macs = macs0
    for _ in range(30):
        mid = (lo + hi) / 2
        m, p = macs_at(mid)
        if m <= target:
            hi, best, best_macs = mid, p, m
        else:
            lo = mid
        if best_macs <= target and (best_macs - target) / macs0 > -tolerance:
            break
        if hi - lo < 1e-3:  # channel counts are discrete: a narrower bracket changes nothing
            break
    if best_macs > target:
        raise ConfigError(f"strategy='flops': a MACs reduction of {ratio} cannot be reached with {base_strategy!r}")
    best.strategy = "flops"
    best.meta["input_shape"] = [1, *example_inputs.shape[1:]]
    best.target_ratio = float(ratio)
    best.meta.update({"base_strategy": base_strategy, "channel_ratio": hi, "macs_before": macs0, "macs_after": best_macs})
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
