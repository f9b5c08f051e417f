"""Thin adapters over torch-pruning importances (``tp.importance``, torch-pruning 1.6.1): taylor, bn_scale.

For every prunable layer the adapter builds (once) a ``tp.DependencyGraph``, takes the layer's own
pruning group, ``dg.get_pruning_group(layer, tp.prune_conv_out_channels /
tp.prune_linear_out_channels, idxs=range(C))`` — the layer is the group's root, so the importance
comes back over the layer's own C output channels — and calls the torch-pruning importance on it.
The group holds every layer coupled to those channels (the layer's BatchNorm, the next layer's
input channels, and in residual networks every conv feeding the same addition), and torch-pruning
reduces the members' values onto the root's channels (``group_reduction``, default ``"mean"``) and
then normalises them (``normalizer``; torch-pruning's default ``"mean"`` divides by the mean, ours is
None: the raw values). torch-pruning computes in float32; the result is returned as float64.

The dependency graph is traced on a copy of the model (the user's model is never touched) with an
example input: two images of the scoring set when there is one, else ``input_size`` (an int side or
a full shape) or, when that is None, the first of a few square sizes (32, 224, 8, 16, 28, 64, 96,
128, 256, 299) on which the model runs, with the channels of the first Conv (or features of the
first Linear) in registration order. The groups do not depend on the spatial size.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
import torch_pruning as tp  # its importance classes: what these adapters wrap
from torch import nn

from ..collect import PrunableLayer
from ..errors import ConfigError, check_choice
from ..graph import dependency_graph, pruning_group
from .base import Criterion, Scores, register_criterion

__all__ = ["Taylor", "BNScale"]

_GROUP_REDUCTIONS = ("mean", "sum", "max", "prod", "first")
_NORMALIZERS = (None, "mean", "sum", "max", "standarization", "gaussian")
_PRECISIONS = ("float64", "model")
_TRIAL_SIZES = (32, 224, 8, 16, 28, 64, 96, 128, 256, 299)


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _dtype(model: nn.Module) -> torch.dtype:
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    return p.dtype if p is not None else torch.float32


def _working_copy(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """A deep copy in eval mode with every parameter requiring grad and no gradients."""
    try:
        net = copy.deepcopy(model)
    except Exception as err:  # noqa: BLE001 (any failure of user code)
        raise ConfigError(f"torch-pruning adapters need a deep copy of the model, which failed: {err}") from err
    if dtype is not None:
        net.to(dtype=dtype)
    for p in net.parameters():
        p.grad = None
        if p.is_floating_point():
            p.requires_grad_(True)
    return net.eval()


def _batch(batch: Any, need_labels: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    ok = isinstance(batch, (list, tuple)) and len(batch) >= 2 if need_labels else True
    x = batch[0] if isinstance(batch, (list, tuple)) else batch
    if not ok or not isinstance(x, torch.Tensor):
        want = "(inputs, labels)" if need_labels else "a tensor or (inputs, labels)"
        raise ConfigError(f"each scoring batch must be {want}; got {type(batch).__name__}")
    return x, (torch.as_tensor(batch[1]) if need_labels else None)


def _example_input(net: nn.Module, batches: Iterable[Any] | None, input_size: int | tuple | None) -> torch.Tensor:
    """Two example images (see the module docstring), on the copy's device and dtype."""
    device, dtype = _device(net), _dtype(net)
    if batches is not None:
        for batch in batches:
            x, _ = _batch(batch, need_labels=False)
            return x[:2].to(device=device, dtype=dtype if x.is_floating_point() else x.dtype)
        raise ConfigError("the scoring set holds no image")
    if isinstance(input_size, (tuple, list)):
        return torch.zeros(2, *input_size, device=device, dtype=dtype)
    first = next((m for m in net.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))), None)
    if first is None:
        raise ConfigError("the model has no Conv/Linear layer to infer an input shape from; pass input_size=")
    if isinstance(first, nn.Linear):
        return torch.zeros(2, first.in_features, device=device, dtype=dtype)
    nd = first.weight.ndim - 2
    sizes = (input_size,) if input_size is not None else _TRIAL_SIZES
    for s in sizes:
        x = torch.zeros(2, first.in_channels, *([s] * nd), device=device, dtype=dtype)
        try:
            with torch.no_grad():
                net(x)
            return x
        except Exception:  # noqa: BLE001, S112 (a size the model rejects: try the next one)
            continue
    raise ConfigError(
        f"could not run the model on a (2, {first.in_channels}, s, s) input for s in {list(sizes)}; "
        "pass a scoring set or input_size= (an int side or a full shape without the batch dim)"
    )


