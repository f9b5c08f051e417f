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

import copy
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from .collect import find_prunable_layers
from .criteria import Scores, create_criterion, score
from .data import resolve_scoring_set
from .engine import PruneSpec, run_prune, spec_layers
from .errors import ConfigError, check_positive_int
from .graph import find_groups
from .lightning_glue import (
    PrunedCheckpointMixin,
    applied_plans,
    eval_batches_for_trainer,
    get_network,
    rebuild_optimizers,
    resolve_model_attr,
    rewrap_ddp,
    save_plans,
    scoring_set_for_trainer,
)
from .recovery import index_maps, restore_optimizer_state, snapshot_optimizer_state
from .schedules import SCHEDULES, PruneEvent, make_schedule

__all__ = ["ScoreCallback", "PruningCallback", "PruneRecord", "SCHEDULES"]

EVAL_SPLITS = ("val", "test")


def _listed(value: str | list[str] | None) -> list[str] | None:
    """A YAML scalar or list as a list (``layer_types: conv`` or ``[conv]``); None stays None."""
    return None if value is None else ([value] if isinstance(value, str) else list(value))


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


def _check_network(pl_module: L.LightningModule, model_attr: str | None) -> str:
    attr = resolve_model_attr(pl_module, model_attr)
    if not find_prunable_layers(get_network(pl_module, attr)):
        raise ConfigError(
            f"{type(pl_module).__name__}{'.' + attr if attr else ''} has no prunable layer (Conv2d or hidden Linear)"
        )
    return attr


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
        model_attr: attribute of the LightningModule holding the network; default None: ``model`` when
            present, else its single child network, else the module itself.
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
        model_attr: str | None = None,
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
        self.model_attr = _check_network(pl_module, self.model_attr)
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
        scoring = None
        if self.criterion.needs_data:
            scoring = scoring_set_for_trainer(trainer, self.samples_per_class, self.classes, self.batch_size)
        s = score(net, self.criterion, scoring, num_classes=scoring.num_classes if scoring else None,
                  progress=trainer.is_global_zero)
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
@dataclass
class PruneRecord:
    """One prune of a fit (plain data; saved in checkpoints). Dict-style access (``record["epoch"]``) works."""

    index: int
    epoch: int
    criterion: str
    strategy: str
    ratio: float
    cumulative_ratio: float
    global_channel_ratio: float
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    latency_ms_before: float | None
    latency_ms_after: float | None
    latency_batch_size: int | None
    val_acc_before_prune: float | None
    val_acc_after_prune: float | None
    test_acc_before_prune: float | None
    test_acc_after_prune: float | None
    channels_before: dict[str, int]
    channels_after: dict[str, int]
    fallback_layers: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    optimizer_state_carried: int = 0

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruneRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class PruningCallback(Callback):
    """Score, plan and prune at chosen epochs through the engine (:func:`lightprune.engine.run_prune`);
    the optimizers (and the DDP wrapper) are rebuilt.

    Schedules (:mod:`lightprune.schedules`):

    - ``"one_shot"``: prune to ``ratio`` after ``at_epoch`` training epochs.
    - ``"iterative"``: ``steps`` prunes, ``every_n_epochs`` apart, starting at ``at_epoch``; step i
      reaches the cumulative ratio ``step_ratios[i]`` (default linear: ``ratio * (i + 1) / steps``)
      of the original channels, re-scoring the current network each time.
    - ``"progressive"``: layer by layer, shallow to deep (the feature-entropy paper's study): the
      coupled groups are split into ``layer_groups`` consecutive parts (default: one per group);
      part j is pruned at ``ratio`` at epoch ``at_epoch + j * finetune_epochs``.

    Args:
        criterion: registered criterion name, default ``"l1"``; or several (a list) for per-layer
            criteria by depth (``PruneSpec.criterion``; Liu, Amjad & Geiger:
            ``[mutual_information, kl_selectivity]`` with ``depth_split: [0.3333]``).
        depth_split: split points of several criteria (fractions of the layers, execution order);
            default equal parts.
        strategy: planner strategy (``uniform``, ``afie``, ``global``, ``manual``) or target
            (``flops``, ``params``), default ``uniform``.
        ratio: final fraction of channels removed (targets: of MACs / parameters), in [0, 1); default 0.5.
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
        fallback_criterion: for the layers ``criterion`` cannot rank (``Scores.flat``: every channel
            the same score, e.g. feature entropy on maps smaller than 3x3), this criterion's scores; default None.
        layers: prune only these layers: names or glob patterns (default: every prunable layer).
        exclude: names or glob patterns not pruned.
        layer_types: ``"conv"`` and/or ``"linear"`` (default both; the papers prune convolutions only:
            ``layer_types: [conv]``). Scope: :func:`lightprune.collect.select_layers`.
        samples_per_class, classes, batch_size: the scoring set (default 100 per class, all classes, 100).
        model_attr: attribute holding the network; default None: ``model`` when present, else the
            LightningModule's single child network, else the module itself.
        evaluate_after_prune: measure accuracy right before and right after each prune (no
            fine-tuning), default True.
        evaluate_splits: the splits measured then, default ``["val"]`` (add ``"test"`` when asked);
            under DDP each rank evaluates its shard and the counts reduce.
        latency_batch_size: batch size of the latency measurement (rank 0), default 32.
        recalibrate_bn: re-estimate BatchNorm statistics right after each prune, default True (see
            docs/recovery.md); on the scoring set, or on ``recalibration_batches`` training batches.
        recalibration_batches: None (default: the scoring set) or a number of training batches.
        reconstruct: least-squares reconstruction of the layers that lost inputs, default False.
        reconstruct_kwargs: its options (``ridge``, ``positions``, ...).
        carry_optimizer_state: slice the optimizer state (momentum, Adam moments) of the kept channels
            into the rebuilt optimizer instead of resetting it, default True.
        teacher: keep the network right before the (first) prune as a frozen distillation teacher
            (``callback.teacher``; handed to the module's ``set_teacher`` when it has one). None
            (default): when the module asks for distillation (``ClassificationModule(distillation=...)``).
            Its state is saved once (``<default_root_dir>/lightprune_teacher.pt``) so a resumed fit
            rebuilds it; it is never part of the checkpoints.

    Raises:
        ConfigError: at construction for bad names/values; in ``setup`` for epochs beyond
            ``max_epochs``, a module without prunable layers, or a missing network attribute.
    """

    def __init__(
        self,
        criterion: str | list[str] = "l1",
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
        layers: list[str] | None = None,
        exclude: list[str] | None = None,
        layer_types: list[str] | None = None,
        samples_per_class: int = 100,
        classes: list[int] | None = None,
        batch_size: int = 100,
        model_attr: str | None = None,
        evaluate_after_prune: bool = True,
        evaluate_splits: list[str] | None = None,
        latency_batch_size: int = 32,
        recalibrate_bn: bool = True,
        recalibration_batches: int | None = None,
        reconstruct: bool = False,
        reconstruct_kwargs: dict[str, Any] | None = None,
        carry_optimizer_state: bool = True,
        teacher: bool | None = None,
        depth_split: list[float] | None = None,
    ) -> None:
        self.criterion_kwargs = dict(criterion_kwargs or {})
        self.spec = PruneSpec(
            criterion=criterion if isinstance(criterion, str) else list(criterion),
            criterion_kwargs=self.criterion_kwargs, fallback=fallback_criterion,
            depth_split=list(depth_split) if depth_split is not None else None,
            strategy=strategy, ratio=ratio, strategy_kwargs=dict(strategy_kwargs or {}),
            layers=_listed(layers), exclude=_listed(exclude), layer_types=_listed(layer_types),
            bias_balancing=bool(bias_balancing),
            recalibrate_bn=bool(recalibrate_bn), reconstruct=bool(reconstruct),
            reconstruct_kwargs=dict(reconstruct_kwargs or {}),
        )
        for name in self.spec.criteria:
            create_criterion(name, **self.spec.kwargs_for(name))  # hyperparameters checked now
        self.criterion_name = self.spec.criterion_label
        self.recalibration_batches = (
            None if recalibration_batches is None else check_positive_int("recalibration_batches", recalibration_batches)
        )
        self.carry_optimizer_state = bool(carry_optimizer_state)
        self.want_teacher = teacher
        self.teacher = None  # lightprune.recovery.Teacher: the network right before the first prune
        self._blank: torch.nn.Module | None = None
        self.strategy, self.ratio = strategy, float(ratio)
        self.schedule_name = schedule
        self.schedule = make_schedule(
            schedule, ratio=ratio, at_epoch=at_epoch, steps=steps, step_ratios=step_ratios,
            every_n_epochs=every_n_epochs, layer_groups=layer_groups, finetune_epochs=finetune_epochs,
        )
        self.samples_per_class = check_positive_int("samples_per_class", samples_per_class)
        self.classes = classes
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.model_attr = model_attr
        self.evaluate_after_prune = evaluate_after_prune
        splits = list(evaluate_splits) if evaluate_splits is not None else ["val"]
        for sp in splits:
            if sp not in EVAL_SPLITS:
                raise ConfigError(f"evaluate_splits contains {sp!r}; allowed: {', '.join(EVAL_SPLITS)}")
        self.evaluate_splits = splits
        self.latency_batch_size = check_positive_int("latency_batch_size", latency_batch_size)
        # state (saved in checkpoints)
        self.done: list[int] = []  # indices of finished events
        self.history: list[PruneRecord] = []
        self._events: list[PruneEvent] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(criterion=self.criterion_name, strategy=self.strategy, schedule=self.schedule_name)

    # ----------------------------------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.model_attr = _check_network(pl_module, self.model_attr)
        if stage == "fit" and not self.schedule.needs_groups:
            self._events = self.schedule.events()
            _check_epochs("at_epoch", [e.epoch for e in self._events], trainer)
        if stage == "fit" and self._teacher_wanted(pl_module):
            self._blank = copy.deepcopy(get_network(pl_module, self.model_attr))  # unpruned: rebuilds a saved teacher
        if not isinstance(pl_module, PrunedCheckpointMixin):
            rank_zero_info(
                f"lightprune: {type(pl_module).__name__} does not use PrunedCheckpointMixin: its checkpoints carry the "
                "plans, but only lightprune.lightning_glue.load_pruned_checkpoint can rebuild the pruned network "
                "(mix PrunedCheckpointMixin in to make load_from_checkpoint and fit(ckpt_path=...) do it)"
            )

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        if not (dm is not None and hasattr(dm, "balanced_subset")) and trainer.train_dataloader is None:
            raise ConfigError(
                f"PruningCallback needs scoring data (criterion {self.criterion_name!r}, example inputs), but the "
                "trainer has no train data loader"
            )
        self._events_for(trainer, pl_module)
        if self.history and self.teacher is None and self._teacher_wanted(pl_module):
            self._load_teacher(trainer, pl_module)  # a resumed fit: the teacher saved at the first prune

    # ---------------------------------------------------------------------------------------- teacher
    def _teacher_wanted(self, pl_module: L.LightningModule) -> bool:
        if self.want_teacher is not None:
            return self.want_teacher
        return getattr(pl_module, "distillation", None) is not None

    def _teacher_path(self, trainer: L.Trainer) -> Path:
        return Path(trainer.default_root_dir) / "lightprune_teacher.pt"

    def _make_teacher(self, trainer: L.Trainer, pl_module: L.LightningModule, net: torch.nn.Module) -> None:
        from .recovery import Teacher

        self.teacher = Teacher.from_model(net)
        if trainer.is_global_zero:
            path = self._teacher_path(trainer)
            path.parent.mkdir(parents=True, exist_ok=True)
            state = {"plans": list(applied_plans(pl_module)), "state_dict": net.state_dict()}
            torch.save(state, path.with_suffix(".tmp"))
            path.with_suffix(".tmp").replace(path)
        self._hand_over(pl_module)

    def _load_teacher(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from .recovery import Teacher
        from .surgery import restore

        path = self._teacher_path(trainer)
        if self._blank is None or not path.exists():
            rank_zero_info(f"lightprune: no saved teacher at {path}; fine-tuning goes on without distillation")
            return
        saved = torch.load(path, map_location="cpu", weights_only=True)
        net = copy.deepcopy(self._blank)
        for plan_dict in saved["plans"]:
            restore(net, plan_dict)
        self.teacher = Teacher.from_state(lambda: net, saved["state_dict"])
        self._hand_over(pl_module)

    def _hand_over(self, pl_module: L.LightningModule) -> None:
        if hasattr(pl_module, "set_teacher"):
            pl_module.set_teacher(self.teacher)

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for ev in self._events_for(trainer, pl_module):
            if ev.epoch == trainer.current_epoch and ev.index not in self.done:
                self._prune(trainer, pl_module, ev)

    def _events_for(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[PruneEvent]:
        if self._events is None:  # progressive: needs example inputs to find the coupled groups
            net = get_network(pl_module, self.model_attr)
            x = scoring_set_for_trainer(trainer, 1, self.classes, 1).example_inputs(1, next(net.parameters()).device)
            layers = find_prunable_layers(net, x, spec_layers(net, self.spec, x))
            self._events = self.schedule.events([g.members for g in find_groups(net, x, layers)])
            _check_epochs("at_epoch", [e.epoch for e in self._events], trainer)
        return self._events

    # ----------------------------------------------------------------------------------------- prune
    def _prune(self, trainer: L.Trainer, pl_module: L.LightningModule, event: PruneEvent) -> None:
        net = get_network(pl_module, self.model_attr)
        scoring = scoring_set_for_trainer(trainer, self.samples_per_class, self.classes, self.batch_size)
        previous = self.history[-1].cumulative_ratio if self.history and self.schedule_name == "iterative" else 0.0
        ratio = self.schedule.step_ratio(event, previous)
        evaluate_on = eval_batches_for_trainer(trainer, self.evaluate_splits) if self.evaluate_after_prune else None
        snapshots = [snapshot_optimizer_state(o, pl_module) for o in trainer.optimizers] if self.carry_optimizer_state else []
        maps: dict[str, torch.Tensor] = {}

        def before_prune(p) -> None:
            self._check_same_plan_on_every_rank(trainer, p.to_dict())
            if snapshots and any(s for s in snapshots):
                maps.update(self._index_maps(pl_module, net, p, scoring.example_inputs(1, next(net.parameters()).device)))
            if self.teacher is None and self._teacher_wanted(pl_module):
                self._make_teacher(trainer, pl_module, net)

        res = run_prune(
            net, scoring, self.spec, ratio=ratio, layers=list(event.layers) if event.layers else None,
            evaluate_on=evaluate_on, num_classes=scoring.num_classes or getattr(pl_module, "num_classes", None),
            latency_inputs=self.latency_batch_size if trainer.is_global_zero else None,
            check_plan=before_prune, calibration=self._calibration(trainer), progress=trainer.is_global_zero,
        )
        p, report = res.plan, res.report
        applied_plans(pl_module).append(p.to_dict())
        rewrap_ddp(trainer)
        rebuild_optimizers(trainer)
        carried = 0
        for opt, snap in zip(trainer.optimizers, snapshots, strict=False):
            if snap:
                carried += len(restore_optimizer_state(opt, pl_module, snap, maps))
        before, after = res.metrics_before or {}, res.metrics_after or {}
        lat0, lat1 = report.latency_before, report.latency_after
        record = PruneRecord(
            index=event.index, epoch=trainer.current_epoch, criterion=self.criterion_name, strategy=self.strategy,
            ratio=float(ratio), cumulative_ratio=float(event.ratio), global_channel_ratio=float(p.global_ratio),
            params_before=report.params_before, params_after=report.params_after,
            macs_before=report.macs_before, macs_after=report.macs_after,
            latency_ms_before=lat0["median_ms"] if lat0 else None, latency_ms_after=lat1["median_ms"] if lat1 else None,
            latency_batch_size=lat1["batch_size"] if lat1 else None,
            val_acc_before_prune=before.get("val/acc"), val_acc_after_prune=after.get("val/acc"),
            test_acc_before_prune=before.get("test/acc"), test_acc_after_prune=after.get("test/acc"),
            channels_before=dict(report.channels_before), channels_after=dict(report.channels_after),
            fallback_layers=list(res.fallback_layers), recovered=list(report.recovered), optimizer_state_carried=carried,
        )
        self.history.append(record)
        self.done.append(event.index)
        metrics = {
            "prune/params": float(report.params_after),
            "prune/macs": float(report.macs_after),
            "prune/channel_ratio": float(p.global_ratio),
            "prune/step": float(len(self.done)),
        }
        metrics |= {f"prune/ratio/{n}": float(r) for n, r in p.ratios.items()}
        if after.get("val/acc") is not None:
            metrics["val/acc_before_ft"] = after["val/acc"]
        _log(trainer, metrics)
        if trainer.is_global_zero:
            if res.fallback_layers:
                rank_zero_info(f"lightprune: {self.criterion_name} cannot rank {res.fallback_layers}; "
                               f"using {self.spec.fallback} there")
            rank_zero_info(f"lightprune: pruned at epoch {trainer.current_epoch}\n{p}\n{report}")

    def _calibration(self, trainer: L.Trainer) -> Any:
        """None (the scoring set) or the first ``recalibration_batches`` training batches of this rank."""
        if self.recalibration_batches is None:
            return None
        loader = trainer.datamodule.train_dataloader() if trainer.datamodule is not None else trainer.train_dataloader
        return resolve_scoring_set(loader, max_batches=self.recalibration_batches, argument="recalibration data").batches

    def _index_maps(self, pl_module: L.LightningModule, net: torch.nn.Module, p: Any, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Flat indices each parameter of ``pl_module`` keeps through the prune of ``p`` (identity outside ``net``)."""
        from .surgery import prune

        inner = index_maps(net, lambda m: prune(m, p, x, measure_latency=False))
        prefix = f"{self.model_attr}." if self.model_attr else ""
        out = {f"{prefix}{n}": idx for n, idx in inner.items()}
        for n, param in pl_module.named_parameters():
            out.setdefault(n, torch.arange(param.numel()))
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
        save_plans(pl_module, checkpoint, self.model_attr)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"done": list(self.done), "history": [r.to_dict() for r in self.history]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.done = [int(i) for i in state_dict.get("done", [])]
        self.history = [PruneRecord.from_dict(r) for r in state_dict.get("history", [])]

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
        if last["recovered"]:
            rows.append(f"  (right after the prune, with {' + '.join(last['recovered'])}; before: the unpruned network)")
        final = (test_metrics or {}).get("test/acc")
        if final is not None:
            rows.append(f"{'test accuracy (fine-tuned)':<28}{fmt(first['test_acc_before_prune']):>14}{fmt(float(final)):>14}")
        rows.append(
            f"channels kept: {100 * (1 - last['global_channel_ratio']):.1f} % of the planned layers "
            f"({self.criterion_name}, {self.strategy}, {self.schedule_name})"
        )
        return "\n".join(rows)
