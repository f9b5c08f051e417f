"""ClassificationModule: the LightningModule that trains and fine-tunes (pruned) classifiers.

The optimizer and LR scheduler are *configuration* (callables that build them for a set of
parameters), never objects bound to parameters: after pruning replaces a layer's parameters,
``configure_optimizers`` builds fresh ones for the new parameters.

Example::

    >>> import torch, lightprune as lp
    >>> m = lp.ClassificationModule("cifar_vgg11", num_classes=10, model_kwargs={"width_mult": 0.25})
    >>> m(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 10])
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from .errors import ConfigError
from .lightning_glue import PrunedCheckpointMixin
from .models import create_model

__all__ = ["ClassificationModule", "default_optimizer"]

# The same types LightningCLI uses for dependency injection (``class_path`` + ``init_args`` in YAML).
OptimizerFactory = OptimizerCallable
SchedulerFactory = LRSchedulerCallable


def default_optimizer(params: Iterable[Any]) -> torch.optim.Optimizer:
    """SGD, lr 0.05, momentum 0.9, weight decay 5e-4 (the usual CIFAR recipe)."""
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)


def _metrics(num_classes: int, prefix: str) -> MetricCollection:
    metrics: dict[str, Any] = {
        "acc": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
        # balanced accuracy = mean per-class recall = macro-averaged accuracy
        "balanced_acc": MulticlassAccuracy(num_classes, top_k=1, average="macro"),
    }
    if num_classes >= 5:
        metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    return MetricCollection(metrics, prefix=prefix)


def check_distillation(d: dict[str, Any] | None) -> dict[str, Any] | None:
    if d is None:
        return None
    if not isinstance(d, dict):
        raise ConfigError(f"distillation={d!r} is not allowed; give a mapping such as {{'alpha': 0.5, 'temperature': 4.0}}")
    unknown = set(d) - {"alpha", "temperature", "teacher_ckpt"}
    if unknown:
        raise ConfigError(f"distillation has unknown keys {sorted(unknown)}; allowed: alpha, temperature, teacher_ckpt")
    alpha, temp = float(d.get("alpha", 0.5)), float(d.get("temperature", 4.0))
    if not 0 <= alpha <= 1:
        raise ConfigError(f"distillation.alpha={alpha!r} is not allowed; it must lie in [0, 1]")
    if not temp > 0:
        raise ConfigError(f"distillation.temperature={temp!r} is not allowed; it must be > 0")
    return {"alpha": alpha, "temperature": temp, "teacher_ckpt": d.get("teacher_ckpt")}


class ClassificationModule(PrunedCheckpointMixin, L.LightningModule):
    """Trains a classifier with cross-entropy; logs top-1 (top-5 with >= 5 classes) and balanced accuracy.

    The network lives in ``self.model``; pruning callbacks modify it in place.

    Args:
        model: a name from :func:`lightprune.list_models` or an ``nn.Module`` instance, default
            ``"cifar_vgg16"``.
        num_classes: classes of the task (>= 2), default 10; the CLI links it from the data module.
        in_channels: image channels (1 or 3), default 3; linked from the data module by the CLI.
        image_size: input side, checked against the model's minimum; linked by the CLI.
        model_kwargs: extra keyword arguments of :func:`lightprune.create_model` (e.g. ``width_mult``).
        optimizer: callable ``params -> Optimizer`` (LightningCLI: ``optimizer: {class_path: torch.optim.SGD,
            init_args: {lr: 0.05}}``); None (default) = :func:`default_optimizer`.
        lr_scheduler: callable ``optimizer -> LRScheduler`` or None (default), stepped every epoch.
        label_smoothing: cross-entropy label smoothing, default 0.0.
        distillation: knowledge distillation during fine-tuning, e.g. ``{"alpha": 0.5, "temperature": 4.0}``
            (optional ``"teacher_ckpt"``: a ClassificationModule checkpoint whose network is the teacher;
            otherwise the teacher is the network right before the prune, handed over by
            ``PruningCallback``). The loss is :func:`lightprune.recovery.distillation_loss`:
            ``(1-α)·CE + α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T))``, logged as ``train/kd_loss``. Without
            a teacher (before the prune) training uses plain cross-entropy. None (default): no distillation.

    Raises:
        ConfigError: ``num_classes`` < 2, an unknown model name, or a model whose output width is not
            ``num_classes``.
    """

    def __init__(
        self,
        model: str | nn.Module = "cifar_vgg16",
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int | None = None,
        model_kwargs: dict[str, Any] | None = None,
        optimizer: OptimizerFactory | None = None,
        lr_scheduler: SchedulerFactory | None = None,
        label_smoothing: float = 0.0,
        distillation: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(f"num_classes={num_classes!r} is not allowed; a classifier needs an integer >= 2")
        if isinstance(model, nn.Module):
            self.save_hyperparameters(ignore=["model"])
            self.model = model
        elif isinstance(model, str):
            self.save_hyperparameters()
            self.model = create_model(
                model, num_classes, in_channels=in_channels, image_size=image_size, **(model_kwargs or {})
            )
        else:
            raise ConfigError(f"model={model!r} is not allowed; give a model name or an nn.Module instance")
        # Checkpoints must load with torch.load(weights_only=True): hyperparameters stay plain data.
        # Under LightningCLI they are the config (class_path dicts); a Python callable is not stored.
        for key in ("optimizer", "lr_scheduler"):
            if callable(self.hparams.get(key)):
                self.hparams[key] = None
        self.num_classes = num_classes
        self.optimizer_factory = optimizer or default_optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.label_smoothing = float(label_smoothing)
        self.distillation = check_distillation(distillation)
        self.teacher = None  # a lightprune.recovery.Teacher (not a submodule: not saved, not trained)
        self.train_acc = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_metrics = _metrics(num_classes, "val/")
        self.test_metrics = _metrics(num_classes, "test/")

    #: the network attribute whose pruning plans the checkpoints carry (PrunedCheckpointMixin)
    lightprune_model_attr = "model"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _check_logits(self, logits: torch.Tensor) -> None:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ConfigError(
                f"the model returns logits of shape {tuple(logits.shape)}, but num_classes={self.num_classes}"
            )

    def set_teacher(self, teacher: Any) -> None:
        """Use ``teacher`` (a :class:`lightprune.recovery.Teacher`) for distillation from now on."""
        self.teacher = teacher

    def on_fit_start(self) -> None:
        ckpt = (self.distillation or {}).get("teacher_ckpt")
        if ckpt and self.teacher is None:
            from .recovery import Teacher

            other = ClassificationModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
            self.set_teacher(Teacher(other.model))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        self._check_logits(logits)
        if self.distillation is not None and self.teacher is not None:
            from .recovery import distillation_loss

            loss, parts = distillation_loss(logits, self.teacher(x), y, alpha=self.distillation["alpha"],
                                            temperature=self.distillation["temperature"])
            self.log("train/kd_loss", parts["kd"], on_step=False, on_epoch=True)
        else:
            loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        self.train_acc(logits, y)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def _eval_step(self, batch: Any, stage: str, metrics: MetricCollection) -> None:
        x, y = batch
        logits = self(x)
        self._check_logits(logits)
        loss = F.cross_entropy(logits, y)
        metrics.update(logits, y)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", sync_dist=True)
        self.log_dict(metrics, prog_bar=stage == "val")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics)

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(x).softmax(dim=1)

    def configure_optimizers(self) -> Any:
        """Build the optimizer (and scheduler) for the *current* parameters; called again after pruning."""
        opt = self.optimizer_factory(self.parameters())
        if self.lr_scheduler_factory is None:
            return opt
        sched = self.lr_scheduler_factory(opt)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