def _dependency_graph(net: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    try:
        return dependency_graph(net, example, fresh=True)  # the adapters' copies change: never cached
    except Exception as err:  # noqa: BLE001
        raise ConfigError(f"torch-pruning could not trace the model on an input of shape {tuple(example.shape)}: {err}") from err


def _group_importance(
    imp: tp.importance.Importance, dg: tp.DependencyGraph, layer: PrunableLayer, module: nn.Module
) -> torch.Tensor | None:
    """``imp`` on the pruning group rooted at ``module``'s output channels; (C,) float64 or None."""
    try:
        group = pruning_group(dg, module, list(range(layer.out_channels)))
    except ValueError:
        raise ConfigError(f"layer {layer.name!r} is not in torch-pruning's dependency graph (did it run?)") from None
    if group[0].dep.target.module is not module or list(group[0].root_idxs) != list(range(layer.out_channels)):
        raise ConfigError(f"torch-pruning rooted the group of {layer.name!r} elsewhere")  # pragma: no cover
    v = imp(group)
    if v is None:
        return None
    v = v.detach().double().cpu()
    if v.shape != (layer.out_channels,):
        raise ConfigError(
            f"torch-pruning returned shape {tuple(v.shape)} for layer {layer.name!r} with {layer.out_channels} channels"
        )
    return v


class _TorchPruningCriterion(Criterion):
    """Shared hyperparameters and checks of the adapters."""

    def __init__(self, group_reduction: str = "mean", normalizer: str | None = None) -> None:
        check_choice("group_reduction", group_reduction, _GROUP_REDUCTIONS)
        check_choice("normalizer", normalizer, _NORMALIZERS)
        self.group_reduction, self.normalizer = group_reduction, normalizer


@register_criterion("taylor")
class Taylor(_TorchPruningCriterion):
    """First-order Taylor importance (Molchanov et al. 2019) via ``tp.importance.GroupTaylorImportance``.

    Gradients: on a copy of the model (eval mode: BatchNorm uses its running statistics, dropout is
    off; the user's model, its gradients and its BatchNorm statistics are never touched), the
    gradient ``G`` of the **mean** cross-entropy over the scoring set is accumulated batch by batch
    (sum reduction, divided by the number of images); under ``torch.distributed`` the sums and the
    image count are all-reduced first, so every rank gets the same gradients and the same scores.

    torch-pruning 1.6.1's formula, for the group rooted at a layer's output channel c:

    - the layer's own filter: ``sum |W[c] * G[c]|`` over inputs and kernel positions;
    - each consumer (the next layers' input channel c): ``sum |W[:, c] * G[:, c]|``;
    - these terms are reduced with ``group_reduction`` (``"mean"``: their mean) onto c, then
      normalised (``normalizer``). BatchNorm members are skipped by 1.6.1's Taylor importance (it
      tests them against ``prune_groupnorm_out_channels``), so γ and β do not enter.

    Args:
        group_reduction: ``"mean"`` (default), ``"sum"``, ``"max"``, ``"prod"`` or ``"first"`` (the
            layer's own filter only).
        normalizer: None (default, raw values), ``"mean"``, ``"sum"``, ``"max"``, ``"standarization"``
            or ``"gaussian"`` (torch-pruning's names).
        multivariable: ``|sum W * G|`` instead of ``sum |W * G|`` per filter; default False.
        precision: ``"model"`` (default): the model's own dtype; ``"float64"``: the copy runs in
            float64, so the scores do not depend on batch size or process count beyond float64
            rounding (torch-pruning then rounds them to float32). On CIFAR VGG-16 with 1,000 images
            float64 took 279 s and 1.4 GB against about 5x less in float32.

    Raises:
        ConfigError: bad hyperparameters; at scoring: no or empty scoring set, batches without
            labels, a label outside the model's outputs, a model whose output is not (B, classes).

    Example::

        >>> import torch, lightprune as lp
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
        >>> s = lp.score(net, "taylor", [(torch.randn(8, 4), torch.arange(8) % 2)], progress=False)
        >>> s["0"].shape
        torch.Size([3])
    """

    needs_data = True
    needs_labels = True

    def __init__(
        self,
        group_reduction: str = "mean",
        normalizer: str | None = None,
        multivariable: bool = False,
        precision: str = "model",
    ) -> None:
        super().__init__(group_reduction, normalizer)
        if not isinstance(multivariable, bool):
            raise ConfigError(f"multivariable={multivariable!r} is not allowed; it must be True or False")
        check_choice("precision", precision, _PRECISIONS)
        self.multivariable, self.precision = multivariable, precision

    def _accumulate(self, net: nn.Module, batches: Iterable[Any], progress: bool) -> tuple[int, torch.Tensor]:
        device, dtype = _device(net), _dtype(net)
        it = batches
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(batches, desc="scoring taylor", leave=False, total=len(batches) if hasattr(batches, "__len__") else None)
        seen, example = 0, None
        for batch in it:
            x, y = _batch(batch, need_labels=True)
            x = x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype).clone()
            y = y.to(device).long().clone()
            out = net(x)
            if not isinstance(out, torch.Tensor) or out.ndim != 2:
                raise ConfigError("taylor needs a model whose output is a (batch, classes) tensor of logits")
            if y.numel() and (y.min() < 0 or y.max() >= out.shape[1]):
                raise ConfigError(f"taylor: labels must lie in [0, {out.shape[1]}) (the model's outputs); got {y.unique().tolist()}")
            F.cross_entropy(out, y, reduction="sum").backward()
            seen += int(x.shape[0])
            example = x[:2] if example is None else example
        return seen, example

    def score(self, model, layers, batches=None, *, num_classes=None, progress=False) -> Scores:
        if batches is None:
            raise ConfigError("criterion 'taylor' needs a scoring set: pass (inputs, labels) batches")
        dtype = torch.float64 if self.precision == "float64" else None
        if dtype is not None and _device(model).type == "mps":
            raise ConfigError("precision='float64' is not available on MPS devices; use precision='model'")
        net = _working_copy(model, dtype)
        params = [p for p in net.parameters() if p.requires_grad]
        with torch.inference_mode(False), torch.enable_grad():
            seen, example = self._accumulate(net, batches, progress)
        for p in params:  # a parameter the loss does not reach has a zero gradient
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        total = torch.tensor([float(seen)], dtype=torch.float64, device=_device(net))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(total)  # every rank: the gradient of the mean loss over all images
            for p in params:
                torch.distributed.all_reduce(p.grad)
        if total.item() == 0 or example is None:
            raise ConfigError("the scoring set holds no image")
        for p in params:
            p.grad.div_(total.to(p.grad.dtype))
        imp = tp.importance.GroupTaylorImportance(
            group_reduction=self.group_reduction, normalizer=self.normalizer, multivariable=self.multivariable
        )
        dg = _dependency_graph(net, example)
        modules = dict(net.named_modules())
        scores = {}
        for name, layer in layers.items():
            v = _group_importance(imp, dg, layer, modules[name])
            if v is None:  # pragma: no cover (Conv/Linear roots always count)
                raise ConfigError(f"taylor: torch-pruning gave no importance for layer {name!r}")
            scores[name] = v
        meta = {"hparams": self.hparams(), "num_images": int(total.item())}
        return Scores(scores, criterion=self.name, meta=meta)


