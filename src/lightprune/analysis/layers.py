"""Layer analysis: mean feature entropy and selective rate per layer (Zhao & Zhang 2022, Fig. 5).

For every conv layer with square maps of side ``m >= 3`` (smaller maps and Linear layers cannot
hold a cycle: reported as n/a), the birth index of every unit on every scoring image is computed
(:func:`lightprune.topology.birth_times`, post-activation maps); per class ``c``
:func:`lightprune.topology.feature_entropy` gives each unit's entropy ``H_c`` and selective rate
``eps_c`` (CRITERIA.md step 5, ``p = 0.1``). The layer's **feature entropy** is the mean of
``H_c`` over its units and the classes, its **selective rate** the mean of ``eps_c``; ``no_birth``
is the fraction of (image, unit) pairs without a birth.

:func:`layer_analysis` compares a trained network with a randomly initialised copy (Fig. 5A);
:class:`FeatureEntropyMonitor` records the same numbers during training, beside the training loss
(Fig. 5B).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from .. import evaluation
from ..collect import PrunableLayer, capture_activations
from ..data import resolve_scoring_set
from ..errors import ConfigError, check_positive_int
from ..evaluation import inference, model_device
from ..topology import birth_times, feature_entropy
from ._common import (
    markdown_table,
    pyplot,
    random_copy,
    resolve_layers,
    save_figure,
    unwrap,
    write_table,
)

__all__ = ["feature_entropy_stats", "layer_analysis", "LayerAnalysisResult", "FeatureEntropyMonitor"]


def _check_p(p: object) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ConfigError(f"p={p!r} is not allowed; it must be a number in [0, 1]")
    return float(p)


def feature_entropy_stats(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    layers: Sequence[str] | None = None,
    p: float = 0.1,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Per layer: ``feature_entropy`` and ``selective_rate`` (means over units and classes),
    ``feature_entropy_std`` (std over units of the class-mean entropy), ``no_birth``, ``map_size``,
    ``channels``, ``class_feature_entropy`` (``{class: mean over units of H_c}``, empty where n/a);
    NaN for layers whose maps cannot hold a cycle. The model's mode is restored."""
    p = _check_p(p)
    net = unwrap(model)
    device = model_device(net)
    scoring = resolve_scoring_set(batches, argument="batches")
    found: dict[str, PrunableLayer] = resolve_layers(net, scoring.example_inputs(2, device), layers)
    births: dict[str, list[torch.Tensor]] = {n: [] for n in found}
    shapes: dict[str, tuple[int, ...]] = {}
    labels: list[torch.Tensor] = []

    def feed(name: str, act: torch.Tensor) -> None:
        shapes[name] = tuple(act.shape[1:])
        if act.ndim == 4 and act.shape[-1] == act.shape[-2] and act.shape[-1] >= 3:
            births[name].append(birth_times(act.detach()).to(torch.int32).cpu())

    with inference(net), capture_activations(net, found, feed):
        for x, y in evaluation.progress(scoring.batches, enabled=progress, desc="feature entropy"):
            labels.append(y.cpu())
            net(x.to(device))
    if not labels:
        raise ConfigError("the scoring set holds no image (empty loader)")
    y_all = torch.cat(labels)
    rows = []
    for n, layer in found.items():
        shape = shapes.get(n, ())
        m = shape[-1] if len(shape) == 3 else 1
        row: dict[str, Any] = {"layer": n, "channels": layer.out_channels, "map_size": m, "class_feature_entropy": {}}
        if not births[n]:
            row.update(
                feature_entropy=float("nan"),
                selective_rate=float("nan"),
                feature_entropy_std=float("nan"),
                no_birth=float("nan"),
            )
        else:
            b = torch.cat(births[n])
            hs, es = [], []
            for c in torch.unique(y_all).tolist():
                h, e = feature_entropy(b[y_all == c], p=p)
                hs.append(h)
                es.append(e)
                row["class_feature_entropy"][int(c)] = float(h.mean())
            h_units = torch.stack(hs).mean(0)
            row.update(
                feature_entropy=float(h_units.mean()),
                selective_rate=float(torch.stack(es).mean()),
                feature_entropy_std=float(h_units.std()) if h_units.numel() > 1 else 0.0,
                no_birth=float((b < 0).double().mean()),
            )
        rows.append(row)
    return rows


