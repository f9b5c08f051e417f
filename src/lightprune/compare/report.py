"""Local report of a comparison: ``results.csv``, ``report.md``, ``spearman.csv`` and PNG plots
(matplotlib, Agg backend).

Plots:

- ``layer_ratios.png``: fraction of channels removed per layer, one line per criterion (one panel per ratio).
- ``acc_vs_macs.png``: test accuracy after fine-tuning (filled) and before (hollow) against MACs, one
  series per criterion, the unpruned model as a star.
- ``acc_vs_ratio.png`` (several ratios): test accuracy after fine-tuning against the pruning ratio.
- ``score_correlation.png``: Spearman rank correlation of the criteria's channel scores, criteria x
  criteria, averaged over layers (layers where a criterion gives every channel the same score are
  left out of that pair's average).
- ``score_correlation_layers.png``: the same correlation, one panel per layer.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CSV_COLUMNS", "spearman_matrices", "write_report"]

CSV_COLUMNS = [
    "criterion", "ratio", "strategy", "channel_ratio",
    "val_acc_before_ft", "test_acc_before_ft", "test_acc_before_ft_no_recovery", "recovery", "val_acc", "val_balanced_acc", "test_acc", "test_balanced_acc",
    "test_acc_no_kd", "distillation", "base_test_acc", "acc_drop", "acc_drop_before_ft",
    "params", "params_base", "params_pruned_ratio", "macs", "macs_base", "macs_pruned_ratio",
    "latency_ms", "latency_median_ms", "img_per_s", "score_s", "finetune_s", "wandb_run",
]


def spearman_matrices(scores: Mapping[str, Mapping[str, Any]], layers: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Spearman rank correlation of every pair of criteria on every layer.

    Returns:
        ``(mean, per_layer)``: ``mean`` is (K, K), the average over layers of the defined values;
        ``per_layer`` is (L, K, K). A value is NaN where a criterion gives every channel of the
        layer the same score (no ranking), or when the layer has fewer than 2 channels.
    """
    from scipy.stats import spearmanr

    names = list(scores)
    k, n_layers = len(names), len(layers)
    per = np.full((n_layers, k, k), np.nan)
    for li, layer in enumerate(layers):
        vecs = [np.asarray(scores[c][layer], dtype=np.float64) for c in names]
        for i in range(k):
            for j in range(i, k):
                a, b = vecs[i], vecs[j]
                if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    rho = float(spearmanr(a, b).statistic)
                per[li, i, j] = per[li, j, i] = rho
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices stay NaN
        mean = np.nanmean(per, axis=0) if n_layers else np.full((k, k), np.nan)
    return mean, per


def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _short(layer: str) -> str:
    return layer if len(layer) <= 18 else "..." + layer[-15:]


