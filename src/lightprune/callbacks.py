"""Lightning callbacks: score channels at chosen epochs, prune them, keep training.

Both callbacks work with any LightningModule that holds its network as an attribute
(``model_attr``, default ``"model"``). Epochs count *completed training epochs*: ``at_epoch=1``
acts at the start of the second epoch, after one epoch of training (the AFIE paper scores after
one epoch); ``at_epoch=0`` acts before any training. Acting at the start of an epoch means a
checkpoint saved at the end of the previous epoch is still "before the prune": resuming from it
prunes at the right moment, and every later checkpoint carries the plan.

Example::

    trainer = L.Trainer(max_epochs=14, callbacks=[
        PruningCallback(criterion="feature_entropy", strategy="uniform", ratio=0.5, at_epoch=8),
    ])
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Subset
from typing_extensions import override

from .collect import find_prunable_layers
from .criteria import Scores, create_criterion, score
from .errors import ConfigError, check_choice, check_fraction, check_positive_int
from .lightning_glue import (
    CHECKPOINT_KEY,
    applied_plans,
    get_network,
    rebuild_optimizers,
    replay_plans,
    rewrap_ddp,
)
from .planner import STRATEGIES, find_groups, plan
from .surgery import PruneReport, measure_latency, prune

__all__ = ["ScoreCallback", "PruningCallback", "SCHEDULES"]

SCHEDULES = ("one_shot", "iterative", "progressive")


# --------------------------------------------------------------------------------------------------
# shared: the scoring set of a running trainer
# --------------------------------------------------------------------------------------------------
def _scoring_batches(
    trainer: L.Trainer, samples_per_class: int, classes: list[int] | None, batch_size: int, max_batches: int | None
) -> tuple[Any, int | None]:
    """Class-balanced scoring batches for this rank (the balanced set is split across ranks)."""
    dm = trainer.datamodule
    if dm is not None and hasattr(dm, "balanced_subset"):
        sub = dm.balanced_subset(samples_per_class, classes)
        rank, world = trainer.global_rank, trainer.world_size
        shard = Subset(sub.dataset, sub.indices[rank::world])  # every rank a disjoint part; states reduce
        return DataLoader(shard, batch_size=batch_size, shuffle=False), getattr(dm, "num_classes", None)
    loader = trainer.train_dataloader  # public; set once fit has set up its data (on_train_start)
    if loader is None:
        raise ConfigError(
            "this criterion needs data, but the trainer has no train data loader: give the trainer a "
            "datamodule (a lightprune ClassificationDataModule draws a class-balanced scoring set)"
        )
    warnings.warn(
        "the datamodule has no balanced_subset(): scoring on the first training batches (not class-balanced)",
        stacklevel=3,
    )
    limit = max_batches or 10
    batches = []
    for i, b in enumerate(loader):
        if i >= limit:
            break
        batches.append((b[0], b[1]))
    return batches, None


def _example_inputs(batches: Any, net: torch.nn.Module) -> torch.Tensor:
    for b in batches:
        return b[0][:1].to(next(net.parameters()).device)
    raise ConfigError("the scoring set is empty")


def _log(trainer: L.Trainer, metrics: dict[str, float]) -> None:
    if trainer.logger is not None and trainer.is_global_zero:
        trainer.logger.log_metrics(metrics, step=trainer.global_step)


def _check_epochs(name: str, epochs: list[int], trainer: L.Trainer) -> None:
    last = trainer.max_epochs
    if last is not None and last >= 0:
        bad = [e for e in epochs if e >= last]
        if bad:
            raise ConfigError(
                f"{name}={bad if len(bad) > 1 else bad[0]} is beyond the training: with max_epochs={last} the last "
                f"epoch that can start is {last - 1}"
            )


# --------------------------------------------------------------------------------------------------
# ScoreCallback
# --------------------------------------------------------------------------------------------------
class ScoreCallback(Callback):
    """Compute channel scores at chosen epochs on the class-balanced scoring set and keep them.

    Args:
        criterion: a registered criterion name (see ``lightprune.list_criteria()``), default ``"l1"``.
        at_epochs: score after these numbers of completed training epochs (0 = before training);
            default ``[0]``.
        criterion_kwargs: hyperparameters of the criterion.
        samples_per_class: scoring images per class, default 100.
        classes: classes of the scoring set, default all.
        batch_size: scoring batch size, default 100.
        model_attr: attribute of the LightningModule holding the network, default ``"model"``.
        save: write each Scores as JSON under ``<log_dir>/scores/`` (rank 0), default True.
        log_histograms: log per-layer score histograms when the logger is W&B, default True.

    After a run, ``callback.scores[epoch]`` holds the :class:`~lightprune.Scores`.
    """

    def __init__(
        self,
        criterion: str = "l1",
        at_epochs: list[int] | None = None,
        criterion_kwargs: dict[str, Any] | None = None,
        samples_per_class: int = 100,
        classes: list[int] | None = None,
        batch_size: int = 100,
        model_attr: str = "model",
        save: bool = True,
        log_histograms: bool = True,
    ) -> None:
        self.criterion_name = criterion
        self.criterion_kwargs = dict(criterion_kwargs or {})
        self.criterion = create_criterion(criterion, **self.criterion_kwargs)  # validates name + hparams now
        self.at_epochs = sorted({check_positive_int("at_epochs", e, minimum=0) for e in (at_epochs or [0])})
        self.samples_per_class = check_positive_int("samples_per_class", samples_per_class)
        self.classes = classes
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.model_attr, self.save, self.log_histograms = model_attr, save, log_histograms
        self.scores: dict[int, Scores] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(criterion=self.criterion_name, at_epochs=tuple(self.at_epochs))

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        net = get_network(pl_module, self.model_attr)
        if not find_prunable_layers(net):
            raise ConfigError(f"{type(pl_module).__name__}.{self.model_attr} has no prunable layer (Conv2d or hidden Linear)")
        if stage == "fit":
            _check_epochs("at_epochs", self.at_epochs, trainer)

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch in self.at_epochs and epoch not in self.scores:
            self.scores[epoch] = self.compute(trainer, pl_module)

    def compute(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Scores:
        """Score the network now (every rank takes part; every rank gets the same Scores)."""
        net = get_network(pl_module, self.model_attr)
        batches, num_classes = (None, None)
        if self.criterion.needs_data:
            batches, num_classes = _scoring_batches(trainer, self.samples_per_class, self.classes, self.batch_size, None)
        s = score(net, self.criterion, batches, num_classes=num_classes, progress=trainer.is_global_zero)
        s.meta["epoch"] = trainer.current_epoch
        self._report(trainer, s)
        return s

    def _report(self, trainer: L.Trainer, s: Scores) -> None:
        summary = {}
        for layer, v in s.items():
            summary[f"scores/{s.criterion}/{layer}/mean"] = float(v.mean())
            summary[f"scores/{s.criterion}/{layer}/std"] = float(v.std()) if v.numel() > 1 else 0.0
        _log(trainer, summary)
        if not trainer.is_global_zero:
            return
        logger = trainer.logger
        if self.log_histograms and type(logger).__name__ == "WandbLogger":
            import wandb

            logger.experiment.log(
                {f"scores/{s.criterion}/{layer}/hist": wandb.Histogram(v.numpy()) for layer, v in s.items()}
                | {"trainer/global_step": trainer.global_step}
            )
        if self.save:
            folder = Path(trainer.log_dir or trainer.default_root_dir) / "scores"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"epoch{s.meta['epoch']}_{s.criterion}.json").write_text(json.dumps(s.to_dict()))

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"scores": {int(e): s.to_dict() for e, s in self.scores.items()}}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.scores = {int(e): Scores.from_dict(d) for e, d in state_dict.get("scores", {}).items()}


# --------------------------------------------------------------------------------------------------
# PruningCallback
# --------------------------------------------------------------------------------------------------
class PruningCallback(Callback):
    """Score, plan and prune at chosen epochs; the optimizers (and the DDP wrapper) are rebuilt.

    Schedules:

    - ``"one_shot"``: prune to ``ratio`` after ``at_epoch`` training epochs.
    - ``"iterative"``: ``steps`` prunes, ``every_n_epochs`` apart, starting at ``at_epoch``; step i
      reaches the cumulative ratio ``step_ratios[i]`` (default linear: ``ratio * (i + 1) / steps``)
      of the original channels, re-scoring the current network each time.
    - ``"progressive"``: layer by layer, shallow to deep (the feature-entropy paper's study): the
      coupled groups are split into ``layer_groups`` consecutive parts (default: one per group);
      part j is pruned at ``ratio`` at epoch ``at_epoch + j * finetune_epochs``.

    Args:
        criterion: registered criterion name, default ``"l1"``.
        strategy: planner strategy (``uniform``, ``afie``, ``global``, ``flops``, ``manual``), default ``uniform``.
        ratio: final fraction of channels removed (``flops``: of MACs), in [0, 1); default 0.5.
        at_epoch: completed training epochs before the (first) prune, default 1.
        schedule: ``one_shot`` (default), ``iterative`` or ``progressive``.
        steps: iterative steps, default 3.
        step_ratios: iterative cumulative ratios (strictly increasing, each < 1); default linear.
        every_n_epochs: epochs between iterative steps, default 1.
        layer_groups: progressive parts, default None (one per coupled group).
        finetune_epochs: epochs between progressive parts, default 1.
        bias_balancing: replace removed channels by their mean (CRITERIA.md), default False.
        criterion_kwargs: hyperparameters of the criterion.
        strategy_kwargs: options of the planner (``round_to``, ``max_layer_ratio``, ``ratios``, ...).
        fallback_criterion: for layers where ``criterion`` gives every channel the same score
            (e.g. feature entropy on maps smaller than 3x3), use this criterion's scores instead; default None.
        samples_per_class, classes, batch_size: the scoring set (default 100 per class, all classes, 100).
        model_attr: attribute holding the network, default ``"model"``.
        evaluate_after_prune: measure validation accuracy right after each prune (before fine-tuning),
            default True.
        latency_batch_size: batch size of the latency measurement, default 32.

    Raises:
        ConfigError: at construction for bad names/values; in ``setup`` for epochs beyond
            ``max_epochs``, a module without prunable layers, or a missing network attribute.
    """

    def __init__(
        self,
        criterion: str = "l1",
        strategy: str = "uniform",
        ratio: float = 0.5,
        at_epoch: int = 1,
        schedule: str = "one_shot",
        steps: int = 3,
        step_ratios: list[float] | None = None,
        every_n_epochs: int = 1,
        layer_groups: int | None = None,
        finetune_epochs: int = 1,
        bias_balancing: bool = False,
        criterion_kwargs: dict[str, Any] | None = None,
        strategy_kwargs: dict[str, Any] | None = None,
        fallback_criterion: str | None = None,
        samples_per_class: int = 100,
        classes: list[int] | None = None,
        batch_size: int = 100,
        model_attr: str = "model",
        evaluate_after_prune: bool = True,
        latency_batch_size: int = 32,
    ) -> None:
        self.criterion_name = criterion
        self.criterion_kwargs = dict(criterion_kwargs or {})
        self.criterion = create_criterion(criterion, **self.criterion_kwargs)
        self.fallback = create_criterion(fallback_criterion) if fallback_criterion else None
        check_choice("strategy", strategy, STRATEGIES)
        check_choice("schedule", schedule, SCHEDULES)
        self.strategy, self.schedule = strategy, schedule
        self.ratio = check_fraction("ratio", ratio)
        self.at_epoch = check_positive_int("at_epoch", at_epoch, minimum=0)
        self.every_n_epochs = check_positive_int("every_n_epochs", every_n_epochs)
        self.finetune_epochs = check_positive_int("finetune_epochs", finetune_epochs)
        self.layer_groups = None if layer_groups is None else check_positive_int("layer_groups", layer_groups)
        if schedule == "iterative":
            if step_ratios is None:
                check_positive_int("steps", steps)
                step_ratios = [ratio * (i + 1) / steps for i in range(steps)]
            if not step_ratios:
                raise ConfigError("step_ratios=[] is not allowed; give at least one ratio")
            for i, r in enumerate(step_ratios):
                check_fraction(f"step_ratios[{i}]", r)
            if any(b <= a for a, b in zip(step_ratios, step_ratios[1:], strict=False)):
                raise ConfigError(f"step_ratios={step_ratios} is not allowed; the ratios must increase strictly")
        self.step_ratios = [float(r) for r in step_ratios] if step_ratios else None
        self.bias_balancing = bool(bias_balancing)
        self.strategy_kwargs = dict(strategy_kwargs or {})
        self.samples_per_class = check_positive_int("samples_per_class", samples_per_class)
        self.classes = classes
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.model_attr = model_attr
        self.evaluate_after_prune = evaluate_after_prune
        self.latency_batch_size = check_positive_int("latency_batch_size", latency_batch_size)
        # state (saved in checkpoints)
        self.done: list[int] = []  # indices of finished events
        self.history: list[dict[str, Any]] = []  # one small record per prune
        self._events: list[dict[str, Any]] | None = None

    # ---------------------------------------------------------------------------------------- events
    def _make_events(self, pl_module: L.LightningModule, example: torch.Tensor | None) -> list[dict[str, Any]]:
        if self.schedule == "one_shot":
            return [{"epoch": self.at_epoch, "ratio": self.ratio, "layers": None}]
        if self.schedule == "iterative":
            assert self.step_ratios is not None
            return [
                {"epoch": self.at_epoch + i * self.every_n_epochs, "ratio": r, "layers": None}
                for i, r in enumerate(self.step_ratios)
            ]
        net = get_network(pl_module, self.model_attr)
        layers = find_prunable_layers(net, example)
        groups = find_groups(net, example, layers) if example is not None else [[n] for n in layers]
        members = [g.members if hasattr(g, "members") else g for g in groups]
        parts = self.layer_groups or len(members)
        parts = min(parts, len(members))
        size = math.ceil(len(members) / parts)
        chunks = [sum(members[i : i + size], []) for i in range(0, len(members), size)]
        return [
            {"epoch": self.at_epoch + j * self.finetune_epochs, "ratio": self.ratio, "layers": chunk}
            for j, chunk in enumerate(chunks)
        ]

    @property
    def state_key(self) -> str:
        return self._generate_state_key(criterion=self.criterion_name, strategy=self.strategy, schedule=self.schedule)

    # ----------------------------------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        net = get_network(pl_module, self.model_attr)
        if not find_prunable_layers(net):
            raise ConfigError(f"{type(pl_module).__name__}.{self.model_attr} has no prunable layer (Conv2d or hidden Linear)")
        if stage == "fit" and self.schedule != "progressive":
            self._events = self._make_events(pl_module, None)
            _check_epochs("at_epoch", [e["epoch"] for e in self._events], trainer)
        # a plain LightningModule cannot rebuild its pruned network when Lightning restores a checkpoint:
        # replay the stored plans first (ClassificationModule does this in its own on_load_checkpoint)
        if not hasattr(type(pl_module), "replays_lightprune_plans"):
            original = pl_module.on_load_checkpoint

            def on_load_checkpoint(checkpoint: dict[str, Any]) -> None:
                replay_plans(pl_module, checkpoint, self.model_attr)
                original(checkpoint)

            pl_module.on_load_checkpoint = on_load_checkpoint  # type: ignore[method-assign]

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        if not (dm is not None and hasattr(dm, "balanced_subset")) and trainer.train_dataloader is None:
            raise ConfigError(
                f"PruningCallback needs scoring data (criterion {self.criterion_name!r}, example inputs), but the "
                "trainer has no train data loader"
            )
        self._events_for(trainer, pl_module)

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for i, ev in enumerate(self._events_for(trainer, pl_module)):
            if ev["epoch"] == trainer.current_epoch and i not in self.done:
                self._prune(trainer, pl_module, i, ev)

    def _events_for(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[dict[str, Any]]:
        if self._events is None:  # progressive: needs example inputs to find the coupled groups
            batches, _ = _scoring_batches(trainer, 1, self.classes, 1, 1)
            example = _example_inputs(batches, get_network(pl_module, self.model_attr))
            self._events = self._make_events(pl_module, example)
            _check_epochs("at_epoch", [e["epoch"] for e in self._events], trainer)
        return self._events

    # ----------------------------------------------------------------------------------------- prune
    def _prune(self, trainer: L.Trainer, pl_module: L.LightningModule, index: int, event: dict[str, Any]) -> None:
        net = get_network(pl_module, self.model_attr)
        # the scoring set is drawn for every criterion: it also gives the example inputs (and the means)
        batches, num_classes = _scoring_batches(trainer, self.samples_per_class, self.classes, self.batch_size, None)
        example = _example_inputs(batches, net)
        before = self._evaluate(trainer, net) if self.evaluate_after_prune else {}
        layers = event["layers"]
        with warnings.catch_warnings():
            if self.fallback is not None:  # the fallback handles the layers the criterion cannot rank
                warnings.filterwarnings("ignore", message=".*cannot rank them.*")
            s = score(net, self.criterion, batches, layers=layers, num_classes=num_classes, progress=trainer.is_global_zero)
        s = self._with_fallback(net, s, batches, layers, num_classes, trainer)
        # ratio relative to the current widths that reaches the event's cumulative ratio of the original
        previous = self.history[-1]["cumulative_ratio"] if self.history and self.schedule == "iterative" else 0.0
        ratio = 1 - (1 - event["ratio"]) / (1 - previous) if self.schedule == "iterative" else event["ratio"]
        p = plan(net, s, strategy=self.strategy, ratio=ratio, example_inputs=example, **self.strategy_kwargs)
        self._check_same_plan_on_every_rank(trainer, p.to_dict())
        latency_input = self._latency_input(batches, net)
        lat0 = measure_latency(net, latency_input, runs=5) if trainer.is_global_zero else None
        report: PruneReport = prune(
            net, p, example, bias_balancing=self.bias_balancing, batches=batches if self.bias_balancing else None,
            measure_latency=False,
        )
        report.latency_before = lat0
        report.latency_after = measure_latency(net, latency_input, runs=5) if trainer.is_global_zero else None
        applied_plans(pl_module).append(p.to_dict())
        rewrap_ddp(trainer)
        rebuild_optimizers(trainer)
        after = self._evaluate(trainer, net) if self.evaluate_after_prune else {}
        record = {
            "index": index,
            "epoch": trainer.current_epoch,
            "criterion": self.criterion_name,
            "strategy": self.strategy,
            "ratio": float(ratio),
            "cumulative_ratio": float(event["ratio"]),
            "global_channel_ratio": float(p.global_ratio),
            "params_before": report.params_before,
            "params_after": report.params_after,
            "macs_before": report.macs_before,
            "macs_after": report.macs_after,
            "latency_ms_before": report.latency_before["median_ms"] if report.latency_before else None,
            "latency_ms_after": report.latency_after["median_ms"] if report.latency_after else None,
            "latency_batch_size": int(latency_input.shape[0]),
            "val_acc_before_prune": before.get("val"),
            "val_acc_after_prune": after.get("val"),
            "test_acc_before_prune": before.get("test"),
            "test_acc_after_prune": after.get("test"),
            "channels_before": report.channels_before,
            "channels_after": report.channels_after,
        }
        self.history.append(record)
        self.done.append(index)
        metrics = {
            "prune/params": float(report.params_after),
            "prune/macs": float(report.macs_after),
            "prune/channel_ratio": float(p.global_ratio),
            "prune/step": float(len(self.done)),
        }
        metrics |= {f"prune/ratio/{n}": float(r) for n, r in p.ratios.items()}
        if after.get("val") is not None:
            metrics["val/acc_before_ft"] = after["val"]
        _log(trainer, metrics)
        if trainer.is_global_zero:
            rank_zero_info(f"lightprune: pruned at epoch {trainer.current_epoch}\n{p}\n{report}")

    def _with_fallback(self, net, s: Scores, batches, layers, num_classes, trainer) -> Scores | dict[str, Scores]:
        if self.fallback is None:
            return s
        flat = [n for n, v in s.items() if v.numel() > 1 and bool((v == v[0]).all())]
        if not flat:
            return s
        fb = score(net, self.fallback, batches, layers=flat, num_classes=num_classes, progress=trainer.is_global_zero)
        rank_zero_info(f"lightprune: {self.criterion_name} cannot rank {flat}; using {self.fallback.name} there")
        return {n: (fb if n in flat else s) for n in s}

    def _latency_input(self, batches, net) -> torch.Tensor:
        xs = []
        n = 0
        for b in batches:
            xs.append(b[0])
            n += b[0].shape[0]
            if n >= self.latency_batch_size:
                break
        x = torch.cat(xs)[: self.latency_batch_size]
        return x.to(next(net.parameters()).device)

    def _evaluate(self, trainer: L.Trainer, net: torch.nn.Module) -> dict[str, float]:
        """Top-1 accuracy of ``net`` on the datamodule's val and test splits (whole splits, every rank)."""
        dm = trainer.datamodule
        out: dict[str, float] = {}
        device = next(net.parameters()).device
        was_training = net.training
        net.eval()
        try:
            for split in ("val", "test"):
                try:
                    loader = getattr(dm, f"{split}_dataloader")() if dm is not None else None
                except Exception:  # noqa: BLE001 - a split the datamodule does not provide
                    loader = None
                if loader is None:
                    continue
                correct = total = 0
                with torch.no_grad():
                    for x, y in loader:
                        correct += int((net(x.to(device)).argmax(1) == y.to(device)).sum())
                        total += int(y.numel())
                if total:
                    out[split] = correct / total
        finally:
            net.train(was_training)
        return out

    def _check_same_plan_on_every_rank(self, trainer: L.Trainer, plan_dict: dict[str, Any]) -> None:
        """Every rank must remove the same channels: compare with rank 0's plan explicitly."""
        if trainer.world_size <= 1:
            return
        reference = trainer.strategy.broadcast(plan_dict, src=0)
        same = reference["keep"] == plan_dict["keep"]
        if not trainer.strategy.reduce_boolean_decision(same, all=True):
            raise RuntimeError(
                f"rank {trainer.global_rank}: the pruning plans differ between ranks; scores must be reduced "
                "identically on every rank"
            )

    # ------------------------------------------------------------------------------------ checkpoints
    @override
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint.setdefault(CHECKPOINT_KEY, {})["plans"] = list(applied_plans(pl_module))
        checkpoint[CHECKPOINT_KEY]["model_attr"] = self.model_attr

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"done": list(self.done), "history": json.loads(json.dumps(self.history))}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.done = [int(i) for i in state_dict.get("done", [])]
        self.history = list(state_dict.get("history", []))

    # --------------------------------------------------------------------------------------- summary
    def summary(self, test_metrics: dict[str, float] | None = None) -> str:
        """A before/after table of the whole run: sizes and latency before the first prune and after the
        last one; accuracy of the unpruned network (right before the first prune), right after the
        last prune (no fine-tuning), and at the end (``test_metrics`` from the final test run)."""
        if not self.history:
            return "lightprune: no prune happened"
        first, last = self.history[0], self.history[-1]

        def pct(a, b):
            return f"{100 * (1 - b / a):.1f} %" if a else "-"

        def fmt(v):
            return f"{100 * v:.2f} %" if isinstance(v, float) else "-"

        rows = [
            f"{'':<28}{'unpruned':>14}{'pruned':>14}{'reduction':>12}",
            f"{'params':<28}{first['params_before']:>14,}{last['params_after']:>14,}{pct(first['params_before'], last['params_after']):>12}",
            f"{'MACs':<28}{first['macs_before']:>14,}{last['macs_after']:>14,}{pct(first['macs_before'], last['macs_after']):>12}",
        ]
        if first["latency_ms_before"] is not None and last["latency_ms_after"] is not None:
            label = f"latency (ms, batch {last['latency_batch_size']})"
            rows.append(
                f"{label:<28}{first['latency_ms_before']:>14.2f}{last['latency_ms_after']:>14.2f}"
                f"{pct(first['latency_ms_before'], last['latency_ms_after']):>12}"
            )
        rows.append(f"{'val accuracy (no fine-tuning)':<28}{fmt(first['val_acc_before_prune']):>14}{fmt(last['val_acc_after_prune']):>14}")
        rows.append(f"{'test accuracy (no fine-tuning)':<28}{fmt(first['test_acc_before_prune']):>14}{fmt(last['test_acc_after_prune']):>14}")
        final = (test_metrics or {}).get("test/acc")
        if final is not None:
            rows.append(f"{'test accuracy (fine-tuned)':<28}{fmt(first['test_acc_before_prune']):>14}{fmt(float(final)):>14}")
        rows.append(
            f"channels kept: {100 * (1 - last['global_channel_ratio']):.1f} % of the planned layers "
            f"({self.criterion_name}, {self.strategy}, {self.schedule})"
        )
        return "\n".join(rows)