@dataclass
class LayerAnalysisResult:
    """Rows per (model, layer): ``model`` is ``trained`` or ``random``."""

    rows: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    def table(self) -> list[dict[str, Any]]:
        """One row per layer: trained vs random feature entropy and selective rate."""
        out = []
        tr = {r["layer"]: r for r in self.rows if r["model"] == "trained"}
        rd = {r["layer"]: r for r in self.rows if r["model"] == "random"}
        for n, r in tr.items():
            q = rd.get(n, {})
            out.append(
                {
                    "layer": n,
                    "channels": r["channels"],
                    "map": f"{r['map_size']}x{r['map_size']}",
                    "FE trained": r["feature_entropy"],
                    "FE random": q.get("feature_entropy", float("nan")),
                    "sel. rate trained": r["selective_rate"],
                    "sel. rate random": q.get("selective_rate", float("nan")),
                    "no birth trained": r["no_birth"],
                    "no birth random": q.get("no_birth", float("nan")),
                }
            )
        return out

    def markdown(self, digits: int = 3) -> str:
        return markdown_table(self.table(), digits=digits)

    def save(self, out_dir: str | Path, *, plot: bool = True) -> dict[str, Path]:
        out = Path(out_dir)
        paths = {"rows": write_table(self.rows, out, "layer_analysis", markdown=False)["csv"]}
        note = (
            f"Mean feature entropy (FE, nats) and selective rate over units and classes, {self.meta.get('images')} "
            f"scoring images, p = {self.meta.get('p')}; random = the same architecture re-initialised (seed {self.meta.get('seed')}). "
            "n/a: maps smaller than 3x3 or Linear layers (no cycle possible)."
        )
        p = write_table(
            self.table(), out, "layer_analysis_table", title="Layer analysis", note=note, digits=3
        )
        paths["table_csv"], paths["table_md"] = p["csv"], p["md"]
        if plot:
            paths["plot"] = self.plot(out / "layer_analysis.png")
        return paths

    def plot(self, path: str | Path) -> Path:
        """Two panels against layer depth: feature entropy and selective rate, trained (solid) vs random (dashed)."""
        plt = pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for model, style in (("trained", "o-"), ("random", "s--")):
            rr = [r for r in self.rows if r["model"] == model and not math.isnan(r["feature_entropy"])]
            if not rr:
                continue
            xs = list(range(len(rr)))
            axes[0].plot(xs, [r["feature_entropy"] for r in rr], style, label=model)
            axes[1].plot(xs, [r["selective_rate"] for r in rr], style, label=model)
            for ax in axes:
                ax.set_xticks(xs)
                ax.set_xticklabels([r["layer"] for r in rr], rotation=60, fontsize=7)
        axes[0].set_ylabel("mean feature entropy (nats)")
        axes[1].set_ylabel("mean selective rate")
        axes[1].set_ylim(-0.02, 1.02)
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle("feature entropy per layer: trained vs randomly initialised")
        return save_figure(fig, path)


def layer_analysis(
    model: nn.Module,
    scoring: Any,
    *,
    layers: Sequence[str] | None = None,
    random_model: nn.Module | None = None,
    seed: int = 0,
    p: float = 0.1,
    samples_per_class: int = 100,
    classes: Sequence[int] | None = None,
    progress: bool = True,
) -> LayerAnalysisResult:
    """Feature entropy and selective rate per layer of ``model`` and of a randomly initialised copy.

    Args:
        model: the trained network (a ClassificationModule is unwrapped).
        scoring: a data module (its class-balanced scoring set) or ``(inputs, labels)`` batches.
        layers: layer names, default: every prunable layer.
        random_model: the random network to compare with; default: a deep copy of ``model``
            re-initialised with ``seed`` (Kaiming normal convs, N(0, 0.01) Linear, fresh BatchNorm).
        p: the selective-rate threshold, default 0.1.
        samples_per_class, classes: the scoring-set draw from a data module.
        progress: progress bars.
    """
    net = unwrap(model)
    batches = resolve_scoring_set(scoring, samples_per_class=samples_per_class, classes=classes, argument="scoring").batches
    rnd = unwrap(random_model) if random_model is not None else random_copy(net, seed)
    rows = []
    for label, m in (("trained", net), ("random", rnd)):
        for r in feature_entropy_stats(m, batches, layers=layers, p=p, progress=progress):
            r.pop("class_feature_entropy")
            rows.append({"model": label, **r})
    images = sum(int(x.shape[0]) for x, _ in batches)
    return LayerAnalysisResult(
        rows,
        {"p": p, "seed": seed, "images": images, "layers": list(dict.fromkeys(r["layer"] for r in rows))},
    )


