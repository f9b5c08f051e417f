"""Feature entropy and generalisation: networks trained on partly shuffled labels (Zhao & Zhang 2022, Fig. 6).

The feature-entropy paper compares networks that generalise (model set B, trained on the true
labels) with networks trained on partly corrupted labels (model set R) that fit their training set
as well, and finds that feature entropy computed on the *training* data alone separates them: the
networks trained on corrupted labels have higher feature entropy (less ordered unit maps), mostly in
the deeper layers. :func:`generalization_experiment` reproduces this on digits:

1. For every corruption level ``f`` (default 0, 0.2, 0.5, 1.0) and seed ``s``: exactly
   ``round(f * N)`` training labels are shuffled (:func:`shuffle_labels`: a seeded choice of images
   whose labels are permuted among themselves so that every chosen label changes; the class counts
   stay the same) and the same network (``ClassificationModule`` of a zoo model, a Lightning
   ``Trainer``, seed ``s``) is trained on them. The split into train / val / test is the same for
   every network (``data_seed``); validation and test labels are never shuffled.
2. Training accuracy (on the labels the network was trained with, and on the true ones) and test
   accuracy are measured (:func:`lightprune.evaluation.evaluate`).
3. Feature entropy of every layer (:func:`lightprune.analysis.feature_entropy_stats`: mean over the
   units of ``H_c``, CRITERIA.md step 5) is computed on a class-balanced draw of *training* images,
   per class and averaged over classes. The classes are the true labels by default
   (``class_labels="true"``: the same image groups for every network, so only the network differs);
   ``class_labels="training"`` groups the images by the labels the network was trained with.

Every network's results go to ``<out>/level_<f>_seed_<s>/result.json`` (and its weights to
``model.pt``): a rerun skips finished networks, so an interrupted experiment resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .. import evaluation
from ..data import DigitsDataModule, class_balanced_indices
from ..errors import ConfigError, check_choice, check_positive_int
from ._common import markdown_table, pyplot, save_figure, write_table
from .layers import feature_entropy_stats

__all__ = [
    "DEFAULT_LEVELS",
    "CLASS_LABELS",
    "shuffle_labels",
    "ShuffledLabelsDigits",
    "generalization_experiment",
    "GeneralizationResult",
]

DEFAULT_LEVELS = (0.0, 0.2, 0.5, 1.0)
CLASS_LABELS = ("true", "training")


def shuffle_labels(labels: torch.Tensor, fraction: float, *, seed: int = 0) -> torch.Tensor:
    """A copy of ``labels`` in which exactly ``round(fraction * N)`` labels are changed.

    ``k = round(fraction * N)`` images are drawn without replacement (seeded); their labels are
    permuted among themselves at random, then every image that kept its own class swaps its new
    label with another drawn image (chosen at random among those for which the swap changes both),
    so that every drawn image ends with a label different from its own. The class counts are
    unchanged (a shuffle, not new labels).

    Args:
        labels: 1-D integer tensor.
        fraction: in ``[0, 1]``.
        seed: seed of the draw and of the permutation.

    Raises:
        ConfigError: ``fraction`` outside ``[0, 1]``, ``labels`` not a 1-D integer tensor, or the
            drawn images cannot all change label by a shuffle (one class holds more than half of them).

    Example::

        >>> y = torch.arange(10) % 5
        >>> z = shuffle_labels(y, 0.4, seed=1)
        >>> int((z != y).sum()), torch.equal(z.bincount(), y.bincount())
        (4, True)
    """
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.is_floating_point():
        raise ConfigError(f"labels must be a 1-D integer tensor, got {labels!r:.80}")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        raise ConfigError(f"fraction={fraction!r} is not allowed; it must be a number in [0, 1]")
    y = labels.cpu().numpy().astype(np.int64)
    n = y.size
    k = int(round(fraction * n))
    out = y.copy()
    if k == 0:
        return labels.clone()
    rng = np.random.default_rng(seed)
    chosen = rng.choice(n, size=k, replace=False)
    old = y[chosen]
    if np.bincount(old).max() * 2 > k:
        raise ConfigError(
            f"fraction={fraction!r} draws {k} labels, more than half of them of one class: they cannot all "
            "change by a shuffle; use a larger fraction or a larger data set"
        )
    new = old[rng.permutation(k)]
    for i in np.flatnonzero(new == old):
        if new[i] != old[i]:
            continue  # fixed by an earlier swap
        ok = np.flatnonzero((old != old[i]) & (new != old[i]))
        j = int(rng.choice(ok))
        new[i], new[j] = new[j], new[i]
    assert (new != old).all()
    out[chosen] = new
    return torch.from_numpy(out).to(labels.device, labels.dtype)


class ShuffledLabelsDigits(DigitsDataModule):
    """:class:`~lightprune.data.DigitsDataModule` whose *training* labels are partly shuffled
    (:func:`shuffle_labels`); validation and test labels are the true ones.

    Args:
        fraction: fraction of the training labels shuffled, in ``[0, 1]``, default 0.
        shuffle_seed: seed of :func:`shuffle_labels`, default 0.
        **kwargs: :class:`~lightprune.data.DigitsDataModule` arguments (``seed`` fixes the split).

    Attributes (after ``setup``): ``true_train_labels``: the training labels before shuffling
    (``train_labels()`` are the shuffled ones the network is trained with).
    """

    def __init__(self, fraction: float = 0.0, shuffle_seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        shuffle_labels(torch.zeros(0, dtype=torch.long), fraction)  # checks fraction
        self.fraction, self.shuffle_seed = fraction, shuffle_seed
        self.true_train_labels: torch.Tensor | None = None

    def _build(self) -> dict[str, TensorDataset]:
        splits = super()._build()
        x, y = splits["train"].tensors
        self.true_train_labels = y
        splits["train"] = TensorDataset(x, shuffle_labels(y, self.fraction, seed=self.shuffle_seed))
        return splits


def _level_name(fraction: float, seed: int) -> str:
    return f"level_{round(100 * fraction):03d}_seed_{seed}"


@dataclass
class GeneralizationResult:
    """``networks``: one dict per (level, seed) with accuracies and ``layers`` (per-layer feature
    entropy, ``class_feature_entropy`` per class); ``meta``: the settings."""

    networks: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> list[str]:
        return list(dict.fromkeys(r["layer"] for n in self.networks for r in n["layers"]))

    def rows(self) -> list[dict[str, Any]]:
        """Long format: one row per (level, seed, layer, class); class ``mean`` = the class mean."""
        out = []
        for n in self.networks:
            for r in n["layers"]:
                base = {"level": n["level"], "seed": n["seed"], "layer": r["layer"], "map_size": r["map_size"]}
                out.append({**base, "class": "mean", "feature_entropy": r["feature_entropy"],
                            "selective_rate": r["selective_rate"]})
                for c, h in r["class_feature_entropy"].items():
                    out.append({**base, "class": int(c), "feature_entropy": h, "selective_rate": float("nan")})
        return out

    def network_table(self) -> list[dict[str, Any]]:
        """One row per network: level, seed, accuracies, mean feature entropy over its layers."""
        return [
            {
                "level": n["level"], "seed": n["seed"], "train acc": n["train_acc"],
                "train acc (true labels)": n["train_acc_true"], "test acc": n["test_acc"],
                "FE mean": float(np.mean([r["feature_entropy"] for r in n["layers"]])) if n["layers"] else float("nan"),
            }
            for n in self.networks
        ]

    def summary(self) -> list[dict[str, Any]]:
        """One row per level: accuracies and each layer's feature entropy, mean ± std over seeds."""
        out = []
        for level in sorted({n["level"] for n in self.networks}):
            nets = [n for n in self.networks if n["level"] == level]
            row: dict[str, Any] = {"shuffled": f"{round(100 * level)} %", "seeds": len(nets)}
            for key, name in (("train_acc", "train acc"), ("test_acc", "test acc")):
                row[name] = _pm([n[key] for n in nets], 3)
            for layer in self.layers:
                values = [r["feature_entropy"] for n in nets for r in n["layers"] if r["layer"] == layer]
                row[f"FE {layer}"] = _pm(values, 3)
            out.append(row)
        return out

    def markdown(self) -> str:
        return markdown_table(self.summary())

    def save(self, out_dir: str | Path, *, plot: bool = True) -> dict[str, Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"rows": write_table(self.rows(), out, "generalization", markdown=False)["csv"]}
        p = write_table(self.network_table(), out, "generalization_networks", title="Networks", digits=4)
        paths["networks_csv"], paths["networks_md"] = p["csv"], p["md"]
        note = (
            f"Feature entropy (nats; mean over units and classes) on {self.meta.get('images')} training images "
            f"(classes: {self.meta.get('class_labels')} labels), mean ± std over seeds; train acc on the labels "
            "each network was trained with, test acc on the true test labels."
        )
        p = write_table(self.summary(), out, "generalization_table", title="Feature entropy vs shuffled labels", note=note)
        paths["table_csv"], paths["table_md"] = p["csv"], p["md"]
        paths["json"] = out / "generalization.json"
        paths["json"].write_text(json.dumps({"meta": self.meta, "networks": self.networks}, indent=1))
        if plot:
            paths["plot"] = self.plot(out / "generalization.png")
        return paths

    def plot(self, path: str | Path) -> Path:
        """The paper's Fig. 6 style: feature entropy per layer (left) and per class (right, mean over
        layers), one line and marker per shuffled fraction, mean over seeds with min-max bars."""
        plt = pyplot()
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
        levels = sorted({n["level"] for n in self.networks})
        cmap = plt.get_cmap("coolwarm")
        markers = "osD^vP*X"
        layers = self.layers
        classes = sorted({int(c) for n in self.networks for r in n["layers"] for c in r["class_feature_entropy"]})
        for i, level in enumerate(levels):
            nets = [n for n in self.networks if n["level"] == level]
            colour = cmap(i / max(1, len(levels) - 1))
            style = dict(color=colour, marker=markers[i % len(markers)], capsize=3, lw=1.5, ms=5,
                         label=f"{round(100 * level)} % shuffled (test acc {np.mean([n['test_acc'] for n in nets]):.2f})")
            per_layer = np.array([[_layer(n, la)["feature_entropy"] for la in layers] for n in nets])
            _errorbar(ax, np.arange(len(layers)), per_layer, style)
            per_class = np.array(
                [[np.mean([r["class_feature_entropy"][str(c)] for r in n["layers"]]) for c in classes] for n in nets]
            )
            _errorbar(ax2, np.arange(len(classes)), per_class, style)
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels(layers, rotation=45, fontsize=8)
        ax.set_xlabel("layer")
        ax2.set_xticks(range(len(classes)))
        ax2.set_xticklabels([str(c) for c in classes])
        ax2.set_xlabel(f"class ({self.meta.get('class_labels', 'true')} labels)")
        ax.set_ylabel("feature entropy (nats)")
        ax2.set_ylabel("feature entropy (nats)")
        ax.set_title("per layer (mean over units and classes)", fontsize=9)
        ax2.set_title("per class (mean over units and layers)", fontsize=9)
        for a in (ax, ax2):
            a.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.suptitle(f"feature entropy on training data vs shuffled training labels ({self.meta.get('model')}, "
                     f"{self.meta.get('seeds_per_level')} seed(s) per level; bars: min-max over seeds)", fontsize=10)
        return save_figure(fig, path)


