"""The pruning engine: score -> plan -> prune -> recover -> report, written once.

Every front end calls :func:`run_prune` (or its parts :func:`score_for_spec` and :func:`plan_for_spec`):
``PruningCallback`` (each prune event of a schedule), ``lightprune compare`` (each criterion x ratio),
``lightprune analyze`` and the Python API. None of them resolves data, evaluates, times latency or
handles flat scores on its own.

- :class:`PruneSpec` — what to do: criterion (+ fallback for the layers it cannot rank), strategy,
  ratio (or a target), layer scope, bias balancing, BatchNorm recalibration.
- :func:`score_for_spec` — the criterion's scores, with the fallback criterion's scores on the layers
  flagged as flat (:attr:`lightprune.Scores.flat`), and layer-level scores attached when the strategy
  needs them (``afie``).
- :func:`run_prune` — the whole step on one network, in place; returns a :class:`PruneResult`.

Example::

    >>> import torch, lightprune as lp
    >>> from lightprune.engine import PruneSpec, run_prune
    >>> net = lp.create_model("cifar_vgg11", 10, width_mult=0.25)
    >>> batches = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))]
    >>> res = run_prune(net, batches, PruneSpec(criterion="l1", ratio=0.5), latency_inputs=None)
    >>> net.features[0].out_channels, res.plan.strategy
    (8, 'uniform')
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from . import evaluation
from .collect import find_prunable_layers, select_layers
from .criteria import Scores, criterion_class, score
from .data import ScoringSet, resolve_scoring_set
from .errors import ConfigError, check_fraction
from .evaluation import model_device
from .plan import Plan
from .planner import list_strategies, plan, scores_by_depth
from .surgery import PruneReport, prune

__all__ = [
    "PruneSpec", "PruneResult", "score_for_spec", "plan_for_spec", "run_prune", "evaluate_splits", "fallback_layers",
    "needs_layer_scores", "LAYER_SCORE_STRATEGIES", "spec_layers", "merge_per_layer",
]

#: strategies that allocate ratios from layer-level scores (``Scores.layer_scores``)
LAYER_SCORE_STRATEGIES = ("afie",)


@dataclass(frozen=True)
class PruneSpec:
    """What one prune does.

    Attributes:
        criterion: registered criterion name (``lightprune.list_criteria()``), or several for
            **per-layer criteria by depth** (a list, or names joined by ``"+"``): the first
            ``depth_split[0]`` fraction of the scoped layers (execution order) is ranked by the first
            criterion, the next part by the second, ... (:func:`lightprune.planner.scores_by_depth`).
            Liu, Amjad & Geiger: ``["mutual_information", "kl_selectivity"]``, ``depth_split=[1/3]``.
        criterion_kwargs: its hyperparameters; with several criteria ``{name: {hyperparameters}}``.
        depth_split: the split points (fractions in (0, 1), increasing), one fewer than criteria;
            default: equal parts.
        fallback: criterion for the layers ``criterion`` cannot rank (flat scores), or None.
        strategy: planner strategy or target search (``lightprune.planner.list_strategies()``).
        ratio: fraction of channels removed (targets: of MACs / parameters), in [0, 1).
        strategy_kwargs: planner options (``round_to``, ``max_layer_ratio``, ``ratios``, ``base_strategy``, ...).
        layers: restrict scoring and planning to these layers: names or glob patterns (None: every
            prunable layer).
        exclude: names or glob patterns left out of the scope.
        layer_types: ``"conv"`` and/or ``"linear"`` (None: both). The scope (``layers``, ``exclude``,
            ``layer_types``) is resolved by :func:`lightprune.collect.select_layers`, the one selection.
        layer_score_criterion: criterion giving layer-level scores when the strategy needs them and
            ``criterion`` gives none (default ``"afie"``).
        bias_balancing: replace removed channels by their mean (CRITERIA.md "Bias balancing").
        recalibrate_bn: re-estimate BatchNorm statistics right after the prune (default True) on the
            calibration batches (default: the scoring set); see docs/recovery.md.
        reconstruct: least-squares reconstruction of the layers that lost inputs (opt-in).
        reconstruct_kwargs: its options (``ridge``, ``positions``, ``max_batches``, ``seed``).
    """

    criterion: str | Sequence[str] = "l1"
    criterion_kwargs: Mapping[str, Any] = field(default_factory=dict)
    depth_split: Sequence[float] | None = None
    fallback: str | None = None
    strategy: str = "uniform"
    ratio: float = 0.5
    strategy_kwargs: Mapping[str, Any] = field(default_factory=dict)
    layers: Sequence[str] | None = None
    exclude: Sequence[str] | None = None
    layer_types: Sequence[str] | None = None
    layer_score_criterion: str = "afie"
    bias_balancing: bool = False
    recalibrate_bn: bool = True
    reconstruct: bool = False
    reconstruct_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = self.criteria
        for name in names:
            criterion_class(name)  # unknown names fail now, listing the known ones
        if len(names) > 1:
            unknown = [k for k in self.criterion_kwargs if k not in names]
            if unknown:
                raise ConfigError(
                    f"criterion_kwargs with several criteria is {{criterion: {{hyperparameters}}}}; {unknown} "
                    f"are not among {names}"
                )
            if self.depth_split is not None:
                split = [float(f) for f in self.depth_split]
                if len(split) != len(names) - 1 or any(not 0 < f < 1 for f in split) or split != sorted(split):
                    raise ConfigError(
                        f"depth_split={list(self.depth_split)!r} is not allowed: give {len(names) - 1} increasing "
                        f"fraction(s) in (0, 1) for criteria {names}"
                    )
        elif self.depth_split is not None:
            raise ConfigError("depth_split is only used with several criteria (per-layer criteria by depth)")
        if self.fallback is not None:
            criterion_class(self.fallback)
        if self.strategy not in list_strategies():
            raise ConfigError(f"strategy={self.strategy!r} is not allowed; choose one of: {', '.join(list_strategies())}")
        check_fraction("ratio", self.ratio)

    @property
    def criteria(self) -> list[str]:
        """The criterion names (one, or several by depth)."""
        c = self.criterion
        return [p.strip() for p in c.split("+")] if isinstance(c, str) else [str(p) for p in c]

    @property
    def criterion_label(self) -> str:
        """``"mutual_information+kl_selectivity"`` for several criteria, else the name."""
        return "+".join(self.criteria)

    def kwargs_for(self, name: str) -> dict[str, Any]:
        """Hyperparameters of criterion ``name``."""
        if len(self.criteria) > 1:
            return dict(self.criterion_kwargs.get(name) or {})
        return dict(self.criterion_kwargs)

    def split_points(self) -> list[float]:
        """``depth_split``, or equal parts."""
        n = len(self.criteria)
        return [float(f) for f in self.depth_split] if self.depth_split is not None else [i / n for i in range(1, n)]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not isinstance(self.criterion, str):
            d["criterion"] = list(self.criterion)
        if self.depth_split is not None:
            d["depth_split"] = [float(f) for f in self.depth_split]
        d["criterion_kwargs"], d["strategy_kwargs"] = dict(self.criterion_kwargs), dict(self.strategy_kwargs)
        d["reconstruct_kwargs"] = dict(self.reconstruct_kwargs)
        for key in ("layers", "exclude", "layer_types"):
            v = getattr(self, key)
            d[key] = ([v] if isinstance(v, str) else list(v)) if v is not None else None
        return d


@dataclass
class PruneResult:
    """What :func:`run_prune` did."""

    scores: Scores | dict[str, Scores]
    plan: Plan
    report: PruneReport
    fallback_layers: list[str]
    metrics_before: dict[str, float] | None = None
    metrics_after: dict[str, float] | None = None


def needs_layer_scores(spec: PruneSpec) -> bool:
    """True when the spec's strategy (or its target's base strategy) allocates from layer-level scores."""
    base = spec.strategy_kwargs.get("base_strategy", "uniform")
    return spec.strategy in LAYER_SCORE_STRATEGIES or base in LAYER_SCORE_STRATEGIES


def score_for_spec(
    model: nn.Module,
    spec: PruneSpec,
    scoring: ScoringSet | None,
    *,
    layers: Sequence[str] | None = None,
    progress: bool = False,
    seed: int | None = None,
) -> Scores | dict[str, Scores]:
    """Score ``model`` as ``spec`` says; flat layers go to the fallback (a ``{layer: Scores}`` mapping
    is returned then), layer-level scores are attached when the strategy needs them.

    ``seed`` is passed to criteria that declare ``seeded`` (unless ``criterion_kwargs`` sets one).
    """
    scope: dict[str, Any] = {"layers": layers} if layers is not None else {
        "layers": spec.layers, "exclude": spec.exclude, "layer_types": spec.layer_types}
    batches = scoring.batches if scoring is not None else None
    num_classes = scoring.num_classes if scoring is not None else None

    def run(name: str, names: Sequence[str] | None | dict[str, Any], kwargs: Mapping[str, Any]) -> Scores:
        cls = criterion_class(name)
        kw = dict(kwargs)
        if cls.seeded and seed is not None:
            kw.setdefault("seed", seed)
        if cls.needs_data and batches is None:
            raise ConfigError(f"criterion {name!r} needs a scoring set: give the data (a data module or batches)")
        where = names if isinstance(names, dict) else {"layers": names}
        return score(model, name, batches if cls.needs_data else None, num_classes=num_classes,
                     progress=progress, **where, **kw)

    def with_layer_scores(s: Scores) -> Scores:
        if needs_layer_scores(spec) and not s.layer_scores:
            ls = run(spec.layer_score_criterion, list(s), {}).layer_scores
            if not ls:
                raise ConfigError(f"layer_score_criterion={spec.layer_score_criterion!r} gives no layer scores")
            s = Scores(dict(s.items()), s.criterion, layer_scores=ls, meta=s.meta, cannot_rank=s.flat)
        return s

    raw = [with_layer_scores(run(c, scope, spec.kwargs_for(c))) for c in spec.criteria]
    if len(raw) == 1:
        s = raw[0]
        per: dict[str, Scores] | None = None
        flat = s.flat
    else:
        per = scores_by_depth(raw, spec.split_points())
        flat = [n for n, sc in per.items() if n in sc.flat]
        s = raw[0]
    if spec.fallback is None or not flat:
        return s if per is None else per
    fb = run(spec.fallback, flat, {})
    fb = Scores(dict(fb.items()), fb.criterion, layer_scores=s.layer_scores if s.layer_scores else None,
                meta={**fb.meta, "fallback": True})
    base = per if per is not None else {n: s for n in s}
    return {n: (fb if n in flat else sc) for n, sc in base.items()}


def merge_per_layer(scores: Scores | Mapping[str, Scores], criterion: str | None = None) -> Scores:
    """One :class:`Scores` from a ``{layer: Scores}`` result (per-layer criteria, fallback): the
    layer's tensor from its own Scores; ``meta["criterion_by_layer"]`` says which criterion ranked it."""
    if isinstance(scores, Scores):
        return scores
    by_layer = {n: s.criterion for n, s in scores.items()}
    ls = {n: s.layer_scores[n] for n, s in scores.items() if s.layer_scores and n in s.layer_scores}
    label = criterion or "+".join(dict.fromkeys(by_layer.values()))
    return Scores({n: s[n] for n, s in scores.items()}, label, layer_scores=ls or None,
                  meta={"criterion_by_layer": by_layer}, cannot_rank=[n for n, s in scores.items() if n in s.flat])


