"""W&B logging of a comparison: one run per (criterion, ratio), all in one project and group, with
identical keys; one ``summary`` run per finished comparison; the dashboard definition.

Keys of every pair run (``job_type="prune"``, name ``<criterion>@<ratio>``):

==============================  ==============================================================
``prune/params``, ``prune/macs``            after pruning (per image); ``..._before``: unpruned
``prune/params_ratio``, ``prune/macs_ratio`` fraction removed
``prune/channel_ratio``                     fraction of the planned channels removed
``prune/ratio/<layer>``                     fraction of the layer's channels removed
``prune/channels/<layer>``                  channels kept
``scores/<layer>``                          histogram of the criterion's channel scores
``val/acc_before_ft`` ...                   ``val/`` and ``test/`` ``acc``, ``balanced_acc``, ``acc_top5``, ``loss`` before fine-tuning
``train/loss_step``, ``train/loss_epoch``, ``train/acc``, ``val/acc`` ...  the fine-tuning curves (x: ``trainer/global_step``)
``val/acc``, ``val/balanced_acc``, ``test/acc``, ``test/balanced_acc``, ``test/acc_top5``  after fine-tuning
``test/acc_drop``, ``test/acc_drop_before_ft``  unpruned test accuracy minus the pruned one
``latency_ms``, ``img_per_s``               fastest forward pass of a batch, throughput (``latency_median_ms``: median)
``time/score_s``, ``time/finetune_s``       wall times
``charts/layer_ratio``                      bar chart (``wandb.plot.bar``) of ``tables/layers``
``charts/layer_channels``                   line series: channels before / after per layer index
``tables/layers``                           layer, channels before, after, ratio, score min / mean / max
==============================  ==============================================================

The summary run (``job_type="summary"``, name ``summary``) holds ``summary/table`` (one row per
pair, the columns of ``results.csv``), ``summary/acc_vs_macs`` (scatter), ``summary/test_acc``
(bar), ``summary/spearman`` (table) and the report's PNGs under ``plots/``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["PAIR_KEYS", "dashboard_spec", "init_pair_run", "log_pruning", "log_result", "log_summary", "save_workspace"]

#: Keys every pair run has in its summary (besides the per-layer ``prune/ratio/<layer>`` ones).
PAIR_KEYS = (
    "prune/params", "prune/macs", "prune/params_before", "prune/macs_before", "prune/params_ratio",
    "prune/macs_ratio", "prune/channel_ratio", "val/acc_before_ft", "val/balanced_acc_before_ft",
    "test/acc_before_ft", "test/balanced_acc_before_ft", "val/acc", "val/balanced_acc", "test/acc",
    "test/balanced_acc", "test/acc_drop", "test/acc_drop_before_ft", "latency_ms", "latency_median_ms", "img_per_s",
    "time/score_s", "time/finetune_s",
)


def _settings():
    import wandb

    return wandb.Settings(console="off", silent=True, disable_git=True, x_disable_stats=True)


def _init(cmp, **kwargs):
    import wandb

    cfg = cmp.cfg
    os.environ.setdefault("WANDB_MODE", "offline")
    return wandb.init(
        project=cfg.wandb_project,
        entity=cfg.wandb_entity,
        group=cfg.group,
        dir=str(cmp.run_dir),
        settings=_settings(),
        reinit="create_new",
        **kwargs,
    )


def init_pair_run(cfg, criterion: str, ratio: float, cmp):
    """Start the W&B run of one (criterion, ratio) pair."""
    config = {
        "criterion": criterion,
        "ratio": ratio,
        "strategy": cfg.strategy,
        "strategy_options": cfg.strategy_options,
        "criterion_hparams": cmp._criterion_hparams(criterion),
        "samples_per_class": cfg.samples_per_class,
        "scoring_classes": cfg.scoring_classes,
        "seed": cfg.seed,
        "finetune": vars(cfg.finetune),
        "compare_group": cfg.group,
        "recipe": cfg.recipe if isinstance(cfg.recipe, dict) else str(cfg.recipe),
        "checkpoint": str(cmp.ckpt_path),
        "model": type(cmp.base_module.model).__name__,
        "data": type(cmp.dm).__name__,
        "layers": cmp.layers,
    }
    return _init(cmp, name=f"{criterion}@{ratio:g}", job_type="prune", config=config, tags=[criterion, f"ratio={ratio:g}"])


def log_pruning(run, plan, report, scores, before: dict[str, float]) -> None:
    """Log the pruning result and the accuracy before fine-tuning (one history step)."""
    import numpy as np
    import wandb

    data: dict[str, Any] = {
        "prune/params": report.params_after,
        "prune/macs": report.macs_after,
        "prune/params_before": report.params_before,
        "prune/macs_before": report.macs_before,
        "prune/params_ratio": 1 - report.params_after / report.params_before,
        "prune/macs_ratio": 1 - report.macs_after / report.macs_before,
        "prune/channel_ratio": plan.global_ratio,
    }
    ratios = plan.ratios
    rows = []
    for layer in plan.keep:
        data[f"prune/ratio/{layer}"] = ratios[layer]
        data[f"prune/channels/{layer}"] = len(plan.keep[layer])
        v = scores[layer].double().numpy() if layer in scores else np.zeros(1)
        data[f"scores/{layer}"] = wandb.Histogram(v, num_bins=min(64, max(4, v.size)))
        rows.append([layer, plan.channels[layer], len(plan.keep[layer]), ratios[layer], float(v.min()), float(v.mean()), float(v.max())])
    for k, v in before.items():
        stage, _, name = k.partition("/")
        data[f"{stage}/{name}_before_ft"] = v
    table = wandb.Table(columns=["layer", "channels_before", "channels_after", "ratio", "score_min", "score_mean", "score_max"], data=rows)
    data["tables/layers"] = table
    data["charts/layer_ratio"] = wandb.plot.bar(table, "layer", "ratio", title="fraction of channels removed per layer")
    data["charts/layer_channels"] = wandb.plot.line_series(
        xs=list(range(len(rows))),
        ys=[[r[1] for r in rows], [r[2] for r in rows]],
        keys=["before", "after"],
        title="channels per layer (x: layer index, see tables/layers)",
        xname="layer index",
    )
    run.log(data)


def log_result(run, row: dict[str, Any], after: dict[str, float]) -> None:
    """Final metrics after fine-tuning (logged and set in the run summary)."""
    data = {k: v for k, v in after.items()}
    data.update({
        "test/acc_drop": row["acc_drop"],
        "test/acc_drop_before_ft": row["acc_drop_before_ft"],
        "latency_ms": row["latency_ms"],
        "latency_median_ms": row["latency_median_ms"],
        "img_per_s": row["img_per_s"],
        "time/score_s": row["score_s"] if row["score_s"] is not None else float("nan"),
        "time/finetune_s": row["finetune_s"],
    })
    run.log(data)
    run.summary.update(data)


def _results_digest(rows: list[dict[str, Any]]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:16]


def log_summary(cmp, results: list[dict[str, Any]], files: dict[str, Path]) -> str | None:
    """Log the summary run (skipped when these exact results were already logged); returns its id."""
    import wandb

    from .report import CSV_COLUMNS

    rows = [r["row"] for r in results]
    marker = cmp.run_dir / "wandb_summary.json"
    digest = _results_digest(rows)
    try:
        if json.loads(marker.read_text()).get("digest") == digest:
            return None
    except (OSError, ValueError):
        pass
    run = _init(cmp, name="summary", job_type="summary", config={"compare_group": cmp.cfg.group, **cmp.cfg.to_dict()})
    try:
        table = wandb.Table(columns=CSV_COLUMNS, data=[[_plain(r.get(c)) for c in CSV_COLUMNS] for r in rows])
        names = list(dict.fromkeys(r["criterion"] for r in rows))
        data: dict[str, Any] = {
            "summary/table": table,
            "summary/acc_vs_macs": wandb.plot.scatter(table, "macs", "test_acc", title="test accuracy after fine-tuning vs MACs"),
            "summary/test_acc": wandb.plot.bar(table, "criterion", "test_acc", title="test accuracy after fine-tuning"),
            "summary/acc_before_ft": wandb.plot.bar(table, "criterion", "test_acc_before_ft", title="test accuracy before fine-tuning"),
        }
        sp = files.get("spearman")
        if sp and sp.exists():
            import csv

            with open(sp) as fh:
                lines = list(csv.reader(fh))
            data["summary/spearman"] = wandb.Table(columns=lines[0], data=[[x[0], *(float(v) if v else None for v in x[1:])] for x in lines[1:]])
        for key in ("acc_vs_macs", "acc_vs_ratio", "layer_ratios", "score_correlation", "score_correlation_layers"):
            if key in files and files[key].exists():
                data[f"plots/{key}"] = wandb.Image(str(files[key]))
        run.log(data)
        run.summary.update({"summary/criteria": len(names), "summary/pairs": len(rows)})
        run_id = run.id
    finally:
        run.finish()
    marker.write_text(json.dumps({"digest": digest, "run": run_id}))
    if cmp.cfg.wandb_workspace and os.environ.get("WANDB_MODE", "offline") not in ("offline", "disabled"):
        try:
            url = save_workspace(cmp.cfg.wandb_project, cmp.cfg.group, entity=cmp.cfg.wandb_entity)
            cmp.echo(f"W&B workspace: {url}")
        except Exception as err:  # noqa: BLE001 - the comparison itself succeeded; say why the view was not saved
            cmp.echo(f"W&B workspace not saved: {err}")
    return run_id


def _plain(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


# ------------------------------------------------------------------------------------------------
# dashboard
# ------------------------------------------------------------------------------------------------
def dashboard_spec(project: str, group: str) -> dict[str, Any]:
    """The comparison dashboard as plain data: the run filter and the panels, section by section.

    :func:`save_workspace` builds exactly this with ``wandb_workspaces``; docs/compare.md lists it.
    """
    return {
        "project": project,
        "name": f"compare: {group}",
        "filter": {"group": group, "job_type": "prune"},
        "sections": [
            {"name": "Accuracy", "panels": [
                {"type": "BarPlot", "metrics": ["test/acc"], "title": "test accuracy after fine-tuning"},
                {"type": "BarPlot", "metrics": ["test/acc_before_ft"], "title": "test accuracy before fine-tuning"},
                {"type": "BarPlot", "metrics": ["test/acc_drop"], "title": "accuracy drop (unpruned - pruned)"},
                {"type": "LinePlot", "x": "trainer/global_step", "y": ["val/acc"], "title": "fine-tuning: val/acc"},
                {"type": "ScatterPlot", "x": "prune/macs", "y": "test/acc", "title": "accuracy vs MACs"},
                {"type": "ScatterPlot", "x": "ratio (config)", "y": "test/acc", "title": "accuracy vs ratio"},
            ]},
            {"name": "Cost", "panels": [
                {"type": "BarPlot", "metrics": ["prune/params_ratio"], "title": "params removed"},
                {"type": "BarPlot", "metrics": ["prune/macs_ratio"], "title": "MACs removed"},
                {"type": "BarPlot", "metrics": ["img_per_s"], "title": "throughput (img/s)"},
                {"type": "ParallelCoordinatesPlot", "title": "criterion, ratio, MACs, accuracy", "columns": ["criterion (config)", "ratio (config)", "prune/macs", "test/acc_before_ft", "test/acc"]},
            ]},
            {"name": "Layers", "panels": [
                {"type": "BarPlot", "metrics_regex": "prune/ratio/.*", "title": "per-layer ratio (one bar per layer and run)"},
                {"type": "Media/custom chart", "key": "charts/layer_ratio"},
                {"type": "Media/custom chart", "key": "charts/layer_channels"},
                {"type": "Histogram", "key": "scores/<layer>"},
            ]},
        ],
        "runset": {"groupby": ["config:criterion"], "pinned_columns": ["config:criterion", "config:ratio", "summary:test/acc", "summary:prune/macs"]},
    }


def build_workspace(project: str, group: str, *, entity: str) -> Any:
    """The comparison's W&B workspace view as a ``wandb_workspaces`` object (not saved; nothing is
    sent). Sections and panels follow :func:`dashboard_spec`; runs are filtered to the group's prune
    runs and grouped by criterion, so every chart shows one curve per criterion across the ratios.

    Needs the ``wandb`` extra (``pip install lightprune[wandb]``: wandb-workspaces).
    """
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
    except ImportError as err:
        raise ImportError("the W&B workspace needs wandb-workspaces: pip install 'lightprune[wandb]'") from err

    return ws.Workspace(
        name=f"compare: {group}",
        entity=entity,
        project=project,
        sections=[
            ws.Section(name="Accuracy", is_open=True, panels=[
                wr.BarPlot(title="test accuracy after fine-tuning", metrics=["test/acc"]),
                wr.BarPlot(title="test accuracy before fine-tuning", metrics=["test/acc_before_ft"]),
                wr.BarPlot(title="accuracy drop (unpruned - pruned)", metrics=["test/acc_drop"]),
                wr.LinePlot(title="fine-tuning: val/acc", x="trainer/global_step", y=["val/acc"]),
                wr.ScatterPlot(title="accuracy vs MACs", x=wr.SummaryMetric("prune/macs"), y=wr.SummaryMetric("test/acc")),
                wr.ScatterPlot(title="accuracy vs ratio", x=wr.Config("ratio"), y=wr.SummaryMetric("test/acc")),
            ]),
            ws.Section(name="Cost", is_open=True, panels=[
                wr.BarPlot(title="params removed", metrics=["prune/params_ratio"]),
                wr.BarPlot(title="MACs removed", metrics=["prune/macs_ratio"]),
                wr.BarPlot(title="throughput (img/s)", metrics=["img_per_s"]),
                wr.ParallelCoordinatesPlot(title="criterion, ratio, MACs, accuracy", columns=[
                    wr.ParallelCoordinatesPlotColumn(metric=wr.Config("criterion")),
                    wr.ParallelCoordinatesPlotColumn(metric=wr.Config("ratio")),
                    wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric("prune/macs")),
                    wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric("test/acc_before_ft")),
                    wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric("test/acc")),
                ]),
            ]),
            ws.Section(name="Layers", is_open=True, panels=[
                wr.LinePlot(title="per-layer ratio", metric_regex="prune/ratio/.*"),
            ]),
        ],
        runset_settings=ws.RunsetSettings(
            filters=[ws.Metric("Group") == group, ws.Metric("JobType") == "prune"],
            groupby=[ws.Config("criterion")],
            pinned_columns=["config:criterion", "config:ratio", "summary:test/acc", "summary:prune/macs"],
        ),
    )


def save_workspace(project: str, group: str, *, entity: str | None = None) -> str:
    """Save the :func:`build_workspace` view (online). Returns the view's URL."""
    import wandb

    view = build_workspace(project, group, entity=entity or wandb.Api().default_entity)
    view.save()
    return view.url
