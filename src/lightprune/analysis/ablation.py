"""Cumulative ablation: remove channels one by one in the order of a criterion and watch the test set.

Definitions (docs/analysis.md has the long form):

- **Removing a channel** never touches a weight: the one hook router
  (:func:`lightprune.collect.capture_activations`, with replacement) multiplies the layer's
  post-activation output by a 0/1 channel mask and, with ``mode="mean"`` (bias balancing), puts
  the bias-balancing value of a removed channel in its place: ``out * mask + (1 - mask) * fill``,
  ``fill`` = the mean of what the layer's consumer receives on that channel over the scoring set
  (:func:`lightprune.surgery.removed_channel_fill`, the value ``lp.prune(bias_balancing=True)``
  folds into the consumer's bias). ``mode="zero"`` puts 0.
- **Orders**, named by what is removed first: ``least_important_first`` (the pruning order: a good
  criterion keeps the accuracy up longest) and ``most_important_first`` (a good criterion makes it
  fall fastest); "important" is the criterion's importance (higher = keep). The old names
  ``ascending`` / ``descending`` (of importance) are accepted as aliases. Ties are broken by channel
  index. ``random``: seeded random permutations, averaged over ``random_orders`` draws.
- **Random rescaling** (``random_rescale=(lo, hi)``, the feature-entropy paper's appendix A.7):
  every image the analysis sees (scoring and test) is multiplied by its own factor drawn uniformly
  from ``[lo, hi]`` (:func:`~lightprune.analysis._common.batch_view`, seeded by ``seed``).
- **Layer-wise** (``scope="layer"``): the channels of one layer are ranked and removed, the rest
  of the network unchanged; every given layer gets its own curves.
- **Whole-network** (``scope="network"``): the channels of all given layers (default: every
  prunable layer) are ranked together, each layer's importance first normalised within the layer
  (``normalize``, as the planner's global strategy: ``minmax`` default), and removed across layers.
- **Curves**: after removing ``0, s, 2s, ..., n`` channels (``step`` s, default 1 layer-wise;
  the x-axis grows by exactly ``s`` each step, the last step may be shorter): test accuracy,
  mean cross-entropy, balanced accuracy (mean per-class recall), and per class ``c`` the recall
  and the one-vs-rest balanced accuracy ``(recall_c + specificity_c) / 2``, all in [0, 1].
- **Per-class gain** (Zhao & Zhang 2022, Table 11): for a curve, ``gain_c = max over steps of
  class_bacc_c - class_bacc_c(unablated)`` (>= 0, the unablated network is step 0), averaged
  over classes. With ``class_specific=True`` each class also gets its own ranking (the criterion
  computed on the scoring images of that class only, least important first), and ``gain_c`` is read on
  that class's curve: the best one-vs-rest balanced accuracy for class ``c`` reachable by
  ablating channels chosen for ``c``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..collect import capture_activations
from ..criteria import Criterion, criterion_class
from ..data import ClassificationDataModule, resolve_scoring_set
from ..errors import ConfigError, check_choice, check_positive_int
from ..evaluation import model_device
from ..planner import normalise_importance
from ..surgery import removed_channel_fill
from ._common import (
    ABLATION_MODES,
    CriterionLike,
    MaskedEval,
    batch_view,
    class_count,
    compute_scores,
    criterion_label,
    evaluation_set,
    markdown_table,
    metrics_from_confusion,
    pyplot,
    resolve_criteria,
    resolve_layers,
    save_figure,
    unwrap,
    write_table,
)

__all__ = [
    "ORDERS",
    "ORDER_ALIASES",
    "canonical_order",
    "SCOPES",
    "NORMALIZERS",
    "AblationResult",
    "cumulative_ablation",
    "ablate_channels",
    "ablation_order",
]

ORDERS = ("least_important_first", "most_important_first")
#: old names, accepted everywhere an order is: ascending / descending order of importance
ORDER_ALIASES = {"ascending": "least_important_first", "descending": "most_important_first"}
SCOPES = ("layer", "network")
NORMALIZERS = ("minmax", "max", "mean", "rank", "none")
RANDOM = "random"
#: columns of the summary table (markdown)
SUMMARY_COLUMNS = [
    "unit", "criterion", "order", "channels", "acc_0", "acc_25", "acc_50", "acc_75", "acc_end", "area",
    "removed_at_90", "per_class_gain",
]


# --------------------------------------------------------------------------------------------
# orders
# --------------------------------------------------------------------------------------------
def canonical_order(order: str, argument: str = "order") -> str:
    """``order`` under its canonical name (``ascending`` -> ``least_important_first``,
    ``descending`` -> ``most_important_first``).

    Raises:
        ConfigError: not an order (the message lists the names and the aliases).
    """
    if isinstance(order, str) and order in ORDER_ALIASES:
        return ORDER_ALIASES[order]
    if order not in ORDERS:
        aliases = ", ".join(f"{a} = {c}" for a, c in ORDER_ALIASES.items())
        raise ConfigError(
            f"{argument}={order!r} is not allowed; choose one of: {', '.join(ORDERS)} (aliases: {aliases})"
        )
    return order


def ablation_order(importance: torch.Tensor, order: str) -> torch.Tensor:
    """Channel indices in removal order: ``least_important_first`` (alias ``ascending``: ascending
    importance) or ``most_important_first`` (alias ``descending``); ties by channel index (stable).

    Example::

        >>> ablation_order(torch.tensor([0.5, 0.1, 0.9]), "least_important_first").tolist()
        [1, 0, 2]
        >>> ablation_order(torch.tensor([0.5, 0.1, 0.9]), "descending").tolist()
        [2, 0, 1]
    """
    order = canonical_order(order)
    v = importance.double().cpu()
    if bool(torch.isnan(v).any()):
        raise ConfigError("importance contains NaN; cannot order the channels")
    key = v if order == "least_important_first" else -v
    return torch.sort(key, stable=True).indices


def _global_order(
    scores: Mapping[str, torch.Tensor], names: Sequence[str], order: str, normalize: str
) -> list[tuple[str, int]]:
    """(layer, channel) pairs of all ``names`` in removal order; ties: layer order, then channel."""
    keys: list[tuple[float, int, int]] = []
    for li, n in enumerate(names):
        v = normalise_importance(scores[n], normalize)
        if bool(torch.isnan(v).any()):
            raise ConfigError(f"importance of layer {n!r} contains NaN; cannot order the channels")
        for c, val in enumerate(v.tolist()):
            keys.append((val if order == "least_important_first" else -val, li, c))
    keys.sort()
    return [(names[li], c) for _, li, c in keys]


# --------------------------------------------------------------------------------------------
# the public hook
# --------------------------------------------------------------------------------------------
@contextmanager
def ablate_channels(
    model: nn.Module,
    remove: Mapping[str, Sequence[int] | torch.Tensor],
    example_inputs: torch.Tensor,
    *,
    mode: str = "zero",
    means: Mapping[str, torch.Tensor] | None = None,
):
    """While active, the listed channels' post-activation outputs are 0 (``mode="zero"``) or
    ``means`` (``mode="mean"``); weights are not modified. The replacement goes through the one hook
    router (:func:`lightprune.collect.capture_activations`), so layers that share a capture module
    (a ResNet block's ReLU) are each replaced at their own call.

    Args:
        model: the network (a ClassificationModule is unwrapped to its ``.model``).
        remove: ``{layer name: channel indices}``.
        example_inputs: a small batch, to locate the capture points.
        mode: ``"zero"`` or ``"mean"``.
        means: ``{layer: (C,) fill values}`` for ``mode="mean"``: the bias-balancing values of
            :func:`lightprune.surgery.removed_channel_fill` (the mean of what each layer's consumer
            receives), so that the ablation equals ``lp.prune(..., bias_balancing=True)`` where the
            two can agree (docs/analysis.md).

    Example::

        >>> import torch, lightprune as lp
        >>> from lightprune.analysis import ablate_channels
        >>> net = lp.create_model("cifar_vgg11", 10, width_mult=0.125).eval()
        >>> x = torch.randn(2, 3, 32, 32)
        >>> with ablate_channels(net, {"features.0": range(8)}, x):   # the whole first layer
        ...     out = net(x)
        >>> bool(torch.allclose(out[0], out[1]))    # nothing of the input gets through
        True
    """
    net = unwrap(model)
    check_choice("mode", mode, ABLATION_MODES)
    layers = resolve_layers(net, example_inputs, list(remove))
    if mode == "mean" and (means is None or any(n not in means for n in remove)):
        raise ConfigError(
            "mode='mean' needs means= with an entry for every layer in remove "
            "(lightprune.surgery.removed_channel_fill gives them)"
        )
    masks: dict[str, torch.Tensor] = {}
    fills: dict[str, torch.Tensor] = {}
    for n, idx in remove.items():
        c_out = layers[n].out_channels
        idx_t = torch.as_tensor(idx if isinstance(idx, torch.Tensor) else list(idx), dtype=torch.long)
        if idx_t.numel() and (int(idx_t.min()) < 0 or int(idx_t.max()) >= c_out):
            raise ConfigError(f"remove[{n!r}] holds channels outside [0, {c_out})")
        masks[n] = torch.ones(c_out)
        masks[n][idx_t] = 0
        fills[n] = torch.as_tensor(means[n]).reshape(-1) if mode == "mean" else torch.zeros(c_out)

    def replace(name: str, out: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, *([1] * (out.ndim - 2)))
        mask = masks[name].reshape(shape).to(out.device, out.dtype)
        return out * mask + (1.0 - mask) * fills[name].reshape(shape).to(out.device, out.dtype)

    with capture_activations(net, layers, replace):
        yield


# --------------------------------------------------------------------------------------------
# result
# --------------------------------------------------------------------------------------------
@dataclass
class AblationResult:
    """Output of :func:`cumulative_ablation`.

    Attributes:
        curves: one row per (unit, criterion, order, repeat, step): ``unit`` (a layer name, or
            ``"network"``), ``criterion``, ``order``, ``repeat``, ``step``, ``removed``,
            ``removed_fraction``, ``acc``, ``loss``, ``balanced_acc``, ``recall_<c>``,
            ``class_bacc_<c>``.
        summary: one row per (unit, criterion, order) (random: averaged over repeats).
        class_gain: per (unit, criterion): the class-specific per-class gain and its per-class
            values (``class_specific=True``), else empty.
        meta: settings (mode, scope, step, ...).
    """

    curves: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    class_gain: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def curve(
        self, criterion: str, order: str, unit: str | None = None, repeat: int = 0
    ) -> dict[str, list[float]]:
        """Columns (``removed``, ``acc``, ``loss``, ...) of one curve; ``unit`` defaults to the first;
        ``order`` may be an alias (``ascending``)."""
        unit = unit or self.curves[0]["unit"]
        order = ORDER_ALIASES.get(order, order)
        rows = [
            r
            for r in self.curves
            if r["unit"] == unit
            and r["criterion"] == criterion
            and r["order"] == order
            and r["repeat"] == repeat
        ]
        if not rows:
            raise ConfigError(
                f"no curve for criterion={criterion!r}, order={order!r}, unit={unit!r}, repeat={repeat}"
            )
        return {k: [r[k] for r in rows] for k in rows[0] if k not in ("unit", "criterion", "order")}

    def summary_markdown(self, digits: int = 3) -> str:
        return markdown_table(self.summary, SUMMARY_COLUMNS, digits)

    def save(self, out_dir: str | Path, *, plot: bool = True) -> dict[str, Path]:
        """Write ``ablation_curves.csv``, ``ablation_summary.{csv,md}``, ``class_gain.{csv,md}``
        (with ``class_specific``) and one ``ablation_<unit>.png`` per unit."""
        out = Path(out_dir)
        paths: dict[str, Path] = {}
        paths["curves"] = write_table(self.curves, out, "ablation_curves", markdown=False)["csv"]
        note = (
            f"mode={self.meta.get('mode')}, scope={self.meta.get('scope')}, step={self.meta.get('step')}; "
            "acc_X = test accuracy after removing X % of the channels (linear interpolation), "
            "area = mean test accuracy over the removed fraction, removed_at_90 = channels removed "
            "before the accuracy first falls below 90 % of the unablated one, per_class_gain = mean over "
            "classes of the best one-vs-rest balanced-accuracy gain along the curve."
        )
        p = write_table(
            self.summary,
            out,
            "ablation_summary",
            columns=SUMMARY_COLUMNS,
            title="Cumulative ablation",
            note=note,
            digits=3,
        )
        paths["summary_csv"], paths["summary_md"] = p["csv"], p["md"]
        if self.class_gain:
            gcols = ["unit", "criterion", "class_specific_gain", "shared_gain"]
            p = write_table(
                self.class_gain,
                out,
                "class_gain",
                columns=gcols,
                title="Per-class gain (class-specific ranking)",
                note="gain_c = max over steps of the one-vs-rest balanced accuracy of class c minus its unablated value; averaged over classes.",
                digits=4,
            )
            paths["class_gain_csv"], paths["class_gain_md"] = p["csv"], p["md"]
        if plot:
            for unit in dict.fromkeys(r["unit"] for r in self.curves):
                paths[f"plot:{unit}"] = self.plot(out / f"ablation_{unit}.png", unit=unit)
        return paths

    def plot(self, path: str | Path, unit: str | None = None) -> Path:
        """Test accuracy and loss against channels removed: one colour per criterion, solid =
        least important first, dashed = most important first, grey = random (mean, band = min..max)."""
        plt = pyplot()
        unit = unit or self.curves[0]["unit"]
        rows = [r for r in self.curves if r["unit"] == unit]
        crits = list(dict.fromkeys(r["criterion"] for r in rows if r["criterion"] != RANDOM))
        colours = plt.get_cmap("tab10")
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, key, label in (
            (axes[0], "acc", "test accuracy"),
            (axes[1], "loss", "test loss (cross-entropy)"),
        ):
            for i, crit in enumerate(crits):
                for order, style in zip(ORDERS, ("-", "--"), strict=True):
                    rr = [r for r in rows if r["criterion"] == crit and r["order"] == order]
                    if rr:
                        ax.plot(
                            [r["removed"] for r in rr],
                            [r[key] for r in rr],
                            style,
                            color=colours(i % 10),
                            label=f"{crit} ({order})",
                            lw=1.6,
                        )
            rr = [r for r in rows if r["criterion"] == RANDOM]
            if rr:
                xs = sorted({r["removed"] for r in rr})
                vals = np.array([[r[key] for r in rr if r["removed"] == x] for x in xs], dtype=float)
                ax.plot(
                    xs, vals.mean(1), ":", color="0.35", label=f"random (mean of {vals.shape[1]})", lw=1.6
                )
                if vals.shape[1] > 1:
                    ax.fill_between(xs, vals.min(1), vals.max(1), color="0.6", alpha=0.25, lw=0)
            ax.set_xlabel("channels removed" + (" (all layers)" if unit == "network" else f" from {unit}"))
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        axes[0].set_ylim(-0.02, 1.02)
        axes[0].legend(fontsize=7, loc="best")
        fig.suptitle(f"cumulative ablation ({self.meta.get('mode', 'zero')}): {unit}")
        return save_figure(fig, path)


# --------------------------------------------------------------------------------------------
# the analysis
# --------------------------------------------------------------------------------------------
def _counts(total: int, step: int, max_fraction: float) -> list[int]:
    last = int(math.floor(max_fraction * total + 1e-9))
    out = list(range(0, last + 1, step))
    if out[-1] != last:
        out.append(last)
    return out


def _steps_metrics(
    removed: list[int], total: int, acc: np.ndarray, class_bacc: np.ndarray
) -> dict[str, float]:
    frac = np.asarray(removed, dtype=float) / total
    acc0 = float(acc[0])
    out = {"acc_0": acc0}
    for q in (25, 50, 75):
        out[f"acc_{q}"] = float(np.interp(q / 100, frac, acc)) if frac[-1] >= q / 100 else float("nan")
    out["acc_end"] = float(acc[-1])
    span = frac[-1] - frac[0]
    out["area"] = float(np.trapz(acc, frac) / span) if span > 0 else acc0
    below = np.nonzero(acc < 0.9 * acc0)[0]
    out["removed_at_90"] = int(removed[below[0] - 1]) if below.size else int(removed[-1])
    gains = np.nanmax(class_bacc, axis=0) - class_bacc[0]
    out["per_class_gain"] = float(np.nanmean(gains))
    return out


def cumulative_ablation(
    model: nn.Module,
    test_data: Any,
    scoring: Any = None,
    *,
    layers: str | Sequence[str] | None = None,
    criteria: CriterionLike | Sequence[CriterionLike] = ("l1",),
    mode: str = "zero",
    scope: str = "layer",
    orders: Sequence[str] = ORDERS,
    random_orders: int = 1,
    step: int | None = None,
    max_fraction: float = 1.0,
    normalize: str = "minmax",
    samples_per_class: int = 100,
    classes: Sequence[int] | None = None,
    num_classes: int | None = None,
    class_specific: bool = False,
    seed: int = 0,
    random_rescale: tuple[float, float] | None = None,
    max_images: int = 2048,
    progress: bool = True,
) -> AblationResult:
    """Cumulative ablation curves of ``criteria`` (and random orders) on the test set.

    Args:
        model: the trained network (a ClassificationModule is unwrapped to ``.model``).
        test_data: a data module (its test split), a DataLoader or ``(inputs, labels)`` / dict
            batches; streamed.
        scoring: the scoring set (:func:`lightprune.data.resolve_scoring_set`): a data module
            (``samples_per_class`` training images of each class in ``classes``), a DataLoader or
            batches; default: ``test_data`` when it is a data module.
            Needed by data criteria, ``mode="mean"`` and ``class_specific``.
        layers: layer name(s); default: every prunable layer.
        criteria: registered names, :class:`~lightprune.Criterion` instances or precomputed
            :class:`~lightprune.Scores`.
        mode: ``"zero"`` (default) or ``"mean"`` (bias balancing: a removed channel outputs the mean
            of what its consumer receives over the scoring set, :func:`~lightprune.surgery.removed_channel_fill`).
        scope: ``"layer"`` (each layer alone) or ``"network"`` (all ``layers`` ranked together).
        orders: subset of :data:`ORDERS` (``least_important_first``, ``most_important_first``; the
            aliases ``ascending``, ``descending`` are accepted; results use the canonical names).
        random_orders: number of random permutations (0: none), default 1.
        step: channels removed per step; default 1 (layer) or ``ceil(total / 50)`` (network).
        max_fraction: stop after removing this fraction of the channels, in (0, 1], default 1.
        normalize: per-layer normalisation before the whole-network ranking: ``minmax``
            (default), ``max``, ``mean``, ``rank``, ``none``.
        samples_per_class, classes: the scoring-set draw from a data module.
        num_classes: default: the data module's, or inferred from the test labels.
        class_specific: also rank per class (see the module docstring) and report the
            class-specific per-class gain (costs one scoring pass per class and criterion).
        seed: seed of the random orders and of ``random_rescale``.
        random_rescale: ``(lo, hi)``, e.g. ``(0.5, 1.5)`` (the feature-entropy paper, A.7): every
            scoring and test image multiplied by its own factor drawn uniformly from ``[lo, hi]``
            (image ``i`` of batch ``b``: ``lo + (hi - lo) * torch.rand(B, generator=
            torch.Generator().manual_seed(seed + b), dtype=torch.float64)[i]``, the same on every
            pass); the criteria, the ``mode="mean"`` fill and the curves all see the rescaled
            images. None (default): the images as they are.
        max_images: images per forward pass (configurations of one batch are stacked up to it).
        progress: tqdm progress bars on stderr.

    Returns:
        :class:`AblationResult`.

    Raises:
        ConfigError: bad argument (the message names it, its value and what is allowed).
        UnknownNameError: unknown criterion.
    """
    net = unwrap(model)
    check_choice("mode", mode, ABLATION_MODES)
    check_choice("scope", scope, SCOPES)
    check_choice("normalize", normalize, NORMALIZERS)
    if isinstance(orders, str):
        orders = [orders]
    orders = list(dict.fromkeys(canonical_order(o, "orders") for o in orders))
    random_orders = check_positive_int("random_orders", random_orders, minimum=0)
    if step is not None:
        check_positive_int("step", step)
    if (
        isinstance(max_fraction, bool)
        or not isinstance(max_fraction, (int, float))
        or not 0 < max_fraction <= 1
    ):
        raise ConfigError(f"max_fraction={max_fraction!r} is not allowed; it must lie in (0, 1]")
    check_positive_int("max_images", max_images)
    random_rescale = _check_rescale(random_rescale)
    crits = resolve_criteria(criteria)
    if not orders and random_orders == 0:
        raise ConfigError("orders=[] and random_orders=0: nothing to ablate")

    tests = evaluation_set(test_data)
    test_batches = tests.batches
    if scoring is None and isinstance(test_data, ClassificationDataModule):
        scoring = test_data
    needs_scoring = mode == "mean" or class_specific or any(_needs_data(c) for c in crits)
    score_batches = (
        resolve_scoring_set(scoring, samples_per_class=samples_per_class, classes=classes, argument="scoring").batches
        if scoring is not None
        else None
    )
    if needs_scoring and score_batches is None:
        raise ConfigError(
            "scoring= is required: data criteria, mode='mean' and class_specific need a scoring set"
        )
    if random_rescale is not None:
        test_batches = batch_view(test_batches, random_scale=random_rescale, seed=seed)
        if score_batches is not None:
            score_batches = batch_view(score_batches, random_scale=random_rescale, seed=seed)
    n_classes = class_count(tests, num_classes)
    example = tests.example_inputs(2, model_device(net))
    found = resolve_layers(net, example, layers)
    names = list(found)

    scores = {}
    for c in crits:
        scores[criterion_label(c)] = compute_scores(
            net, c, score_batches, names, num_classes=n_classes, progress=progress
        )
    means = removed_channel_fill(net, found, score_batches, example) if mode == "mean" else None

    units: list[tuple[str, list[str]]] = (
        [(n, [n]) for n in names] if scope == "layer" else [("network", names)]
    )
    per_class_scores = (
        _class_scores(net, crits, score_batches, names, n_classes, progress) if class_specific else {}
    )
    gen = torch.Generator().manual_seed(seed)
    masked = {"mode": mode, "fill": means, "num_classes": n_classes, "max_images": max_images, "progress": progress}
    result = AblationResult([], [], [], {})
    steps_used: dict[str, int] = {}
    for unit, members in units:
        sizes = {n: found[n].out_channels for n in members}
        total = sum(sizes.values())
        offsets = dict(zip(members, np.cumsum([0] + [sizes[n] for n in members[:-1]]).tolist(), strict=True))

        def flat(sc: Mapping[str, torch.Tensor], order: str, _members=members, _offsets=offsets) -> list[int]:
            if scope == "layer":
                return ablation_order(sc[_members[0]], order).tolist()
            return [_offsets[n] + c for n, c in _global_order(sc, _members, order, normalize)]

        plans: list[tuple[str, str, int, list[int]]] = []  # (criterion, order, repeat, removal order)
        for crit, sc in scores.items():
            plans += [(crit, order, 0, flat(sc, order)) for order in orders]
        plans += [
            (RANDOM, RANDOM, r, torch.randperm(total, generator=gen).tolist()) for r in range(random_orders)
        ]
        for crit, per in per_class_scores.items():
            plans += [(crit, f"class_{c}", 0, flat(sc, "least_important_first")) for c, sc in per.items()]
        steps_used[unit] = step or (1 if scope == "layer" else max(1, math.ceil(total / 50)))
        counts = _counts(total, steps_used[unit], max_fraction)
        layer_set = {n: found[n] for n in members}
        met, plan_idx = _evaluate_plans(net, layer_set, sizes, offsets, plans, counts, test_batches, masked, unit)
        _collect(result, unit, plans, plan_idx, counts, total, met, n_classes)

    meta = {
        "mode": mode,
        "scope": scope,
        "step": steps_used[units[0][0]] if len(set(steps_used.values())) == 1 else steps_used,
        "max_fraction": max_fraction,
        "normalize": normalize,
        "criteria": list(scores),
        "random_orders": random_orders,
        "num_classes": n_classes,
        "layers": names,
        "seed": seed,
        "random_rescale": list(random_rescale) if random_rescale is not None else None,
    }
    result.meta = meta
    return result


def _evaluate_plans(
    net: nn.Module,
    layers: Mapping[str, Any],
    sizes: Mapping[str, int],
    offsets: Mapping[str, int],
    plans: Sequence[tuple[str, str, int, list[int]]],
    counts: Sequence[int],
    test_batches: Iterable[Any],
    masked: Mapping[str, Any],
    unit: str,
) -> tuple[dict[str, torch.Tensor], list[list[int]]]:
    """Metrics of every (plan, count) configuration; identical masks (step 0, full removal, ...)
    are evaluated once (``masked``: the :class:`MaskedEval` settings, and ``progress``). Returns the
    metrics of the unique configurations and, per plan, the configuration index of each count."""
    total = sum(sizes.values())
    keys: dict[bytes, int] = {}
    unique: list[torch.Tensor] = []
    plan_idx: list[list[int]] = []
    for *_, removal in plans:
        ids = []
        for k in counts:
            m = torch.ones(total)
            if k:
                m[torch.as_tensor(removal[:k])] = 0
            key = m.numpy().tobytes()
            if key not in keys:
                keys[key] = len(unique)
                unique.append(m)
            ids.append(keys[key])
        plan_idx.append(ids)
    stacked = torch.stack(unique)  # (K, total)
    masks = {n: stacked[:, offsets[n] : offsets[n] + sizes[n]] for n in sizes}
    settings = dict(masked)
    progress = settings.pop("progress")
    res = MaskedEval(net, layers, masks, **settings).run(
        test_batches, progress=progress, desc=f"ablation {unit} ({stacked.shape[0]} configurations)"
    )
    return metrics_from_confusion(res["confusion"], res["loss_sum"], res["count"]), plan_idx


def _collect(
    result: AblationResult,
    unit: str,
    plans: Sequence[tuple[str, str, int, list[int]]],
    plan_idx: Sequence[list[int]],
    counts: Sequence[int],
    total: int,
    met: Mapping[str, torch.Tensor],
    n_classes: int,
) -> None:
    """Append the curves, summary rows and class-specific gains of one unit to ``result``."""
    per_curve: dict[tuple[str, str], list[dict[str, float]]] = {}
    gains_cs: dict[str, dict[int, float]] = {}
    for (crit, order, rep, _), ids in zip(plans, plan_idx, strict=True):
        idx = torch.tensor(ids)
        acc = met["acc"][idx].numpy()
        cb = met["class_bacc"][idx].numpy()
        if order.startswith("class_"):
            c = int(order.split("_", 1)[1])
            gains_cs.setdefault(crit, {})[c] = float(np.nanmax(cb[:, c]) - cb[0, c])
            continue
        for j, k in enumerate(counts):
            row: dict[str, Any] = {
                "unit": unit,
                "criterion": crit,
                "order": order,
                "repeat": rep,
                "step": j,
                "removed": k,
                "removed_fraction": k / total,
                "acc": float(acc[j]),
                "loss": float(met["loss"][ids[j]]),
                "balanced_acc": float(met["balanced_acc"][ids[j]]),
            }
            row.update({f"recall_{c}": float(met["recall"][ids[j], c]) for c in range(n_classes)})
            row.update({f"class_bacc_{c}": float(cb[j, c]) for c in range(n_classes)})
            result.curves.append(row)
        per_curve.setdefault((crit, order), []).append(_steps_metrics(list(counts), total, acc, cb))
    for (crit, order), stats in per_curve.items():
        row = {"unit": unit, "criterion": crit, "order": order, "channels": total}
        for key in stats[0]:
            row[key] = float(np.mean([st[key] for st in stats])) if len(stats) > 1 else stats[0][key]
        if len(stats) > 1:
            row["area_std"] = float(np.std([st["area"] for st in stats]))
            row["repeats"] = len(stats)
        result.summary.append(row)
    for crit, per in gains_cs.items():
        shared = next(
            (
                r["per_class_gain"]
                for r in result.summary
                if r["unit"] == unit and r["criterion"] == crit and r["order"] == "least_important_first"
            ),
            float("nan"),
        )
        row = {
            "unit": unit,
            "criterion": crit,
            "class_specific_gain": float(np.mean(list(per.values()))),
            "shared_gain": shared,
        }
        row.update({f"gain_{c}": v for c, v in sorted(per.items())})
        result.class_gain.append(row)


def _class_scores(
    net: nn.Module,
    crits: Sequence[CriterionLike],
    batches: Iterable[Any],
    members: Sequence[str],
    n_classes: int,
    progress: bool,
) -> dict[str, dict[int, Mapping[str, torch.Tensor]]]:
    """Each criterion computed on the scoring images of one class at a time (weight-only criteria
    and precomputed Scores give the same ranking for every class). A criterion that cannot be
    computed on one class (class selectivity needs two) is left out with a warning."""
    out: dict[str, dict[int, Mapping[str, torch.Tensor]]] = {}
    for c in crits:
        label = criterion_label(c)
        per: dict[int, Mapping[str, torch.Tensor]] = {}
        try:
            for k in range(n_classes):
                view = batch_view(batches, only_class=k)
                if not any(True for _ in view):
                    continue
                sc = compute_scores(net, c, view, members, num_classes=n_classes, progress=progress)
                if any(bool(torch.isnan(sc[n]).any()) for n in members):
                    raise ConfigError(f"{label} gives NaN scores on the images of class {k} alone")
                per[k] = sc
        except ConfigError as err:
            warnings.warn(f"class-specific gain: criterion {label!r} left out ({err})", stacklevel=3)
            continue
        out[label] = per
    return out


def _check_rescale(value: object) -> tuple[float, float] | None:
    if value is None:
        return None
    ok = (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        and 0 < value[0] <= value[1]
    )
    if not ok:
        raise ConfigError(
            f"random_rescale={value!r} is not allowed; give (lo, hi) with 0 < lo <= hi, e.g. (0.5, 1.5), or None"
        )
    return float(value[0]), float(value[1])


def _needs_data(c: CriterionLike) -> bool:
    if isinstance(c, str):
        return criterion_class(c).needs_data
    return isinstance(c, Criterion) and c.needs_data