@register_criterion("bn_scale")
class BNScale(_TorchPruningCriterion):
    """BatchNorm scaling factor (Network Slimming, Liu et al. 2017) via ``tp.importance.BNScaleImportance``.

    For the group rooted at a layer's output channel c: ``|gamma_c|`` of every BatchNorm in the group,
    reduced with ``group_reduction`` (``"mean"``: for a plain conv -> BN -> ReLU that is just the
    layer's own ``|gamma_c|``; for coupled layers of a residual group, the mean over all the group's
    BatchNorms, the same vector for every coupled layer), then normalised (``normalizer``). Weights
    only: a scoring set, when given, only provides the example input of the dependency graph.

    Args:
        group_reduction: ``"mean"`` (default), ``"sum"``, ``"max"``, ``"prod"`` or ``"first"``.
        normalizer: None (default, raw ``|gamma|``), ``"mean"`` (torch-pruning's default), ``"sum"``,
            ``"max"``, ``"standarization"`` or ``"gaussian"``.
        input_size: example input without a scoring set: an int side (square, channels from the first
            Conv) or a full shape without the batch dim; default None (tries a few sizes, see the
            module docstring).

    Raises:
        ConfigError: bad hyperparameters; at scoring: a prunable layer whose pruning group holds no
            (affine) BatchNorm — the message names them; pass ``layers=`` without them. No score is
            ever made up for such a layer.

    Example::

        >>> import torch, lightprune as lp
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> with torch.no_grad(): _ = net[1].weight.copy_(torch.tensor([1.0, -2.0, 0.5, 0.0]))
        >>> lp.score(net, "bn_scale")["0"].tolist()
        [1.0, 2.0, 0.5, 0.0]
    """

    needs_batchnorm = True

    def __init__(
        self, group_reduction: str = "mean", normalizer: str | None = None, input_size: int | tuple | list | None = None
    ) -> None:
        super().__init__(group_reduction, normalizer)
        ok = input_size is None or (isinstance(input_size, int) and not isinstance(input_size, bool) and input_size > 0)
        ok = ok or (isinstance(input_size, (tuple, list)) and all(isinstance(v, int) and v > 0 for v in input_size))
        if not ok:
            raise ConfigError(f"input_size={input_size!r} is not allowed; give a positive int, a shape (C, H, W) or None")
        self.input_size = input_size

    def score(self, model, layers, batches=None, *, num_classes=None, progress=False) -> Scores:
        net = _working_copy(model)
        dg = _dependency_graph(net, _example_input(net, batches, self.input_size))
        imp = tp.importance.BNScaleImportance(group_reduction=self.group_reduction, normalizer=self.normalizer)
        modules = dict(net.named_modules())
        scores, missing = {}, []
        for name, layer in layers.items():
            v = _group_importance(imp, dg, layer, modules[name])
            if v is None:
                missing.append(name)
            else:
                scores[name] = v
        if missing:
            raise ConfigError(
                f"bn_scale needs a BatchNorm (affine) coupled to each scored layer's output channels; "
                f"{missing} have none. Score them with another criterion, or pass layers= without them"
            )
        return Scores(scores, criterion=self.name, meta={"hparams": self.hparams()})
