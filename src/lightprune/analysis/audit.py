"""Rescaling and randomness audits of channel criteria (Zhao & Zhang 2022, Tables 1/6/9 and 2/7/10).

**Rescaling audit** (:func:`rescaling_audit`): every criterion is computed on the network under
four conditions:

- ``original``: the network as it is;
- ``input``: every input image multiplied by ``scale`` (default 0.5);
- ``filters``: the weight (and bias, if any) of one layer multiplied by ``scale``, so that the
  layer's pre-activation output is exactly ``scale`` times the original one;
- ``both``: the two at once.

In a ReLU network without BatchNorm and without biases (or with zero biases) every map scales
exactly (multiplying by 0.5 is exact in floating point and ReLU / max-pool are positively
homogeneous): ranking-based criteria such as feature entropy must then be *bit-identical*, while
L1 of the scaled layer is exactly ``scale`` times the original. A BatchNorm in eval mode does *not*
re-normalise (it applies its stored running statistics), so a scaled tensor entering it changes
everything downstream; ``bn="fold"`` applies what BatchNorm's re-normalisation would learn: the
running mean of the BatchNorm right after a scaled layer (and after the layers that read the input
directly, under ``input``) is multiplied by ``scale`` and its running variance by ``scale**2``, so
the BatchNorm output is unchanged up to its ``eps``. ``bn="keep"`` leaves the statistics as they are
(the literal eval-mode network). ``bn="auto"`` (default) folds when the network has a BatchNorm and
does nothing on a BatchNorm-free network (the setting of the paper's exact check; the result says
``bn=none``).

**Randomness audit** (:func:`randomness_audit`): the criteria of one layer in the trained network
against ``repeats`` (default 100, as the feature-entropy paper) randomly initialised networks of
the same architecture (``reinit="model"``: every layer re-drawn with the library's model init;
seeds ``seed .. seed + repeats - 1``), or with ``reinit="layer"`` against copies of the trained
network whose audited layer alone is re-initialised.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import evaluation
from ..criteria import Scores
from ..data import resolve_scoring_set
from ..errors import ConfigError, check_choice, check_positive_int
from ..evaluation import inference, model_device
from ._common import (
    CriterionLike,
    batch_view,
    class_count,
    compute_scores,
    criterion_label,
    evaluation_set,
    markdown_table,
    pyplot,
    reinitialize,
    resolve_criteria,
    resolve_layers,
    save_figure,
    unwrap,
    write_table,
)

__all__ = [
    "CONDITIONS",
    "BN_MODES",
    "REINIT_SCOPES",
    "DEFAULT_AUDIT_CRITERIA",
    "AuditResult",
    "rescaling_audit",
    "randomness_audit",
    "scaled_copy",
]

CONDITIONS = ("original", "input", "filters", "both")
BN_MODES = ("auto", "fold", "keep")
#: what the randomness audit re-initialises: the whole network, or only the audited layer
REINIT_SCOPES = ("model", "layer")
DEFAULT_AUDIT_CRITERIA = (
    "l1",
    "fpgm",
    "apoz",
    "class_selectivity",
    "mutual_information",
    "kl_selectivity",
    "feature_entropy",
)


@dataclass
class AuditResult:
    """Rows of an audit (``rows``: long format, every layer / seed), the markdown ``table`` rows
    (one per criterion), a title and notes, and ``meta``."""

    kind: str
    rows: list[dict[str, Any]]
    table: list[dict[str, Any]]
    columns: list[str]
    title: str
    note: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def markdown(self, digits: int = 4) -> str:
        return (
            f"### {self.title}\n\n"
            + (f"{self.note}\n\n" if self.note else "")
            + markdown_table(self.table, self.columns, digits)
        )

    def save(self, out_dir: str | Path, *, plot: bool = True) -> dict[str, Path]:
        """``<kind>.csv`` (long rows), ``<kind>_table.{csv,md}`` and ``<kind>.png``."""
        out = Path(out_dir)
        paths = {"rows": write_table(self.rows, out, self.kind, markdown=False)["csv"]}
        p = write_table(
            self.table, out, f"{self.kind}_table", columns=self.columns, title=self.title, note=self.note
        )
        paths["table_csv"], paths["table_md"] = p["csv"], p["md"]
        if plot:
            paths["plot"] = self.plot(out / f"{self.kind}.png")
        return paths

    def plot(self, path: str | Path) -> Path:
        plt = pyplot()
        crits = [r["criterion"] for r in self.table]
        cols = min(4, len(crits))
        nrows = -(-len(crits) // cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 3.2 * nrows), squeeze=False)
        for ax in axes.flat[len(crits) :]:
            ax.axis("off")
        if self.kind == "rescaling_audit":
            layer = self.meta["layer"]
            per = self.extra["layer_scores"]  # criterion -> condition -> list
            for ax, crit in zip(axes.flat, crits, strict=False):
                base = np.asarray(per[crit]["original"])
                for cond, marker in (("input", "o"), ("filters", "s"), ("both", "^")):
                    ax.scatter(base, np.asarray(per[crit][cond]), s=14, marker=marker, label=cond, alpha=0.7)
                lo, hi = float(np.nanmin(base)), float(np.nanmax(base))
                xs = np.linspace(lo, hi, 10)
                ax.plot(xs, xs, "k-", lw=0.8, label="y = x")
                ax.plot(xs, self.meta["scale"] * xs, "k:", lw=0.8, label=f"y = {self.meta['scale']}x")
                ax.set_title(crit, fontsize=9)
                ax.set_xlabel("original", fontsize=8)
                ax.set_ylabel("rescaled", fontsize=8)
            axes.flat[0].legend(fontsize=6)
            fig.suptitle(f"rescaling audit: channel importance of {layer} (x {self.meta['scale']})")
        else:
            per = self.extra["layer_means"]  # criterion -> {"trained": v, "random": [...]}
            for ax, crit in zip(axes.flat, crits, strict=False):
                rnd = np.asarray(per[crit]["random"], dtype=float)
                ax.scatter(np.zeros_like(rnd) + 1, rnd, s=16, color="0.5", label="random init")
                ax.errorbar(
                    [1.25], [rnd.mean()], yerr=[rnd.std()], fmt="o", color="k", capsize=3, label="mean (std)"
                )
                ax.scatter([0], [per[crit]["trained"]], s=40, color="C3", label="trained", zorder=3)
                ax.set_xticks([0, 1])
                ax.set_xticklabels(["trained", "random"])
                ax.set_xlim(-0.5, 1.6)
                ax.set_title(crit, fontsize=9)
                ax.set_ylabel("mean importance of the layer", fontsize=8)
            axes.flat[0].legend(fontsize=6)
            fig.suptitle(
                f"randomness audit: {self.meta['layer']} ({self.meta['repeats']} "
                + ("random networks)" if self.meta.get("reinit", "model") == "model" else "re-initialisations)")
            )
        return save_figure(fig, path)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _input_layers(net: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the Conv2d / Linear modules that receive the model input itself."""
    hits: list[str] = []

    def pre(name: str, mod: nn.Module, args: tuple) -> None:
        if args and args[0] is example:
            hits.append(name)

    with ExitStack() as hooks, inference(net):
        for n, m in net.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                hooks.callback(m.register_forward_pre_hook(partial(pre, n)).remove)
        net(example)
    return hits