def _layer(network: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in network["layers"] if r["layer"] == name)


def _errorbar(ax, xs: np.ndarray, values: np.ndarray, style: dict[str, Any]) -> None:
    mean = values.mean(axis=0)
    err = np.stack([mean - values.min(axis=0), values.max(axis=0) - mean])
    ax.errorbar(xs, mean, yerr=err, **style)


def _pm(values: Sequence[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def _check_levels(levels: Sequence[float]) -> list[float]:
    levels = [levels] if isinstance(levels, (int, float)) else list(levels)
    if not levels:
        raise ConfigError("levels=[] is not allowed; give fractions in [0, 1], e.g. [0, 0.2, 0.5, 1]")
    for f in levels:
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f <= 1:
            raise ConfigError(f"levels contains {f!r}; every level must be a fraction in [0, 1]")
    if len({round(100 * f) for f in levels}) != len(levels):
        raise ConfigError(f"levels={levels} names a level twice (levels are compared in whole percent)")
    return [float(f) for f in levels]


def generalization_experiment(
    *,
    model: str = "cifar_vgg11",
    model_kwargs: dict[str, Any] | None = None,
    levels: Sequence[float] = DEFAULT_LEVELS,
    seeds: Sequence[int] = (0,),
    epochs: int = 30,
    steps: int | None = None,
    lr: float = 1e-3,
    batch_size: int = 64,
    image_size: int = 32,
    channels: int = 1,
    data_seed: int = 0,
    samples_per_class: int = 50,
    class_labels: str = "true",
    layers: Sequence[str] | None = None,
    p: float = 0.1,
    out: str | Path = "runs/analysis/generalization",
    accelerator: str = "cpu",
    progress: bool = True,
) -> GeneralizationResult:
    """Train one network per (level, seed) on digits with that fraction of training labels shuffled;
    measure its accuracies and feature entropy per layer and class on training data (module docstring).

    Args:
        model, model_kwargs: zoo model (:func:`lightprune.create_model`), default ``cifar_vgg11``
            with ``{"width_mult": 0.125}``.
        levels: fractions of shuffled training labels, default ``(0, 0.2, 0.5, 1)``.
        seeds: training seeds (also the seeds of the shuffle), one network per (level, seed).
        epochs, lr, batch_size: training (Adam, no weight decay, no schedule, no augmentation:
            networks must be able to fit shuffled labels).
        steps: if set, train this many optimizer steps instead of ``epochs`` epochs (smoke tests).
        image_size, channels, data_seed: digits geometry and the seed of the split and of the
            scoring draw (the same for every network).
        samples_per_class: training images per class for the feature entropy.
        class_labels: ``"true"`` (default) or ``"training"``: the labels that group the scoring
            images into classes (and choose the class-balanced draw).
        layers: layers (default: every prunable layer; layers with maps under 3x3 are left out).
        p: selective-rate threshold of the feature entropy, default 0.1.
        out: output folder; one sub-folder per network (resume: finished networks are read back).
        accelerator: Lightning accelerator, default ``"cpu"``.
        progress: progress bar over the networks.
    """
    import lightning as L

    from ..lightning_glue import quiet_lightning
    from ..module import ClassificationModule

    levels = _check_levels(levels)
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds={seeds!r} is not allowed; give distinct integers, e.g. [0, 1, 2]")
    check_positive_int("epochs", epochs)
    if steps is not None:
        check_positive_int("steps", steps)
    check_positive_int("samples_per_class", samples_per_class)
    check_choice("class_labels", class_labels, CLASS_LABELS)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ConfigError(f"lr={lr!r} is not allowed; it must be a number > 0")
    model_kwargs = {"width_mult": 0.125} if model_kwargs is None and model == "cifar_vgg11" else dict(model_kwargs or {})
    out = Path(out)
    meta = {
        "model": model, "model_kwargs": model_kwargs, "levels": levels, "seeds": seeds,
        "seeds_per_level": len(seeds), "epochs": epochs, "steps": steps, "lr": lr, "batch_size": batch_size,
        "image_size": image_size, "channels": channels, "data_seed": data_seed,
        "samples_per_class": samples_per_class, "class_labels": class_labels, "p": p,
    }
    settings = {k: v for k, v in meta.items() if k not in ("levels", "seeds", "seeds_per_level")}
    jobs = [(f, s) for s in seeds for f in levels]  # seed-major: every level of a seed first
    networks = []
    for fraction, seed in evaluation.progress(jobs, enabled=progress, desc="generalization networks"):
        folder = out / _level_name(fraction, seed)
        done = folder / "result.json"
        if done.is_file():
            saved = json.loads(done.read_text())
            if saved.get("settings") == settings:
                networks.append(saved["network"])
                continue
        dm = ShuffledLabelsDigits(
            fraction, shuffle_seed=seed, image_size=image_size, channels=channels, batch_size=batch_size, seed=data_seed
        )
        dm.setup("fit")
        module = ClassificationModule(
            model, num_classes=dm.num_classes, in_channels=channels, image_size=image_size, model_kwargs=model_kwargs,
            optimizer=lambda params: torch.optim.Adam(params, lr=lr),
        )
        weights, record = folder / "model.pt", folder / "train.json"
        trained = json.loads(record.read_text()) if weights.is_file() and record.is_file() else {}
        if trained.get("settings") == settings:  # trained before an interrupt: weights read back
            module.model.load_state_dict(torch.load(weights, weights_only=True))
            trained_in = trained["train_seconds"]
        else:
            L.seed_everything(seed, verbose=False)
            t0 = time.perf_counter()
            with quiet_lightning():
                trainer = L.Trainer(
                    max_epochs=epochs if steps is None else -1, max_steps=-1 if steps is None else steps,
                    accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                    limit_val_batches=0,
                )
                trainer.fit(module, datamodule=dm)
            trained_in = time.perf_counter() - t0
            folder.mkdir(parents=True, exist_ok=True)
            torch.save(module.model.state_dict(), weights)
            record.write_text(json.dumps({"settings": settings, "train_seconds": trained_in}))
        net = module.model.eval()
        networks.append(_measure(net, dm, fraction, seed, samples_per_class, class_labels, layers, p, data_seed))
        networks[-1]["train_seconds"] = trained_in
        done.write_text(json.dumps({"settings": settings, "network": networks[-1]}, indent=1))
    images = samples_per_class * 10
    networks.sort(key=lambda n: (n["level"], n["seed"]))
    return GeneralizationResult(networks, {**meta, "images": images})


def _measure(net, dm: ShuffledLabelsDigits, fraction: float, seed: int, samples_per_class: int,
             class_labels: str, layers, p: float, data_seed: int) -> dict[str, Any]:
    x, y_train = dm.train_set.tensors  # type: ignore[union-attr]
    y_true = dm.true_train_labels
    assert y_true is not None
    nc = dm.num_classes

    def batches(xs, ys, size=256):
        return [(xs[i : i + size], ys[i : i + size]) for i in range(0, len(ys), size)]

    acc_train = evaluation.evaluate(net, batches(x, y_train), num_classes=nc)["acc"]
    acc_true = evaluation.evaluate(net, batches(x, y_true), num_classes=nc)["acc"]
    dm.setup("test")
    acc_test = evaluation.evaluate(net, dm.test_dataloader(), num_classes=nc)["acc"]
    groups = y_true if class_labels == "true" else y_train
    idx = torch.tensor(class_balanced_indices(groups, samples_per_class, seed=data_seed))
    stats = feature_entropy_stats(net, batches(x[idx], groups[idx]), layers=layers, p=p)
    kept = [r for r in stats if not math.isnan(r["feature_entropy"])]
    return {
        "level": fraction, "seed": seed, "train_acc": acc_train, "train_acc_true": acc_true, "test_acc": acc_test,
        "changed_labels": int((y_train != y_true).sum()), "train_images": int(len(y_true)),
        "layers": [
            {"layer": r["layer"], "map_size": r["map_size"], "feature_entropy": r["feature_entropy"],
             "feature_entropy_std": r["feature_entropy_std"], "selective_rate": r["selective_rate"],
             "class_feature_entropy": {str(c): h for c, h in r["class_feature_entropy"].items()}}
            for r in kept
        ],
    }
