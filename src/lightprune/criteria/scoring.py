"""``lp.score``: find the layers, build the class-balanced scoring set, stream it, return :class:`Scores`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torchmetrics
from torch import nn

from ..collect import PrunableLayer, capture_activations, find_prunable_layers
from ..errors import ConfigError
from .base import Criterion, Scores, create_criterion

__all__ = ["score", "stream_states"]


def _first_batch(batches: Any) -> torch.Tensor:
    for batch in batches:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return x[:2]
    raise ConfigError("dataloader is empty: the scoring set holds no image")


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def stream_states(
    model: nn.Module,
    layers: dict[str, PrunableLayer],
    states: dict[str, torchmetrics.Metric],
    batches: Iterable[Any],
    *,
    progress: bool = False,
    desc: str = "scoring",
) -> int:
    """Run ``batches`` through ``model`` (eval mode, no gradients), feeding each layer's
    post-activation output and the labels to ``states[layer].update``. Returns the local image count."""
    device = _model_device(model)
    for st in states.values():
        st.to(device)
    labels: dict[str, torch.Tensor] = {}

    def feed(name: str, act: torch.Tensor) -> None:
        states[name].update(act.detach(), labels["y"])

    seen = 0
    was_training = model.training
    model.eval()
    try:
        it = batches
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(batches, desc=desc, leave=False, total=len(batches) if hasattr(batches, "__len__") else None)
        with torch.no_grad(), capture_activations(model, layers, feed):
            for batch in it:
                if not (isinstance(batch, (list, tuple)) and len(batch) >= 2):
                    raise ConfigError("each scoring batch must be (inputs, labels); got " + type(batch).__name__)
                x, y = batch[0].to(device), torch.as_tensor(batch[1]).to(device).long()
                labels["y"] = y
                model(x)
                seen += int(x.shape[0])
    finally:
        model.train(was_training)
    return seen


def score(
    model: nn.Module,
    criterion: str | Criterion,
    dataloader: Any = None,
    *,
    layers: Sequence[str] | None = None,
    num_classes: int | None = None,
    samples_per_class: int = 100,
    classes: Sequence[int] | None = None,
    progress: bool = True,
    **hparams: Any,
) -> Scores:
    """Score every prunable layer of ``model`` (or ``layers``) with ``criterion``.

    Args:
        model: the network (left in the train/eval mode it had).
        criterion: a registered name (see :func:`lightprune.list_criteria`) or a :class:`Criterion`.
        dataloader: the scoring set, needed by activation criteria: a
            :class:`~lightprune.data.ClassificationDataModule` (its class-balanced training subset of
            ``samples_per_class`` images of each class in ``classes`` is drawn), or any iterable of
            ``(inputs, labels)`` batches (used as given). Weight-only criteria ignore it.
        layers: module names to score; default: every prunable layer (see
            :func:`lightprune.collect.find_prunable_layers`).
        num_classes: number of classes (label-based criteria); default: the data module's, or
            ``max(label) + 1`` seen in the scoring set.
        samples_per_class: images per class drawn from a data module, default 100.
        classes: classes drawn from a data module, default all.
        progress: show a progress bar while streaming, default True.
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
    from ..data import ClassificationDataModule

    if isinstance(criterion, str):
        criterion = create_criterion(criterion, **hparams)
    elif hparams:
        raise ConfigError(f"hyperparameters {sorted(hparams)} given with a Criterion instance; set them on the instance")
    elif not isinstance(criterion, Criterion):
        raise ConfigError(f"criterion={criterion!r} is not allowed; give a registered name or a Criterion instance")

    batches = None
    if isinstance(dataloader, ClassificationDataModule):
        num_classes = num_classes or dataloader.num_classes
        dataloader.setup("fit")
        batches = dataloader.scoring_dataloader(samples_per_class, classes)
    elif dataloader is not None:
        batches = dataloader
    if criterion.needs_data and batches is None:
        raise ConfigError(
            f"criterion {criterion.name!r} needs a scoring set: pass dataloader= (a data module or (inputs, labels) batches)"
        )
    example = _first_batch(batches).to(_model_device(model)) if criterion.needs_data else None
    found = find_prunable_layers(model, example, layers)
    if not found:
        raise ConfigError("the model has no prunable layer (Conv2d with groups=1 or hidden Linear)")
    if criterion.needs_labels and num_classes is None:
        num_classes = _infer_num_classes(batches)
    return criterion.score(model, found, batches, num_classes=num_classes, progress=progress)


def _infer_num_classes(batches: Iterable[Any]) -> int:
    top = -1
    for batch in batches:
        top = max(top, int(torch.as_tensor(batch[1]).max()))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = torch.tensor([top], device="cuda" if torch.distributed.get_backend() == "nccl" else "cpu")
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)  # every rank: the same count
        top = int(t.item())
    if top < 1:
        raise ConfigError("num_classes could not be inferred (fewer than 2 classes in the scoring set); pass num_classes=")
    return top + 1