def _fold_bn(bn: nn.Module, scale: float) -> None:
    if (
        isinstance(bn, nn.modules.batchnorm._BatchNorm)
        and bn.track_running_stats
        and bn.running_mean is not None
    ):
        bn.running_mean.mul_(scale)
        bn.running_var.mul_(scale * scale)


def scaled_copy(
    model: nn.Module,
    layer: str | None,
    scale: float,
    *,
    bn: str = "fold",
    input_scaled: bool = False,
    example_inputs: torch.Tensor | None = None,
) -> nn.Module:
    """A deep copy of ``model`` with ``layer``'s weight and bias multiplied by ``scale`` (``layer=None``:
    none), and with ``bn="fold"`` (or ``"auto"``) the BatchNorm right after a scaled tensor adjusted (see the module
    docstring). ``input_scaled`` + ``example_inputs``: also fold the BatchNorms after the layers that
    read the input."""
    check_choice("bn", bn, BN_MODES)
    net = copy.deepcopy(unwrap(model))
    example = example_inputs if example_inputs is not None else None
    found = resolve_layers(net, example, None) if example is not None else {}
    modules = dict(net.named_modules())
    with torch.no_grad():
        if layer is not None:
            if layer not in modules:
                raise ConfigError(f"layer={layer!r} is not a module of the model")
            mod = modules[layer]
            mod.weight.mul_(scale)
            if getattr(mod, "bias", None) is not None:
                mod.bias.mul_(scale)
            if bn in ("fold", "auto") and layer in found and found[layer].norm:
                _fold_bn(modules[found[layer].norm], scale)
        if input_scaled and bn in ("fold", "auto") and example is not None:
            for name in _input_layers(net, example):
                if name in found and found[name].norm:
                    _fold_bn(modules[found[name].norm], scale)
    return net