def fallback_layers(scores: Scores | Mapping[str, Scores]) -> list[str]:
    """Layers whose scores came from the fallback criterion in a :func:`score_for_spec` result."""
    if isinstance(scores, Scores):
        return []
    return [n for n, s in scores.items() if s.meta.get("fallback")]


def plan_for_spec(model: nn.Module, scores: Scores | Mapping[str, Scores], spec: PruneSpec, example_inputs: torch.Tensor,
                  *, ratio: float | None = None) -> Plan:
    """The :class:`Plan` of ``spec`` (``ratio`` overrides ``spec.ratio``, e.g. an iterative step)."""
    return plan(model, scores, strategy=spec.strategy, ratio=spec.ratio if ratio is None else ratio,
                example_inputs=example_inputs, **dict(spec.strategy_kwargs))


def run_prune(
    model: nn.Module,
    data: Any,
    spec: PruneSpec,
    *,
    scores: Scores | Mapping[str, Scores] | None = None,
    ratio: float | None = None,
    layers: Sequence[str] | None = None,
    evaluate_on: Mapping[str, Any] | None = None,
    num_classes: int | None = None,
    latency_inputs: torch.Tensor | int | None = 32,
    latency_runs: int = 5,
    check_plan: Callable[[Plan], None] | None = None,
    evaluate_before: bool = True,
    calibration: Any = None,
    progress: bool = False,
    seed: int | None = None,
    samples_per_class: int = 100,
    classes: Sequence[int] | None = None,
) -> PruneResult:
    """Score -> plan -> prune -> report, in place on ``model``.

    Args:
        model: the network (pruned in place).
        data: the scoring set: anything :func:`lightprune.data.resolve_scoring_set` takes (a data
            module, a DataLoader, ``(inputs, labels)`` or dict batches, a ScoringSet).
        spec: what to do (:class:`PruneSpec`).
        scores: precomputed scores (skip scoring; e.g. ``compare`` scores once per criterion).
        ratio: overrides ``spec.ratio`` (iterative schedules).
        layers: overrides ``spec.layers`` (progressive schedules).
        evaluate_on: ``{split name: batches}`` evaluated (accuracy) right before and right after the
            prune; under DDP each rank gives its shard and the counts reduce.
        num_classes: for the evaluation (default: the scoring set's).
        latency_inputs: a batch to time before and after (the shared timer), or an int batch size
            drawn from the scoring set, or None (no timing).
        latency_runs: timed runs per measurement.
        check_plan: called with the plan before pruning (e.g. the same-plan-on-every-rank check).
        evaluate_before: evaluate ``evaluate_on`` before the prune too (False: after only).
        calibration: batches for the recovery (BatchNorm recalibration, reconstruction); default: the
            scoring set.
        progress: progress bars while scoring.
        seed: passed to seeded criteria.
        samples_per_class, classes: the class-balanced draw when ``data`` is a data module.
    """
    scoring = resolve_scoring_set(data, samples_per_class=samples_per_class, classes=classes, argument="data")
    device = model_device(model)
    example = scoring.example_inputs(1, device)
    if scores is None:
        scores = score_for_spec(model, spec, scoring, layers=layers, progress=progress, seed=seed)
    p = plan_for_spec(model, scores, spec, example, ratio=ratio)
    if check_plan is not None:
        check_plan(p)
    n_classes = num_classes or scoring.num_classes or (_output_width(model, example) if evaluate_on else None)
    before = evaluate_splits(model, evaluate_on, n_classes) if evaluate_before else None
    lat_x = scoring.first(latency_inputs, device) if isinstance(latency_inputs, int) else latency_inputs
    lat0 = evaluation.measure_latency(model, lat_x, runs=latency_runs).to_dict() if lat_x is not None else None
    recover = spec.recalibrate_bn or spec.reconstruct
    report = prune(model, p, example, bias_balancing=spec.bias_balancing,
                   batches=scoring.batches if spec.bias_balancing else None, measure_latency=False,
                   calibration=(calibration if calibration is not None else scoring.batches) if recover else None,
                   recalibrate_bn=spec.recalibrate_bn, reconstruct=spec.reconstruct,
                   reconstruct_kwargs=spec.reconstruct_kwargs)
    report.latency_before = lat0
    report.latency_after = evaluation.measure_latency(model, lat_x, runs=latency_runs).to_dict() if lat_x is not None else None
    after = evaluate_splits(model, evaluate_on, n_classes)
    return PruneResult(scores, p, report, fallback_layers(scores), before, after)