# --------------------------------------------------------------------------------------------
# training-time monitor
# --------------------------------------------------------------------------------------------
class FeatureEntropyMonitor(L.Callback):
    """Records each layer's mean feature entropy and selective rate during training (Fig. 5B).

    Every ``every_n_epochs`` epochs (and before the first, with ``at_start``) the scoring set is
    streamed through the network (eval mode, no gradients; the mode is restored). The values go to
    every logger of the trainer (``feature_entropy/<layer>``, ``selective_rate/<layer>``,
    ``feature_entropy/mean``, ``train_loss_epoch``) and to :attr:`history`; at the end of ``fit``
    ``feature_entropy_monitor.csv`` and ``.png`` (entropy per layer and the training loss against
    the epoch) are written to ``output_dir`` (default: the trainer's log dir).

    Args:
        every_n_epochs: period in epochs, default 1.
        samples_per_class: scoring images per class drawn from the data module, default 20.
        layers: layer names (of the network inside the LightningModule, e.g. ``features.3``);
            default: every prunable layer with maps of at least 3x3.
        classes: classes of the scoring set, default all.
        p: selective-rate threshold, default 0.1.
        dataloader: ``(inputs, labels)`` batches to use instead of the data module's scoring set.
        output_dir: where the CSV and plot go; default: ``trainer.log_dir`` (or ``default_root_dir``).
        at_start: also record before training (epoch 0), default True.
        plot: write the PNG, default True.

    Example::

        >>> from lightprune.analysis import FeatureEntropyMonitor
        >>> cb = FeatureEntropyMonitor(every_n_epochs=2, samples_per_class=10)
        >>> cb.every_n_epochs
        2
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        samples_per_class: int = 20,
        layers: Sequence[str] | None = None,
        classes: Sequence[int] | None = None,
        p: float = 0.1,
        dataloader: Iterable[Any] | None = None,
        output_dir: str | None = None,
        at_start: bool = True,
        plot: bool = True,
    ) -> None:
        super().__init__()
        self.every_n_epochs = check_positive_int("every_n_epochs", every_n_epochs)
        self.samples_per_class = check_positive_int("samples_per_class", samples_per_class)
        self.layers = list(layers) if layers is not None else None
        self.classes = list(classes) if classes is not None else None
        self.p = _check_p(p)
        self.dataloader = dataloader
        self.output_dir = output_dir
        self.at_start = bool(at_start)
        self.plot = bool(plot)
        self.history: list[dict[str, Any]] = []
        self._losses: list[float] = []
        self.paths: dict[str, Path] = {}

    def _batches(self, trainer: L.Trainer) -> Iterable[Any]:
        from ..data import ClassificationDataModule

        data = self.dataloader if self.dataloader is not None else getattr(trainer, "datamodule", None)
        if not (self.dataloader is not None or isinstance(data, ClassificationDataModule)):
            raise ConfigError(
                "FeatureEntropyMonitor needs a scoring set: fit with a lightprune data module or pass dataloader="
            )
        return resolve_scoring_set(data, samples_per_class=self.samples_per_class, classes=self.classes).batches

    def _record(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int, loss: float) -> None:
        net = getattr(pl_module, "model", pl_module)
        stats = feature_entropy_stats(net, self._batches(trainer), layers=self.layers, p=self.p)
        stats = [s for s in stats if not math.isnan(s["feature_entropy"])]
        if self.layers is None:
            self.layers = [s["layer"] for s in stats]
        entry: dict[str, Any] = {"epoch": epoch, "global_step": trainer.global_step, "train_loss": loss}
        metrics: dict[str, float] = {}
        for s in stats:
            entry[f"feature_entropy/{s['layer']}"] = s["feature_entropy"]
            entry[f"selective_rate/{s['layer']}"] = s["selective_rate"]
        if stats:
            entry["feature_entropy/mean"] = float(np.mean([s["feature_entropy"] for s in stats]))
            entry["selective_rate/mean"] = float(np.mean([s["selective_rate"] for s in stats]))
        self.history.append(entry)
        metrics = {
            k: float(v)
            for k, v in entry.items()
            if k not in ("global_step", "train_loss") and not (isinstance(v, float) and math.isnan(v))
        }
        if not math.isnan(loss):
            metrics["train_loss_epoch"] = loss
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._losses = []
        if self.at_start and trainer.current_epoch == 0:
            self._record(trainer, pl_module, 0, float("nan"))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._losses.append(float(loss.detach()))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loss = float(np.mean(self._losses)) if self._losses else float("nan")
        self._losses = []
        epoch = trainer.current_epoch + 1
        if epoch % self.every_n_epochs == 0:
            self._record(trainer, pl_module, epoch, loss)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not self.history:
            return
        out = Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)
        self.paths = {"csv": write_table(self.history, out, "feature_entropy_monitor", markdown=False)["csv"]}
        if self.plot:
            self.paths["plot"] = self.plot_history(out / "feature_entropy_monitor.png")

    def plot_history(self, path: str | Path) -> Path:
        """Feature entropy per layer (left axis) and training loss (right axis) against the epoch;
        selective rate per layer in a second panel."""
        plt = pyplot()
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        epochs = [h["epoch"] for h in self.history]
        cmap = plt.get_cmap("viridis")
        names = self.layers or []
        for i, n in enumerate(names):
            colour = cmap(i / max(1, len(names) - 1))
            for axis, key in ((ax, "feature_entropy"), (ax2, "selective_rate")):
                values = [h.get(f"{key}/{n}", float("nan")) for h in self.history]
                axis.plot(epochs, values, "o-", color=colour, ms=3, lw=1.2, label=n)
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean feature entropy (nats)")
        twin = ax.twinx()
        twin.plot(epochs, [h["train_loss"] for h in self.history], "k--", lw=1.5, label="training loss")
        twin.set_ylabel("training loss")
        twin.legend(loc="upper right", fontsize=7)
        ax.legend(loc="upper left", fontsize=6, ncol=2)
        ax2.set_xlabel("epoch")
        ax2.set_ylabel("mean selective rate")
        ax2.set_ylim(-0.02, 1.02)
        for a in (ax, ax2):
            a.grid(alpha=0.3)
        fig.suptitle("feature entropy during training")
        return save_figure(fig, path)
