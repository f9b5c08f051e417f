"""``lp.score``: find the layers, build the class-balanced scoring set, stream it, return :class:`Scores`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ..collect import find_prunable_layers, select_layers
from ..data import resolve_scoring_set
from ..errors import ConfigError
from ..evaluation import model_device
from .base import Criterion, Scores, create_criterion

__all__ = ["score", "resolve_criterion"]


def resolve_criterion(criterion: str | Criterion, **hparams: Any) -> Criterion:
    """A :class:`Criterion` from a registered name (with ``hparams``) or an instance (without)."""
    if isinstance(criterion, str):
        return create_criterion(criterion, **hparams)
    if hparams:
        raise ConfigError(f"hyperparameters {sorted(hparams)} given with a Criterion instance; set them on the instance")
    if not isinstance(criterion, Criterion):
        raise ConfigError(f"criterion={criterion!r} is not allowed; give a registered name or a Criterion instance")
    return criterion



def score(
    model: nn.Module,
    criterion: str | Criterion,
    dataloader: Any = None,
    *,
    layers: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    layer_types: str | Sequence[str] | None = None,
    num_classes: int | None = None,
    samples_per_class: int = 100,
    classes: Sequence[int] | None = None,
    progress: bool = True,
    keys: Sequence[str] | None = None,
    **hparams: Any,
) -> Scores:
    """Score every prunable layer of ``model`` (or ``layers``) with ``criterion``.

    Args:
        model: the network (left in the train/eval mode it had).
        criterion: a registered name (see :func:`lightprune.list_criteria`) or a :class:`Criterion`.
        dataloader: the scoring set, needed by activation criteria: a
            :class:`~lightprune.data.ClassificationDataModule` (its class-balanced training subset of
            ``samples_per_class`` images of each class in ``classes`` is drawn), or any iterable of
            ``(inputs, labels)`` or dict batches (used as given; see
            :func:`lightprune.data.resolve_scoring_set`). Weight-only criteria ignore it.
        layers: module names or glob patterns to score; default: every prunable layer (see
            :func:`lightprune.collect.find_prunable_layers`). The scope is
            :func:`lightprune.collect.select_layers` (``layers``, then ``exclude``, then ``layer_types``).
        exclude: names or glob patterns left out.
        layer_types: ``"conv"`` and/or ``"linear"``; default both.
        num_classes: number of classes (label-based criteria); default: the data module's, or
            ``max(label) + 1`` seen in the scoring set.
        samples_per_class: images per class drawn from a data module, default 100.
        classes: classes drawn from a data module, default all.
        progress: show a progress bar while streaming, default True.
        keys: for dict batches, the (input key, label key), default ``("image", "label")``.
        **hparams: hyperparameters of the criterion when it is given by name.

    Returns:
        :class:`Scores` with one (C,) float64 tensor per layer, higher = keep.

    Raises:
        ConfigError: activation criterion without data, unknown layer, bad hyperparameters.
        UnknownNameError: unknown criterion name.

    Example::

        >>> import lightprune as lp
        >>> net = lp.create_model("cifar_vgg11", 10, width_mult=0.25)
        >>> s = lp.score(net, "l1")
        >>> list(s)[:2], s["features.0"].shape
        (['features.0', 'features.4'], torch.Size([16]))
    """
    criterion = resolve_criterion(criterion, **hparams)
    batches = None
    if dataloader is not None:
        scoring = resolve_scoring_set(dataloader, samples_per_class=samples_per_class, classes=classes, keys=keys)
        batches = scoring.batches
        num_classes = num_classes or scoring.num_classes
    if criterion.needs_data and batches is None:
        raise ConfigError(
            f"criterion {criterion.name!r} needs a scoring set: pass dataloader= (a data module or (inputs, labels) batches)"
        )
    example = None
    if criterion.needs_data:
        example = next(iter(batches))[0][:2].to(model_device(model)) if _nonempty(batches) else None
        if example is None:
            raise ConfigError("dataloader is empty: the scoring set holds no image")
    found = select_layers(find_prunable_layers(model, example), layers, exclude, layer_types,
                          modules=dict(model.named_modules()))
    if not found:
        raise ConfigError("the model has no prunable layer (Conv2d with groups=1 or hidden Linear)")
    if criterion.needs_labels and num_classes is None:
        num_classes = _infer_num_classes(batches)
    return criterion.score(model, found, batches, num_classes=num_classes, progress=progress)


def _nonempty(batches: Any) -> bool:
    for _ in batches:
        return True
    return False


def _infer_num_classes(batches: Iterable[Any]) -> int:
    top = -1
    for _, y in batches:
        top = max(top, int(y.max()))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = torch.tensor([top], device="cuda" if torch.distributed.get_backend() == "nccl" else "cpu")
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)  # every rank: the same count
        top = int(t.item())
    if top < 1:
        raise ConfigError("num_classes could not be inferred (fewer than 2 classes in the scoring set); pass num_classes=")
    return top + 1