def _output_width(model: nn.Module, example: torch.Tensor) -> int | None:
    with evaluation.inference(model):
        out = model(example)
    return int(out.shape[1]) if isinstance(out, torch.Tensor) and out.ndim == 2 else None


def evaluate_splits(model: nn.Module, evaluate_on: Mapping[str, Any] | None, num_classes: int | None) -> dict[str, float] | None:
    """``{"<split>/<metric>": value}`` of :func:`lightprune.evaluation.evaluate` on each split's batches."""
    if not evaluate_on:
        return None
    if num_classes is None:
        raise ConfigError("evaluate_on needs num_classes (the scoring set does not tell it)")
    out: dict[str, float] = {}
    for split, batches in evaluate_on.items():
        if batches is None:
            continue
        for k, v in evaluation.evaluate(model, batches, num_classes=num_classes).items():
            if k != "n":
                out[f"{split}/{k}"] = v
    return out


def prunable_layer_names(model: nn.Module, example_inputs: torch.Tensor | None = None,
                         layers: Sequence[str] | None = None, exclude: Sequence[str] | None = None,
                         layer_types: Sequence[str] | None = None) -> list[str]:
    """Names of the selected prunable layers (execution order with example inputs)."""
    found = find_prunable_layers(model, example_inputs)
    return list(select_layers(found, layers, exclude, layer_types, modules=dict(model.named_modules())))


def spec_layers(model: nn.Module, spec: PruneSpec, example_inputs: torch.Tensor | None = None) -> list[str]:
    """The layers ``spec``'s scope selects (:func:`lightprune.collect.select_layers`)."""
    return prunable_layer_names(model, example_inputs, spec.layers, spec.exclude, spec.layer_types)