def _random_networks(net: nn.Module, layer: str, reinit: str, repeats: int, seed: int):
    """``("trained", net)``, then ``("random_<seed + i>", copy)`` one at a time (never all in memory)."""
    yield "trained", net
    for i in range(repeats):
        other = copy.deepcopy(net)
        g = torch.Generator().manual_seed(seed + i)
        reinitialize(other if reinit == "model" else other.get_submodule(layer), g)
        yield f"random_{seed + i}", other


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.numel() < 2:
        return float("nan")
    ra = torch.empty(a.numel(), dtype=torch.float64)
    rb = torch.empty_like(ra)
    ra[torch.sort(a.double(), stable=True).indices] = torch.arange(a.numel(), dtype=torch.float64)
    rb[torch.sort(b.double(), stable=True).indices] = torch.arange(b.numel(), dtype=torch.float64)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / den if den > 0 else float("nan")


def _same_ranking(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The same order of the channels, ties included (equal values stay equal, ordered pairs stay ordered)."""
    a, b = a.double(), b.double()
    return bool(torch.equal(torch.sign(a[:, None] - a[None, :]), torch.sign(b[:, None] - b[None, :])))


def _accuracy(net: nn.Module, test_batches: Any, num_classes: int, scale: float | None) -> float:
    data = batch_view(test_batches, scale=scale) if scale is not None else test_batches
    return evaluation.evaluate(net, data, num_classes=num_classes)["acc"]


def _check_scale(scale: object) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise ConfigError(f"scale={scale!r} is not allowed; it must be a number > 0")
    return float(scale)


def _prepare(model, scoring, test_data, layer, layers, criteria, samples_per_class, classes, num_classes):
    net = unwrap(model)
    crits = resolve_criteria(criteria)
    if scoring is None:
        raise ConfigError(
            "scoring= is required: a data module, a DataLoader or (inputs, labels) batches of the scoring set"
        )
    scoring_set = resolve_scoring_set(scoring, samples_per_class=samples_per_class, classes=classes, argument="scoring")
    batches = scoring_set.batches
    example = scoring_set.example_inputs(2, model_device(net))
    if not isinstance(layer, str):
        raise ConfigError(f"layer={layer!r} is not allowed; give the name of one prunable layer")
    found = resolve_layers(net, example, layers)
    if layer not in found:
        found_all = resolve_layers(net, example, None)
        if layer not in found_all:
            resolve_layers(net, example, [layer])  # raises with the list of prunable layers
        found = {**found, layer: found_all[layer]}
    test_batches = evaluation_set(test_data).batches if test_data is not None else None
    n_classes = class_count(scoring_set, num_classes)
    return net, crits, batches, example, found, test_batches, n_classes


# --------------------------------------------------------------------------------------------
# rescaling audit
# --------------------------------------------------------------------------------------------
def rescaling_audit(
    model: nn.Module,
    scoring: Any,
    *,
    layer: str,
    criteria: CriterionLike | Sequence[CriterionLike] = DEFAULT_AUDIT_CRITERIA,
    scale: float = 0.5,
    bn: str = "auto",
    layers: Sequence[str] | None = None,
    test_data: Any = None,
    samples_per_class: int = 100,
    classes: Sequence[int] | None = None,
    num_classes: int | None = None,
    progress: bool = True,
) -> AuditResult:
    """Each criterion on the network as it is, with the inputs scaled, with ``layer``'s filters
    scaled, and both (see the module docstring).

    Args:
        model: the network (a ClassificationModule is unwrapped).
        scoring: the scoring set: a data module or ``(inputs, labels)`` batches.
        layer: the layer whose filters are scaled (and whose scores the table shows).
        criteria: names / Criterion instances (Scores cannot be re-computed: not allowed).
        scale: the factor, default 0.5.
        bn: ``"auto"`` (default: ``"fold"`` if the network has a BatchNorm, else nothing to do),
            ``"fold"`` or ``"keep"``, see the module docstring; ``meta["bn"]`` is the mode applied
            (``"none"`` on a BatchNorm-free network).
        layers: the layers scored (default: every prunable layer); ``layer`` is always scored.
        test_data: optional data module / batches: the test accuracy under each condition.
        samples_per_class, classes, num_classes: the scoring-set draw / class count.
        progress: progress bars.

    Returns:
        :class:`AuditResult` (``kind="rescaling_audit"``). ``rows``: one per (criterion, condition,
        layer) with ``mean``, ``ratio`` (mean / original mean), ``max_abs_diff``, ``identical``
        (bit-exact), ``same_ranking``, ``spearman``. ``table``: one row per criterion for ``layer``.
    """
    scale = _check_scale(scale)
    check_choice("bn", bn, BN_MODES)
    if any(isinstance(c, Scores) for c in resolve_criteria(criteria)):
        raise ConfigError(
            "rescaling_audit re-computes the criteria: give names or Criterion instances, not Scores"
        )
    net, crits, batches, example, found, test_batches, n_classes = _prepare(
        model, scoring, test_data, layer, layers, criteria, samples_per_class, classes, num_classes
    )
    names = list(found)
    requested = bn
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    bn = ("fold" if bn == "auto" else bn) if has_bn else "none"
    copy_bn = "fold" if bn == "fold" else "keep"
    nets = {
        "original": net,
        "input": scaled_copy(net, None, scale, bn=copy_bn, input_scaled=True, example_inputs=example),
        "filters": scaled_copy(net, layer, scale, bn=copy_bn, example_inputs=example),
        "both": scaled_copy(net, layer, scale, bn=copy_bn, input_scaled=True, example_inputs=example),
    }
    data = {c: (batch_view(batches, scale=scale) if c in ("input", "both") else batches) for c in CONDITIONS}
    scores: dict[str, dict[str, Any]] = {}
    jobs = [(criterion_label(c), c, cond) for c in crits for cond in CONDITIONS]
    for label, c, cond in evaluation.progress(jobs, enabled=progress, desc="rescaling audit"):
        crit = copy.deepcopy(c) if not isinstance(c, str) else c
        # maps < 3x3 are expected among all layers: feature entropy cannot rank them (no warning)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="feature_entropy gives every channel the same score")
            scores.setdefault(label, {})[cond] = compute_scores(
                nets[cond], crit, data[cond], names, num_classes=n_classes, progress=False
            )

    rows: list[dict[str, Any]] = []
    for label, per in scores.items():
        for cond in CONDITIONS:
            for n in names:
                a, b = per["original"][n].double(), per[cond][n].double()
                mean_a, mean_b = float(a.mean()), float(b.mean())
                rows.append(
                    {
                        "criterion": label,
                        "condition": cond,
                        "layer": n,
                        "scaled_layer": n == layer,
                        "mean": mean_b,
                        "ratio": mean_b / mean_a if mean_a != 0 else float("nan"),
                        "max_abs_diff": float((a - b).abs().max()),
                        "identical": bool(torch.equal(a, b)),
                        "same_ranking": _same_ranking(a, b),
                        "spearman": _spearman(a, b),
                    }
                )
    accs: dict[str, float] = {}
    if test_batches is not None:
        for cond in CONDITIONS:
            accs[cond] = _accuracy(
                nets[cond], test_batches, n_classes, scale if cond in ("input", "both") else None
            )

    table: list[dict[str, Any]] = []
    s = f"x{scale:g}"
    for label in scores:
        r = {x["condition"]: x for x in rows if x["criterion"] == label and x["layer"] == layer}
        allc = {c: [x for x in rows if x["criterion"] == label and x["condition"] == c] for c in CONDITIONS}
        table.append(
            {
                "criterion": label,
                "mean (as is)": r["original"]["mean"],
                f"mean (input {s})": r["input"]["mean"],
                f"mean (filters {s})": r["filters"]["mean"],
                f"mean (both {s})": r["both"]["mean"],
                "ratio filters": r["filters"]["ratio"],
                "identical input/filters/both": "/".join(
                    "yes" if r[c]["identical"] else "no" for c in CONDITIONS[1:]
                ),
                "ranking kept input/filters/both": "/".join(
                    "yes" if r[c]["same_ranking"] else "no" for c in CONDITIONS[1:]
                ),
                "all layers identical input/filters/both": "/".join(
                    "yes" if all(x["identical"] for x in allc[c]) else "no" for c in CONDITIONS[1:]
                ),
            }
        )
    note = (
        f"Scores of `{layer}` (mean importance over its channels, higher = keep); `identical` = bit-exact equal "
        f"scores, `ranking kept` = the same channel order (ties included); scale {scale:g}, bn={bn}."
    )
    if accs:
        note += " Test accuracy: " + ", ".join(f"{c} {v:.4f}" for c, v in accs.items()) + "."
    meta = {
        "layer": layer,
        "scale": scale,
        "bn": bn,
        "bn_requested": requested,
        "layers": names,
        "criteria": list(scores),
        "test_acc": accs,
    }
    extra = {
        "layer_scores": {lab: {c: per[c][layer].tolist() for c in CONDITIONS} for lab, per in scores.items()}
    }
    cols = list(table[0].keys())
    return AuditResult(
        "rescaling_audit", rows, table, cols, f"Rescaling audit ({layer}, x{scale:g})", note, meta, extra
    )


# --------------------------------------------------------------------------------------------
# randomness audit
# --------------------------------------------------------------------------------------------
def randomness_audit(
    model: nn.Module,
    scoring: Any,
    *,
    layer: str,
    criteria: CriterionLike | Sequence[CriterionLike] = DEFAULT_AUDIT_CRITERIA,
    repeats: int = 100,
    reinit: str = "model",
    seed: int = 0,
    test_data: Any = None,
    samples_per_class: int = 100,
    classes: Sequence[int] | None = None,
    num_classes: int | None = None,
    progress: bool = True,
) -> AuditResult:
    """``layer``'s criteria in the trained network vs ``repeats`` randomly initialised networks.

    Args:
        model: the trained network (a ClassificationModule is unwrapped).
        scoring: the scoring set: a data module, a DataLoader or ``(inputs, labels)`` / dict batches.
        layer: the layer whose scores are compared.
        criteria: names / Criterion instances / Scores of the trained network are not allowed.
        repeats: random networks, default 100 (the feature-entropy paper's sample size).
        reinit: ``"model"`` (default): every Conv2d, Linear and BatchNorm of a copy re-drawn
            (:func:`~lightprune.analysis.reinitialize`: Kaiming normal fan-out convs, N(0, 0.01)
            Linear, fresh BatchNorm; other modules with ``reset_parameters`` reset), i.e. a whole
            randomly initialised network, as the paper's random networks; ``"layer"``: only
            ``layer`` re-drawn, the trained network around it.
        seed: random network ``i`` is drawn from ``torch.Generator().manual_seed(seed + i)``.
        test_data: optional data module / batches: the test accuracy of every network.
        samples_per_class, classes, num_classes: the scoring-set draw / class count.
        progress: progress bars.

    Returns:
        :class:`AuditResult` (``kind="randomness_audit"``). ``rows``: one per (criterion, network)
        with the layer's mean / std / min / max importance (``network`` = ``trained`` or
        ``random_<seed>``); ``table``: per criterion the trained mean, the random mean (std) over
        the random networks, and in how many of them the trained layer scores higher.

    Raises:
        ConfigError: bad argument (``repeats``, ``reinit``, ``layer``, ...).
    """
    repeats = check_positive_int("repeats", repeats)
    check_choice("reinit", reinit, REINIT_SCOPES)
    if any(isinstance(c, Scores) for c in resolve_criteria(criteria)):
        raise ConfigError("randomness_audit scores random networks: give criterion names or Criterion instances, not Scores")
    net, crits, batches, example, _, test_batches, n_classes = _prepare(
        model, scoring, test_data, layer, [layer], criteria, samples_per_class, classes, num_classes
    )
    rows: list[dict[str, Any]] = []
    means: dict[str, dict[str, Any]] = {c: {"trained": None, "random": []} for c in map(criterion_label, crits)}
    accs: dict[str, float] = {}
    bar = evaluation.progress(enabled=progress, desc="randomness audit", total=len(crits) * (repeats + 1))
    with bar:
        for key, other in _random_networks(net, layer, reinit, repeats, seed):
            for c in crits:
                crit = copy.deepcopy(c) if not isinstance(c, str) else c
                v = compute_scores(other, crit, batches, [layer], num_classes=n_classes, progress=False)[layer]
                v = v.double()
                row = {"criterion": criterion_label(c), "network": key, "layer": layer, "mean": float(v.mean()),
                       "std": float(v.std()) if v.numel() > 1 else 0.0, "min": float(v.min()), "max": float(v.max())}
                if test_batches is not None:
                    if key not in accs:
                        accs[key] = _accuracy(other, test_batches, n_classes, None)
                    row["test_acc"] = accs[key]
                rows.append(row)
                slot = means[criterion_label(c)]
                if key == "trained":
                    slot["trained"] = row["mean"]
                else:
                    slot["random"].append(row["mean"])
                bar.update(1)
    table = []
    for label, slot in means.items():
        rnd = np.asarray(slot["random"])
        std = float(rnd.std(ddof=1)) if rnd.size > 1 else 0.0
        table.append(
            {
                "criterion": label,
                "trained": slot["trained"],
                "random mean": float(rnd.mean()),
                "random std": std,
                "random mean (std)": f"{rnd.mean():.4g} ({std:.2g})",
                "trained > random": f"{int((slot['trained'] > rnd).sum())}/{rnd.size}",
            }
        )
    what = "randomly initialised networks" if reinit == "model" else "networks with that layer re-initialised"
    note = (
        f"Mean importance of the channels of `{layer}` (higher = keep) in the trained network and in {repeats} "
        f"{what} (seeds {seed}..{seed + repeats - 1}; Kaiming normal fan-out convs, N(0, 0.01) Linear, fresh BatchNorm)."
    )
    if accs:
        r_acc = np.asarray([v for k, v in accs.items() if k != "trained"])
        note += f" Test accuracy: trained {accs['trained']:.4f}, random {r_acc.mean():.4f} ({r_acc.std():.4f})."
    cols = ["criterion", "trained", "random mean (std)", "trained > random"]
    meta = {"layer": layer, "repeats": repeats, "reinit": reinit, "seed": seed, "criteria": list(means),
            "test_acc": accs}
    return AuditResult(
        "randomness_audit",
        rows,
        table,
        cols,
        f"Randomness audit ({layer}, {'random networks' if reinit == 'model' else 'layer re-initialised'})",
        note,
        meta,
        {"layer_means": means},
    )
