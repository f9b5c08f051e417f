"""``feature_entropy``: the topological criterion of Zhao & Zhang (ICLR 2022), CRITERIA.md steps 1-7.

Per batch, inside the scoring hook, the birth index of every unit map of the layer's output is
computed at once by the exact kernel (:func:`lightprune.topology.birth_times`; by default the
compiled CPU kernel for CPU activations, the torch kernel for CUDA ones), reading the output in
place, and only those small integers are kept (a "cat" state of int32, N x C per layer, gathered
across DDP processes, so every rank computes the same scores).
At the end, per class c: ``score_c = H_c / max(eps_c, 1/N_c)`` (:func:`feature_entropy_score`);
importance = ``-mean_c score_c`` over the classes that have images (high entropy = ineffective =
prune first).

Betti-curve variants (``variant="betti_max"`` / ``"betti_integral"``, paper appendix): the value
characterising a unit map is the maximum or the integral of its beta_1 curve instead of the birth
index (giotto-ph persistence, slow: meant for small layers and studies). Default ``axis="index"``:
the curve on the paper's index axis ``v`` (step ``v`` lowers the threshold to the ``v``-th largest
entry, the birth index's axis); its maximum and its integral (``sum_v beta_1(v)``) are exact
integers, used as they are. ``axis="weight"``: the earlier convention, the curve over the
normalised weight ``t`` in ``[0, 1]``; its integral (a length) is put on ``levels`` equal-width
levels (``ceil(levels * value)``, so every non-zero integral is >= 1) before the entropy.
"No birth" becomes "value 0" (no cycle at all) in every variant.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
import torchmetrics
from torchmetrics.utilities import dim_zero_cat

from ..collect import PrunableLayer
from ..errors import ConfigError, check_choice, check_positive_int
from ..topology import BETTI_AXES, BIRTH_METHODS, betti_curve_features, birth_times
from .base import ActivationCriterion, register_criterion

__all__ = ["FeatureEntropy", "FeatureEntropyMetric", "VARIANTS"]

VARIANTS = ("birth", "betti_max", "betti_integral")


def _unit_values(act: torch.Tensor, variant: str, method: str, levels: int, axis: str = "index") -> torch.Tensor:
    """(B, C, m, m) -> (B, C) int32 characterisation (-1 / 0 = no birth / no cycle)."""
    if act.ndim == 2:  # Linear neurons: a scalar is a 1x1 map, which cannot hold a cycle
        return torch.full(act.shape, -1, dtype=torch.int32, device=act.device)
    if act.shape[-1] != act.shape[-2]:
        raise ConfigError(f"feature_entropy needs square maps; got {act.shape[-2]}x{act.shape[-1]}")
    if variant == "birth":
        return birth_times(act, method=method).to(torch.int32)
    kind = "max" if variant == "betti_max" else "integral"
    values = betti_curve_features(act.detach().cpu(), kind=kind, axis=axis).to(act.device)
    if kind == "max" or axis == "index":  # integers already
        v = values.round()
    else:
        v = torch.ceil(values * levels - 1e-9).clamp(min=0)
    return torch.where(v > 0, v, torch.full_like(v, -1)).to(torch.int32)


class FeatureEntropyMetric(torchmetrics.Metric):
    """Keeps the per-image characterisation of every unit (int32, N x C) and the labels.

    Args:
        num_channels: C.
        p: selective-rate threshold, default 0.1.
        variant, method, levels, axis: see :class:`FeatureEntropy`.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(
        self,
        num_channels: int,
        p: float = 0.1,
        variant: str = "birth",
        method: str = "auto",
        levels: int = 20,
        axis: str = "index",
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.num_channels, self.p, self.variant, self.method, self.levels = num_channels, p, variant, method, levels
        self.axis = axis
        self.add_state("births", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, act: torch.Tensor, labels: torch.Tensor) -> None:
        if act.shape[1] != self.num_channels:
            raise ConfigError(f"expected {self.num_channels} channels, got activations of shape {tuple(act.shape)}")
        self.births.append(_unit_values(act, self.variant, self.method, self.levels, self.axis))
        self.labels.append(labels.to(torch.int64))

    def compute(self) -> torch.Tensor:
        births, labels = dim_zero_cat(self.births), dim_zero_cat(self.labels)
        return _feature_entropy_importance(births, labels, self.p)


def _feature_entropy_importance(births: torch.Tensor, labels: torch.Tensor, p: float) -> torch.Tensor:
    """``-mean_c H_c / max(eps_c, 1/N_c)`` over the classes present in ``labels``.

    :func:`lightprune.topology.feature_entropy_score` for every class at once, in numpy: a few
    single-threaded passes over the N x C small integers (per-class torch calls cost far more
    than the arithmetic, notably when their thread pool waits for a busy core).
    """
    if births.numel() == 0:
        raise ConfigError("feature_entropy: no image was scored")
    b = births.detach().cpu().numpy().astype(np.int64)
    classes, cls = np.unique(labels.detach().cpu().numpy(), return_inverse=True)
    n_img, units = b.shape
    k = classes.size
    n_class = np.bincount(cls, minlength=k).astype(np.float64)  # N_c
    has = b > 0
    group = (cls[:, None] * units + np.arange(units)[None, :])[has]  # (class, unit) of each birth
    n_with = np.bincount(group, minlength=k * units).astype(np.float64)
    entropy = np.zeros(k * units)
    if group.size:
        width = int(b.max()) + 1
        keys, counts = np.unique(group * width + b[has], return_counts=True)
        owner = keys // width
        prob = counts / n_with[owner]
        entropy = np.bincount(owner, weights=-prob * np.log(prob), minlength=k * units)
    entropy, n_with = entropy.reshape(k, units), n_with.reshape(k, units)
    eps = n_with / n_class[:, None]
    entropy = np.where(eps < p, (1.0 - eps) * np.log(n_class)[:, None], entropy)
    score = entropy / np.maximum(eps, 1.0 / n_class[:, None])
    return torch.from_numpy(-score.mean(axis=0)).to(births.device)


@register_criterion("feature_entropy")
class FeatureEntropy(ActivationCriterion):
    """Topological feature entropy (Zhao & Zhang 2022): importance = ``-mean over classes of H / eps``.

    Args:
        p: selective-rate threshold: a unit with births on fewer than ``p`` of a class's images gets
            ``H = (1 - eps) log N`` (judged ineffective). Default 0.1 (the paper's).
        variant: ``"birth"`` (default, the exact birth-index kernel), ``"betti_max"`` or
            ``"betti_integral"`` (the appendix's Betti-curve characterisations, via giotto-ph).
        method: birth-index path for ``variant="birth"`` (see
            :func:`lightprune.topology.birth_times`; all give the same indices): ``"auto"``
            (default: the compiled ``"numba"`` kernel for CPU activations, ``"torch"`` for CUDA),
            ``"numba"``, ``"torch"`` or ``"giotto"`` (the persistent-homology reference, slow).
        axis: parameter of the Betti curve for the ``betti_*`` variants: ``"index"`` (default, the
            paper's: ``v``-th step = ``v``-th largest entry; exact integers) or ``"weight"`` (the
            normalised weight in ``[0, 1]``, the earlier convention).
        levels: levels of the integral for ``variant="betti_integral", axis="weight"``; default
            ``None`` = 20. Not allowed with ``axis="index"`` (the index integral is an integer).

    Layers whose maps are smaller than 3x3 (or Linear layers) never have a birth: every unit gets
    the same score, and a warning names the layer (feature entropy cannot rank it).

    Example::

        >>> import torch, lightprune as lp
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.ReLU(),
        ...                           torch.nn.Flatten(), torch.nn.Linear(3 * 36, 2))
        >>> x, y = torch.rand(8, 1, 6, 6), torch.arange(8) % 2
        >>> lp.score(net, "feature_entropy", [(x, y)], progress=False)["0"].shape
        torch.Size([3])
    """

    needs_labels = True

    def __init__(
        self,
        p: float = 0.1,
        variant: str = "birth",
        method: str = "auto",
        levels: int | None = None,
        axis: str = "index",
    ) -> None:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ConfigError(f"p={p!r} is not allowed; it must be a number in [0, 1]")
        check_choice("variant", variant, VARIANTS)
        check_choice("method", method, BIRTH_METHODS)
        check_choice("axis", axis, BETTI_AXES)
        if levels is not None:
            check_positive_int("levels", levels)
            if not (variant == "betti_integral" and axis == "weight"):
                raise ConfigError(
                    f"levels={levels!r} is not allowed with variant={variant!r}, axis={axis!r}; levels quantise "
                    "only the weight-axis integral (variant='betti_integral', axis='weight')"
                )
        self.p, self.variant, self.method, self.axis = float(p), variant, method, axis
        self.levels = 20 if levels is None else levels

    def make_state(self, layer: PrunableLayer, num_classes: int | None) -> FeatureEntropyMetric:
        return FeatureEntropyMetric(layer.out_channels, self.p, self.variant, self.method, self.levels, self.axis)

    def score(self, model, layers, batches=None, *, num_classes=None, progress=False):
        scores = super().score(model, layers, batches, num_classes=num_classes, progress=progress)
        flat = [n for n, v in scores.items() if v.numel() > 1 and bool((v == v[0]).all())]
        if flat:
            warnings.warn(
                f"feature_entropy gives every channel the same score in {flat} (maps smaller than 3x3, "
                "Linear layers, or no unit with a birth): it cannot rank them; score these layers with "
                "another criterion (e.g. scores_by_depth) or leave them out (layers=...)",
                stacklevel=2,
            )
        return scores