def plot_layer_ratios(results: list[dict[str, Any]], layers: list[str], ratios: list[float], path: Path, strategy: str = "") -> None:
    plt = _plt()
    fig, axes = plt.subplots(len(ratios), 1, figsize=(max(7, 0.55 * len(layers) + 3), 3.2 * len(ratios)), squeeze=False)
    crits = list(dict.fromkeys(r["criterion"] for r in results))
    markers = "os^vD<>pPhX*"
    for ax, ratio in zip(axes[:, 0], ratios, strict=True):
        for i, c in enumerate(crits):
            res = next((r for r in results if r["criterion"] == c and r["ratio"] == ratio), None)
            if res is None:
                continue
            ch0, ch1 = res["channels_before"], res["channels_after"]
            ys = [1 - ch1[n] / ch0[n] if n in ch0 else 0.0 for n in layers]
            ax.plot(range(len(layers)), ys, marker=markers[i % len(markers)], ms=4, lw=1, alpha=0.8, label=c)
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels([_short(n) for n in layers], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("channels removed")
        ax.set_ylim(-0.02, 1.0)
        same = " - uniform strategy: the same for every criterion" if strategy == "uniform" else ""
        ax.set_title(f"per-layer pruning ratio (target {ratio:g}{same})", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=min(4, len(crits)), loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_acc_vs_macs(rows: list[dict[str, Any]], base: dict[str, Any], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    crits = list(dict.fromkeys(r["criterion"] for r in rows))
    cmap = plt.get_cmap("tab20")
    for i, c in enumerate(crits):
        rs = sorted((r for r in rows if r["criterion"] == c), key=lambda r: r["macs"])
        xs = [r["macs"] / 1e6 for r in rs]
        color = cmap(i % 20)
        ax.plot(xs, [r["test_acc"] for r in rs], marker="o", color=color, label=c)
        ax.scatter(xs, [r["test_acc_before_ft"] for r in rs], marker="o", facecolors="none", edgecolors=color, alpha=0.7)
    ax.scatter([base["macs"] / 1e6], [base["metrics"].get("test/acc", np.nan)], marker="*", s=160, color="k", label="unpruned", zorder=5)
    ax.set_xlabel("MACs per image (M)")
    ax.set_ylabel("test accuracy")
    ax.set_title("accuracy vs MACs (filled: after fine-tuning, hollow: before)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_acc_vs_ratio(rows: list[dict[str, Any]], base: dict[str, Any], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c in dict.fromkeys(r["criterion"] for r in rows):
        rs = sorted((r for r in rows if r["criterion"] == c), key=lambda r: r["ratio"])
        ax.plot([r["ratio"] for r in rs], [r["test_acc"] for r in rs], marker="o", label=c)
    ax.axhline(base["metrics"].get("test/acc", np.nan), color="k", ls="--", lw=1, label="unpruned")
    ax.set_xlabel("pruning ratio")
    ax.set_ylabel("test accuracy after fine-tuning")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _heat(ax, mat: np.ndarray, names: list[str], title: str, annotate: bool, fontsize: int = 7):
    im = ax.imshow(np.ma.masked_invalid(mat), vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(names)))
    ax.set_yticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=fontsize)
    ax.set_yticklabels(names, fontsize=fontsize)
    ax.set_title(title, fontsize=fontsize + 2)
    if annotate:
        for i in range(len(names)):
            for j in range(len(names)):
                if not np.isnan(mat[i, j]):
                    ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=max(5, fontsize - 1),
                            color="white" if abs(mat[i, j]) > 0.6 else "black")
    return im


def plot_correlation(mean: np.ndarray, names: list[str], path: Path) -> None:
    plt = _plt()
    side = max(5.0, 0.55 * len(names) + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = _heat(ax, mean, names, "Spearman rank correlation of channel scores (mean over layers)", annotate=True)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_correlation_layers(per: np.ndarray, names: list[str], layers: list[str], path: Path) -> None:
    plt = _plt()
    n = len(layers)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    side = max(2.8, 0.25 * len(names) + 1.8)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * side + 1, rows * side), squeeze=False, layout="constrained")
    fig.suptitle("Spearman rank correlation of channel scores, per layer")
    im = None
    for idx in range(rows * cols):
        ax = axes[idx // cols, idx % cols]
        if idx >= n:
            ax.axis("off")
            continue
        im = _heat(ax, per[idx], names, layers[idx], annotate=len(names) <= 5, fontsize=5)
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in CSV_COLUMNS})
    tmp.replace(path)


def markdown_table(rows: list[dict[str, Any]], base: dict[str, Any]) -> str:
    """The comparison table (the feature-entropy paper's columns plus accuracy before fine-tuning)."""
    head = (
        "| criterion | ratio | acc. before FT | acc. after FT | acc. drop | pruned (params) | #params | MACs | img/s |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    m = base["metrics"]
    lines = [
        f"| unpruned | 0 | - | {_fmt(m.get('test/acc'), '.4f')} | - | 0.0 % | {base['params'] / 1e6:.3f} M | "
        f"{base['macs'] / 1e6:.2f} M | {base['img_per_s']:,.0f} |"
    ]
    for r in sorted(rows, key=lambda r: (r["ratio"], -(r["test_acc"] or 0))):
        lines.append(
            f"| {r['criterion']} | {r['ratio']:g} | {_fmt(r['test_acc_before_ft'], '.4f')} | {_fmt(r['test_acc'], '.4f')} | "
            f"{100 * r['acc_drop']:+.2f} pp | {100 * r['params_pruned_ratio']:.1f} % | {r['params'] / 1e6:.3f} M | "
            f"{r['macs'] / 1e6:.2f} M | {r['img_per_s']:,.0f} |"
        )
    return head + "\n".join(lines) + "\n"


def write_report(cmp, results: list[dict[str, Any]], scores: Mapping[str, Any]) -> dict[str, Path]:
    """Write results.csv, spearman.csv, the plots and report.md into ``cmp.run_dir``; return the files."""
    cfg = cmp.cfg
    out = cmp.run_dir
    rows = [r["row"] for r in results]
    files: dict[str, Path] = {"results": out / "results.csv"}
    write_csv(rows, files["results"])
    names = list(scores)
    mean, per = spearman_matrices({c: dict(scores[c].items()) for c in names}, cmp.layers)
    files["spearman"] = out / "spearman.csv"
    with open(files["spearman"], "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["criterion", *names])
        for i, c in enumerate(names):
            w.writerow([c, *("" if np.isnan(v) else f"{v:.4f}" for v in mean[i])])
    files["layer_ratios"] = out / "layer_ratios.png"
    plot_layer_ratios(results, cmp.layers, cfg.ratios, files["layer_ratios"], cfg.strategy)
    files["acc_vs_macs"] = out / "acc_vs_macs.png"
    plot_acc_vs_macs(rows, cmp.base, files["acc_vs_macs"])
    if len(cfg.ratios) > 1:
        files["acc_vs_ratio"] = out / "acc_vs_ratio.png"
        plot_acc_vs_ratio(rows, cmp.base, files["acc_vs_ratio"])
    files["score_correlation"] = out / "score_correlation.png"
    plot_correlation(mean, names, files["score_correlation"])
    files["score_correlation_layers"] = out / "score_correlation_layers.png"
    plot_correlation_layers(per, names, cmp.layers, files["score_correlation_layers"])

    ft = cfg.finetune
    notes = []
    if cmp.layer_note:
        notes.append(cmp.layer_note)
    if cfg.strategy == "afie" or cfg.strategy_options.get("base_strategy") == "afie":
        notes.append("per-layer ratios from the AFIE layer scores of the base model (the same for every criterion); "
                     "each criterion ranks the channels inside the layers")
    for c in names:
        for w in scores[c].meta.get("warnings", []) or []:
            notes.append(w if w.startswith(c) else f"{c}: {w}")
    text = [
        f"# Criteria comparison: {cfg.group}",
        "",
        f"- recipe: {'inline (see recipe.yaml)' if isinstance(cfg.recipe, dict) else '`' + str(cfg.recipe) + '`'}; checkpoint: `{cmp.ckpt_path}`",
        f"- strategy `{cfg.strategy}`{' ' + str(cfg.strategy_options) if cfg.strategy_options else ''}, ratio(s) {', '.join(f'{r:g}' for r in cfg.ratios)}, seed {cfg.seed}",
        f"- scoring set: {cfg.samples_per_class} training images per class"
        + (f" of classes {cfg.scoring_classes}" if cfg.scoring_classes else "")
        + f"; {len(cmp.layers)} layers pruned",
        f"- fine-tuning: {ft.epochs} epoch(s), SGD lr {ft.lr:g} momentum {ft.momentum:g} weight decay {ft.weight_decay:g}, "
        f"{ft.schedule} schedule" + (f", limit_train_batches {ft.limit_train_batches:g}" if ft.limit_train_batches != 1.0 else ""),
        f"- accuracy: top-1 on the test split; acc. drop = unpruned - after fine-tuning (pp = percentage points); "
        f"img/s: batch {cfg.latency_batch_size}, fastest of {cfg.latency_runs} forward passes ({cmp._device().type})",
        "",
        markdown_table(rows, cmp.base),
        "Full columns (validation and balanced accuracy, MACs ratio, timings): `results.csv`.",
        "",
        "## Rank correlation of the channel scores (Spearman, mean over layers)",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for i, c in enumerate(names):
        text.append(f"| {c} | " + " | ".join(_fmt(float(v), ".2f") for v in mean[i]) + " |")
    text += ["", "## Plots", ""]
    for key in ("acc_vs_macs", "acc_vs_ratio", "layer_ratios", "score_correlation", "score_correlation_layers"):
        if key in files:
            text.append(f"![{key}]({files[key].name})")
    if notes:
        text += ["", "## Notes", ""] + [f"- {n}" for n in dict.fromkeys(notes)]
    files["report"] = out / "report.md"
    files["report"].write_text("\n".join(text) + "\n")
    return files
