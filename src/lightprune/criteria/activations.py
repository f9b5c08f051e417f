"""Activation-statistics criteria: APoZ, class selectivity, entropy / MI / KL selectivity / labeled MI.

Definitions: CRITERIA.md, "Activation statistics". Every criterion here is an
:class:`~lightprune.criteria.ActivationCriterion` whose per-layer state is a torchmetrics
``Metric``: ``update(act, labels)`` receives the layer's post-activation output of one batch
(``(B, C, H, W)`` for a conv, ``(B, C)`` for a Linear layer) and the labels ``(B,)``;
``compute()`` returns the ``(C,)`` float64 importance, **higher = keep**. Only small statistics
are kept (counts, per-class sums, and for the median/quantile quantisers one scalar per image and
unit); every state declares its reduction across processes (``"sum"`` or ``"cat"``), so under DDP
every rank ends with the same scores. Each metric calls a pure functional ``_update`` /
``_compute`` pair defined right under it.

Choices made where CRITERIA.md is silent (documented again at each class):

- **Empty classes** (a class index in ``[0, num_classes)`` with no scored image, e.g. when the
  scoring set is drawn from a subset of the classes): excluded. Class selectivity takes ``a_max``
  and ``a_rest`` over the classes that have images (at least 2 are needed, else ``ConfigError``);
  for the information measures an empty class has probability 0 and drops out by itself
  (``kl_selectivity`` maximises over the classes that have images; ``labeled_mi`` of an empty
  class is 0).
- **Quantile edges**: ``torch.quantile(t, j / k, dim=0)`` with its default linear interpolation
  (rank ``q * (N - 1)`` in the sorted values), ``j = 1 .. k-1``. The median is the ``k = 2`` case.
- **Tie rule**: ``Q(t) = #{edges e : t > e}``, so a value *equal* to an edge goes to the lower bin.
  In particular a constant unit (a dead ReLU unit) falls in a single bin and gets entropy 0.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torchmetrics
from torch import nn
from torchmetrics.utilities import dim_zero_cat

from ..collect import PrunableLayer
from ..errors import ConfigError, check_choice, check_positive_int
from .base import ActivationCriterion, register_criterion

__all__ = [
    "APoZ",
    "ClassSelectivity",
    "Entropy",
    "MutualInformation",
    "KLSelectivity",
    "LabeledMI",
    "APoZMetric",
    "ClassSelectivityMetric",
    "InformationMetric",
]

#: Quantisers of the information criteria. ``"auto"``: the CRITERIA.md default (conv units: ``entropy``
#: 8 equal-width bins over the layer's range, the label-based measures 1 bit at the unit's median;
#: Linear neurons: 1 bit at the activation's threshold below, else the median).
_QUANTIZERS = ("auto", "median", "threshold", "quantile", "width")
#: Quantisers of :class:`InformationMetric` (``"auto"`` is resolved by the criterion, per layer).
_METRIC_QUANTIZERS = ("median", "threshold", "quantile", "width")
#: Quantisers that take ``bins=``.
_BINNED = ("quantile", "width")
#: Default number of equal-width bins of a conv unit under ``entropy``'s ``"auto"``.
_ENTROPY_CONV_BINS = 8
#: Default 1-bit threshold of a Linear neuron by the activation after it (checked in this order,
#: ``isinstance``): 0.5 after sigmoid-like units, 0 after ReLU-like and zero-centred ones. Other
#: activations (Softplus, none) have no default: ``"auto"`` then uses the median.
_ACTIVATION_THRESHOLDS: tuple[tuple[tuple[type[nn.Module], ...], float], ...] = (
    ((nn.Sigmoid, nn.Hardsigmoid), 0.5),
    (
        (
            nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
            nn.Mish, nn.Hardswish, nn.Hardtanh, nn.Tanh,
        ),
        0.0,
    ),
)
#: Added to the denominator of class selectivity (CRITERIA.md).
_SELECTIVITY_EPS = 1e-12
#: torch.quantile is applied to at most this many elements at a time (older torch versions refuse
#: larger inputs); columns are processed in chunks.
_QUANTILE_CHUNK = 2**24


# ------------------------------------------------------------------------------------------------
# input checks shared by the metrics
# ------------------------------------------------------------------------------------------------
def _check_num_channels(num_channels: object) -> int:
    return check_positive_int("num_channels", num_channels)


def _check_num_classes(num_classes: object, who: str) -> int:
    if num_classes is None:
        raise ConfigError(
            f"{who} needs num_classes (the number of classes of the labels, an integer >= 2); got None"
        )
    return check_positive_int("num_classes", num_classes, minimum=2)


def _check_act(act: Any, num_channels: int) -> torch.Tensor:
    if not isinstance(act, torch.Tensor):
        raise ConfigError(f"activations must be a torch.Tensor, got {type(act).__name__}")
    if act.ndim not in (2, 4) or act.shape[1] != num_channels:
        raise ConfigError(
            f"activations of shape {tuple(act.shape)} do not fit: expected (B, {num_channels}) for a Linear "
            f"layer or (B, {num_channels}, H, W) for a conv"
        )
    return act


def _check_labels(labels: Any, batch: int, num_classes: int) -> torch.Tensor:
    """(B,) int64 labels in ``[0, num_classes)``, else :class:`ConfigError`."""
    if labels is None:
        raise ConfigError("labels are needed by this criterion; got None")
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ConfigError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.shape != (batch,):
        raise ConfigError(f"labels of shape {tuple(labels.shape)} do not fit activations of batch size {batch}")
    labels = labels.long()
    if batch:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise ConfigError(f"labels contain {bad}, outside [0, num_classes={num_classes})")
    return labels


def _no_image(who: str) -> ConfigError:
    return ConfigError(f"{who}: no image was scored (update() was never called with a non-empty batch)")


class _ChannelMetric(torchmetrics.Metric):
    """Shared settings of the per-channel metrics. (torchmetrics squeezes a one-element result to
    0-d; ``ActivationCriterion.score`` reshapes every result to (C,).)"""

    full_state_update = False
    is_differentiable = False
    higher_is_better = True


# ------------------------------------------------------------------------------------------------
# APoZ
# ------------------------------------------------------------------------------------------------
class APoZMetric(_ChannelMetric):
    """Average percentage of zeros (Hu et al. 2016), streamed: importance = 1 - APoZ.

    APoZ of a unit = fraction of *exact* zeros in its post-ReLU map over all scored images and
    positions (a Linear neuron has one position per image). High APoZ = prune, so the importance
    is ``1 - APoZ``. After activations that are rarely exactly 0 (no ReLU), every unit gets ~1.

    States: ``zeros`` (C,) int64 and ``positions`` () int64 (entries per unit), both reduced by sum.

    Args:
        num_channels: C, the layer's number of output channels.

    Raises:
        ConfigError: bad ``num_channels``; activations of the wrong shape; nothing scored.

    Example::

        >>> import torch
        >>> from lightprune.criteria.activations import APoZMetric
        >>> m = APoZMetric(num_channels=2)
        >>> m.update(torch.tensor([[0.0, 1.0], [0.0, 0.0]]), torch.tensor([0, 1]))
        >>> m.compute().tolist()
        [0.0, 0.5]
    """

    def __init__(self, num_channels: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_channels = _check_num_channels(num_channels)
        self.add_state("zeros", torch.zeros(self.num_channels, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("positions", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, act: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Count the zeros of one batch; ``labels`` are ignored."""
        zeros, positions = _apoz_update(_check_act(act, self.num_channels))
        self.zeros += zeros
        self.positions += positions

    def compute(self) -> torch.Tensor:
        if int(self.positions) == 0:
            raise _no_image("apoz")
        return _apoz_compute(self.zeros, self.positions)


def _apoz_update(act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C[, H, W]) -> zeros per unit (C,) int64, entries per unit () int64."""
    dims = [d for d in range(act.ndim) if d != 1]
    zeros = (act == 0).sum(dim=dims, dtype=torch.int64)
    positions = torch.tensor(act.numel() // act.shape[1], dtype=torch.int64, device=act.device)
    return zeros, positions


def _apoz_compute(zeros: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """importance = 1 - zeros / positions, (C,) float64."""
    return 1.0 - zeros.double() / positions.double()


# ------------------------------------------------------------------------------------------------
# class selectivity
# ------------------------------------------------------------------------------------------------
class ClassSelectivityMetric(_ChannelMetric):
    """Class selectivity (Morcos et al. 2018), streamed.

    ``a_c`` = mean over the images of class c of the unit's spatially averaged map;
    ``selectivity = (a_max - a_rest) / (a_max + a_rest + 1e-12)``, ``a_max`` the largest class mean,
    ``a_rest`` the mean of the other class means (when several classes tie for the maximum, one of
    them is ``a_max`` and the others count in ``a_rest``). Importance = selectivity (meant for
    non-negative, post-ReLU maps, where it lies in [0, 1]).

    **Classes with no scored image are excluded**: a_max and a_rest are taken over the classes that
    have images, so scoring on a subset of the classes works; fewer than 2 such classes is an error.

    States: ``sums`` (K, C) float64 (per class, sum over images of the spatial mean) and ``counts``
    (K,) int64 (images per class), both reduced by sum.

    Args:
        num_channels: C, the layer's number of output channels.
        num_classes: K >= 2; labels must lie in ``[0, K)``.

    Raises:
        ConfigError: bad ``num_channels`` / ``num_classes``; activations or labels of the wrong
            shape, dtype or range; fewer than 2 classes with images at ``compute()``.

    Example::

        >>> import torch
        >>> from lightprune.criteria.activations import ClassSelectivityMetric
        >>> m = ClassSelectivityMetric(num_channels=2, num_classes=2)
        >>> m.update(torch.tensor([[3.0, 1.0], [1.0, 1.0]]), torch.tensor([0, 1]))
        >>> [round(v, 6) for v in m.compute().tolist()]  # (3 - 1) / (3 + 1), (1 - 1) / (1 + 1)
        [0.5, 0.0]
    """

    def __init__(self, num_channels: int, num_classes: int | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_channels = _check_num_channels(num_channels)
        self.num_classes = _check_num_classes(num_classes, "class_selectivity")
        self.add_state(
            "sums", torch.zeros(self.num_classes, self.num_channels, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("counts", torch.zeros(self.num_classes, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, act: torch.Tensor, labels: torch.Tensor) -> None:
        act = _check_act(act, self.num_channels)
        labels = _check_labels(labels, act.shape[0], self.num_classes)
        sums, counts = _class_selectivity_update(act, labels, self.num_classes)
        self.sums += sums
        self.counts += counts

    def compute(self) -> torch.Tensor:
        if int(self.counts.sum()) == 0:
            raise _no_image("class_selectivity")
        return _class_selectivity_compute(self.sums, self.counts)


def _class_selectivity_update(
    act: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C[, H, W]), (B,) -> per-class sums of the unit outputs (K, C) float64, images per class (K,)."""
    t = _unit_outputs(act)
    sums = torch.zeros(num_classes, t.shape[1], dtype=torch.float64, device=t.device).index_add_(0, labels, t)
    counts = torch.bincount(labels, minlength=num_classes)
    return sums, counts


def _class_selectivity_compute(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(K, C) sums, (K,) counts -> (C,) selectivity over the classes that have images."""
    present = counts > 0
    k = int(present.sum())
    if k < 2:
        have = present.nonzero().flatten().tolist()
        raise ConfigError(
            f"class_selectivity needs scored images of at least 2 classes; only class(es) {have} have any "
            f"(image counts per class: {counts.tolist()})"
        )
    means = sums[present] / counts[present].unsqueeze(1).double()  # (k, C)
    a_max, arg = means.max(dim=0)
    others = torch.ones_like(means, dtype=torch.bool)
    others[arg, torch.arange(means.shape[1], device=means.device)] = False
    a_rest = torch.where(others, means, torch.zeros_like(means)).sum(dim=0) / (k - 1)
    return (a_max - a_rest) / (a_max + a_rest + _SELECTIVITY_EPS)


# ------------------------------------------------------------------------------------------------
# information measures
# ------------------------------------------------------------------------------------------------
class InformationMetric(_ChannelMetric):
    """Joint counts of (class y, quantised unit output Q(t)) and an information measure on them.

    The unit output t is the scalar of a Linear neuron, or the spatial mean of a conv unit's map.
    Quantisers (see the module docstring for the exact tie rule):

    - ``"threshold"``: ``Q(t) = 1[t > threshold]``. The joint counts are accumulated directly:
      state ``joint`` (C, K, 2) int64, reduced by sum.
    - ``"median"``: ``Q(t) = 1[t > m]``, m = ``torch.quantile(t over the scoring set, 0.5)``.
    - ``"quantile"``: ``bins`` equal-frequency bins, ``Q(t) = #{j : t > e_j}`` with edges
      ``e_j = torch.quantile(t, j / bins)``, ``j = 1 .. bins-1``.
    - ``"width"``: ``bins`` equal-width bins over the **layer's** range: ``e_j = lo + j (hi - lo) / bins``
      with ``lo``, ``hi`` the smallest and largest t of *all units* of the layer over the scoring set
      (the same grid for every unit, so units are compared on one scale; a constant layer puts
      everything in bin 0).

    The median and quantiles need every t of the scoring set, so these keep the (N, C) unit outputs
    (one float64 scalar per image and unit, never the maps: 8 N C bytes per layer) and the (N,)
    labels as ``"cat"`` states and build the joint counts (C, K, levels) at ``compute()``.

    Measures (natural logs, 0 log 0 = 0; ``P`` from the joint counts): ``"entropy"`` H(T);
    ``"mutual_information"`` I(T;Y) = H(T) - H(T|Y); ``"kl_selectivity"``
    max_y D_KL(P(T|Y=y) || P(T)) over the classes with images; ``"labeled_mi"`` max_y I(T; 1[Y=y]).
    The last three are clamped at 0 (they are >= 0; rounding can give -1e-17).

    Args:
        num_channels: C, the layer's number of output channels.
        num_classes: K >= 2, labels in ``[0, K)``; ignored for ``measure="entropy"``, which reads no labels.
        measure: one of ``"entropy"``, ``"mutual_information"``, ``"kl_selectivity"``, ``"labeled_mi"``.
        quantizer: ``"median"`` (default), ``"threshold"``, ``"quantile"`` or ``"width"``.
        threshold: the threshold of ``quantizer="threshold"`` (required there, not allowed elsewhere).
        bins: number of bins of ``quantizer="quantile"`` / ``"width"``, >= 2 (required there, not allowed elsewhere).

    Raises:
        ConfigError: any argument outside what is allowed; activations or labels of the wrong
            shape, dtype or range; nothing scored.

    Example::

        >>> import torch
        >>> from lightprune.criteria.activations import InformationMetric
        >>> m = InformationMetric(2, 2, measure="mutual_information", quantizer="threshold", threshold=0.0)
        >>> m.update(torch.tensor([[1.0, 1.0], [0.0, 1.0]]), torch.tensor([0, 1]))
        >>> [round(v, 6) for v in m.compute().tolist()]  # log 2: T = Y;  0: T constant
        [0.693147, 0.0]
    """

    def __init__(
        self,
        num_channels: int,
        num_classes: int | None = None,
        measure: str = "entropy",
        quantizer: str = "median",
        threshold: float | None = None,
        bins: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_choice("measure", measure, _MEASURES)
        self.measure = measure
        self.num_channels = _check_num_channels(num_channels)
        self.num_classes = None if measure == "entropy" else _check_num_classes(num_classes, measure)
        self.quantizer, self.threshold, self.bins = _check_quantizer(quantizer, threshold, bins, _METRIC_QUANTIZERS)
        k = self.num_classes or 1
        if self.quantizer == "threshold":
            self.add_state(
                "joint", torch.zeros(self.num_channels, k, 2, dtype=torch.int64), dist_reduce_fx="sum"
            )
        else:
            self.add_state("outputs", [], dist_reduce_fx="cat")
            if self.num_classes is not None:
                self.add_state("labels", [], dist_reduce_fx="cat")

    def update(self, act: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        act = _check_act(act, self.num_channels)
        y = None if self.num_classes is None else _check_labels(labels, act.shape[0], self.num_classes)
        if self.quantizer == "threshold":
            self.joint += _information_update(act, y, self.num_classes or 1, self.threshold)
        else:
            self.outputs.append(_unit_outputs(act))
            if y is not None:
                self.labels.append(y)

    def compute(self) -> torch.Tensor:
        if self.quantizer == "threshold":
            joint = self.joint
        else:
            if isinstance(self.outputs, list) and not self.outputs:
                raise _no_image(self.measure)
            t = dim_zero_cat(self.outputs)
            if self.num_classes is None:
                y = torch.zeros(t.shape[0], dtype=torch.int64, device=t.device)
            else:
                y = dim_zero_cat(self.labels)
            levels = 2 if self.quantizer == "median" else self.bins
            edges = _width_edges(t, levels) if self.quantizer == "width" else _quantile_edges(t, levels)
            q = _quantize(t, edges)
            joint = _joint_counts(q, y, self.num_classes or 1, levels)
        if int(joint[0].sum()) == 0:
            raise _no_image(self.measure)
        return _information_compute(joint, self.measure)


def _unit_outputs(act: torch.Tensor) -> torch.Tensor:
    """Unit outputs t, (B, C) float64: a Linear neuron's scalar, or a conv unit's spatial mean."""
    if act.ndim == 2:
        return act.double()
    return act.mean(dim=(2, 3), dtype=torch.float64)


def _information_update(
    act: torch.Tensor, labels: torch.Tensor | None, num_classes: int, threshold: float
) -> torch.Tensor:
    """Joint counts of one batch for the 1-bit threshold quantiser: (C, K, 2) int64."""
    t = _unit_outputs(act)
    if labels is None:
        labels = torch.zeros(t.shape[0], dtype=torch.int64, device=t.device)
    return _joint_counts((t > threshold).long(), labels, num_classes, 2)


def _quantile_edges(t: torch.Tensor, bins: int) -> torch.Tensor:
    """Equal-frequency bin edges of every column of t (N, C): (bins - 1, C), ``torch.quantile`` linear."""
    q = torch.arange(1, bins, dtype=torch.float64, device=t.device) / bins
    n = max(1, t.shape[0])
    step = max(1, _QUANTILE_CHUNK // n)
    parts = [torch.quantile(t[:, i : i + step], q, dim=0) for i in range(0, t.shape[1], step)]
    return torch.cat(parts, dim=1)


def _width_edges(t: torch.Tensor, bins: int) -> torch.Tensor:
    """Equal-width bin edges over the whole layer's range of t (N, C): (bins - 1, C), one grid for all units."""
    lo, hi = (t.min(), t.max()) if t.numel() else (t.new_zeros(()), t.new_zeros(()))
    j = torch.arange(1, bins, dtype=torch.float64, device=t.device) / bins
    return (lo + j * (hi - lo)).unsqueeze(1).expand(bins - 1, t.shape[1])


def _quantize(t: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Q(t) = number of edges strictly below t (ties go to the lower bin): (N, C) int64."""
    q = torch.zeros(t.shape, dtype=torch.int64, device=t.device)
    for e in edges:  # bins - 1 edges: a short loop, no (N, C, bins) tensor
        q += (t > e).long()
    return q


def _joint_counts(q: torch.Tensor, labels: torch.Tensor, num_classes: int, levels: int) -> torch.Tensor:
    """(N, C) levels in [0, levels), (N,) labels -> (C, K, levels) int64 counts."""
    c = q.shape[1]
    cell = labels.unsqueeze(1) * levels + q  # (N, C) in [0, K * levels)
    flat = cell + torch.arange(c, device=q.device).unsqueeze(0) * (num_classes * levels)
    counts = torch.bincount(flat.flatten(), minlength=c * num_classes * levels)
    return counts.view(c, num_classes, levels)


def _plogp_sum(p: torch.Tensor, dim: int | tuple[int, ...]) -> torch.Tensor:
    """sum p log p over ``dim`` with 0 log 0 = 0."""
    return torch.xlogy(p, p).sum(dim=dim)


def _entropy(joint: torch.Tensor) -> torch.Tensor:
    """H(T) from (C, K, L) counts."""
    p = joint.double() / joint.sum(dim=(1, 2), keepdim=True).double()
    return -_plogp_sum(p.sum(dim=1), -1)


def _mutual_information(joint: torch.Tensor) -> torch.Tensor:
    """I(T;Y) = H(T) - H(T|Y), H(T|Y) = H(Y,T) - H(Y), from (C, K, L) counts."""
    p = joint.double() / joint.sum(dim=(1, 2), keepdim=True).double()
    h_t = -_plogp_sum(p.sum(dim=1), -1)
    h_t_given_y = -_plogp_sum(p, (1, 2)) + _plogp_sum(p.sum(dim=2), -1)
    return (h_t - h_t_given_y).clamp_min(0.0)


def _kl_selectivity(joint: torch.Tensor) -> torch.Tensor:
    """max over classes with images of D_KL(P(T|Y=y) || P(T)), from (C, K, L) counts."""
    n = joint.double()
    n_y = n.sum(dim=2, keepdim=True)  # (C, K, 1)
    p_t = (n.sum(dim=1, keepdim=True) / n.sum(dim=(1, 2), keepdim=True))  # (C, 1, L)
    p_t_given_y = torch.where(n_y > 0, n / n_y.clamp_min(1.0), torch.zeros_like(n))
    kl = (torch.xlogy(p_t_given_y, p_t_given_y) - torch.xlogy(p_t_given_y, p_t)).sum(dim=2)  # (C, K)
    return kl.max(dim=1).values.clamp_min(0.0)  # empty classes give 0, never above a real maximum


def _labeled_mi(joint: torch.Tensor) -> torch.Tensor:
    """max_y I(T; 1[Y=y]) from (C, K, L) counts (the one-vs-rest table of each class, from integers)."""
    n_tot = joint.sum(dim=(1, 2), keepdim=True).double()  # (C, 1, 1)
    in_y = joint.double() / n_tot  # P(Z=1, T), per class y: (C, K, L)
    out_y = (joint.sum(dim=1, keepdim=True) - joint).double() / n_tot  # P(Z=0, T)
    p_t = joint.sum(dim=1).double() / n_tot.squeeze(2)  # (C, L)
    h_t = -_plogp_sum(p_t, -1).unsqueeze(1)  # (C, 1)
    z1 = joint.sum(dim=2).double() / n_tot.squeeze(2)  # P(Z=1): (C, K)
    z0 = (joint.sum(dim=(1, 2)).unsqueeze(1) - joint.sum(dim=2)).double() / n_tot.squeeze(2)
    h_zt = -(_plogp_sum(in_y, -1) + _plogp_sum(out_y, -1))  # H(Z, T): (C, K)
    h_z = -(torch.xlogy(z1, z1) + torch.xlogy(z0, z0))
    return (h_t - (h_zt - h_z)).max(dim=1).values.clamp_min(0.0)


#: measure name -> function of the (C, K, L) joint counts.
_MEASURES = {
    "entropy": _entropy,
    "mutual_information": _mutual_information,
    "kl_selectivity": _kl_selectivity,
    "labeled_mi": _labeled_mi,
}


def _information_compute(joint: torch.Tensor, measure: str) -> torch.Tensor:
    """(C, K, L) joint counts of (class, level) -> (C,) float64 importance of ``measure``."""
    return _MEASURES[measure](joint) + 0.0  # + 0.0 turns -0.0 into 0.0


def _check_quantizer(
    quantizer: object, threshold: object, bins: object, allowed: tuple[str, ...]
) -> tuple[str, float | None, int | None]:
    """Validate a quantizer / threshold / bins combination; return it (threshold as float)."""
    check_choice("quantizer", quantizer, allowed)
    if threshold is not None:
        if quantizer != "threshold":
            raise ConfigError(f"threshold={threshold!r} is only used with quantizer='threshold'; got quantizer={quantizer!r}")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise ConfigError(f"threshold={threshold!r} is not allowed; it must be a finite number")
        threshold = float(threshold)
    elif quantizer == "threshold" and "auto" not in allowed:
        raise ConfigError("quantizer='threshold' needs threshold= (a finite number); got None")
    if bins is not None:
        if quantizer not in _BINNED:
            raise ConfigError(
                f"bins={bins!r} is only used with quantizer='quantile' or 'width'; got quantizer={quantizer!r}"
            )
        check_positive_int("bins", bins, minimum=2)
    elif quantizer in _BINNED:
        raise ConfigError(f"quantizer={quantizer!r} needs bins= (an integer >= 2); got None")
    return quantizer, threshold, bins  # type: ignore[return-value]


def _activation_threshold(layer: PrunableLayer) -> float | None:
    """The default 1-bit threshold after ``layer.activation`` (0.5 sigmoid-like, 0 ReLU-like), else None."""
    for types, value in _ACTIVATION_THRESHOLDS:
        if isinstance(layer.activation, types):
            return value
    return None


# ------------------------------------------------------------------------------------------------
# the registered criteria
# ------------------------------------------------------------------------------------------------
@register_criterion("apoz")
class APoZ(ActivationCriterion):
    """APoZ (Hu et al. 2016): importance = 1 - fraction of exact zeros of the post-ReLU map.

    Over all scored images and positions; the literature's "high APoZ = prune" is inverted here.
    Does not use the labels. See :class:`APoZMetric`.

    Example::

        >>> import torch, lightprune as lp
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8, 2))
        >>> batches = [(torch.randn(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]))]
        >>> lp.score(net, "apoz", batches, progress=False)["0"].shape
        torch.Size([2])
    """

    needs_labels = False

    def make_state(self, layer: PrunableLayer, num_classes: int | None) -> APoZMetric:
        return APoZMetric(layer.out_channels)


@register_criterion("class_selectivity")
class ClassSelectivity(ActivationCriterion):
    """Class selectivity (Morcos et al. 2018): ``(a_max - a_rest) / (a_max + a_rest + 1e-12)``.

    ``a_c`` = mean over images of class c of the unit's spatially averaged map. Classes without a
    scored image are excluded (at least 2 classes need images). Needs labels and ``num_classes``
    (``lp.score`` infers it from the labels when not given). See :class:`ClassSelectivityMetric`.

    Raises:
        ConfigError: ``num_classes`` missing or < 2 (at :meth:`make_state`); labels out of range.

    Example::

        >>> import torch, lightprune as lp
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8, 2))
        >>> batches = [(torch.randn(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]))]
        >>> lp.score(net, "class_selectivity", batches, num_classes=2, progress=False)["0"].shape
        torch.Size([2])
    """

    needs_labels = True

    def make_state(self, layer: PrunableLayer, num_classes: int | None) -> ClassSelectivityMetric:
        return ClassSelectivityMetric(layer.out_channels, _check_num_classes(num_classes, f"criterion {self.name!r}"))


class _InformationCriterion(ActivationCriterion):
    """Shared base of the four information criteria: quantiser options, one :class:`InformationMetric`.

    Args:
        quantizer: ``"auto"`` (default: conv units :attr:`conv_auto` — 1 bit at the unit's median,
            except ``entropy``: 8 equal-width bins over the layer's range; Linear neurons 1 bit at 0
            after ReLU-like / zero-centred activations, at 0.5 after Sigmoid / Hardsigmoid, at the
            median otherwise), ``"median"``, ``"threshold"``, ``"quantile"`` (equal-frequency bins
            per unit) or ``"width"`` (equal-width bins over the layer's range).
        threshold: threshold of ``quantizer="threshold"``; default None = the activation's default
            above (a layer whose activation has none is then an error).
        bins: number of bins of ``quantizer="quantile"`` / ``"width"`` (required there), >= 2.

    Raises:
        ConfigError: ``quantizer`` not in ``("auto", "median", "threshold", "quantile")``;
            ``threshold`` not a finite number, or given with another quantizer; ``bins`` < 2,
            missing with ``"quantile"``, or given with another quantizer.
    """

    measure: ClassVar[str] = ""
    #: (quantizer, threshold, bins) of a conv unit under ``quantizer="auto"``.
    conv_auto: ClassVar[tuple[str, float | None, int | None]] = ("median", None, None)

    def __init__(self, quantizer: str = "auto", threshold: float | None = None, bins: int | None = None) -> None:
        self.quantizer, self.threshold, self.bins = _check_quantizer(quantizer, threshold, bins, _QUANTIZERS)

    def resolve_quantizer(self, layer: PrunableLayer) -> tuple[str, float | None, int | None]:
        """The concrete (quantizer, threshold, bins) used for ``layer`` (``"auto"`` resolved)."""
        if self.quantizer == "auto":
            if layer.kind != "linear":
                return self.conv_auto
            default = _activation_threshold(layer)
            return ("median", None, None) if default is None else ("threshold", default, None)
        if self.quantizer == "threshold" and self.threshold is None:
            default = _activation_threshold(layer)
            if default is None:
                act = type(layer.activation).__name__ if layer.activation is not None else "no activation"
                raise ConfigError(
                    f"quantizer='threshold' without threshold= uses the activation's default threshold, but layer "
                    f"{layer.name!r} is followed by {act}, which has none; pass threshold="
                )
            return "threshold", default, None
        return self.quantizer, self.threshold, self.bins

    def make_state(self, layer: PrunableLayer, num_classes: int | None) -> InformationMetric:
        if self.needs_labels:
            num_classes = _check_num_classes(num_classes, f"criterion {self.name!r}")
        else:
            num_classes = None
        quantizer, threshold, bins = self.resolve_quantizer(layer)
        return InformationMetric(
            layer.out_channels, num_classes, self.measure, quantizer=quantizer, threshold=threshold, bins=bins
        )


@register_criterion("entropy")
class Entropy(_InformationCriterion):
    """Entropy H(T) of the quantised unit output (Liu, Amjad & Geiger). Higher = more important.

    Does not use the labels. Quantiser options: see :class:`_InformationCriterion` (Args) and
    :class:`InformationMetric`.

    **Default for conv units: 8 equal-width bins over the layer's range** (``quantizer="width",
    bins=8`` on the spatial means t of all units of the layer). The per-unit median (the default of
    the label-based measures) splits every unit's own scoring set in half, so H(T) = log 2 for every
    unit whose output is not constant: entropy would rank nothing (measured on cifar_vgg11 and
    digits: 3 of the first 4 conv layers exactly flat). One grid for the whole layer makes H(T)
    measure how widely a unit's output spreads on the layer's scale: a dead or constant unit gets 0,
    a unit using the layer's whole range up to log 8. 8 bins (3 bits): with the default 100 images
    per class the plug-in bias (L - 1) / 2N of H stays below 0.004 nats on 10 classes.
    Linear neurons keep the 1-bit activation threshold of the paper (0 after ReLU, 0.5 after sigmoid).

    Example::

        >>> import torch, lightprune as lp
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8, 2))
        >>> batches = [(torch.randn(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]))]
        >>> lp.score(net, "entropy", batches, progress=False)["0"].shape  # conv: 8 equal-width bins, <= log 8
        torch.Size([2])
    """

    measure = "entropy"
    needs_labels = False
    conv_auto = ("width", None, _ENTROPY_CONV_BINS)


@register_criterion("mutual_information")
class MutualInformation(_InformationCriterion):
    """Mutual information I(T;Y) = H(T) - H(T|Y) of quantised unit output and class (Liu, Amjad & Geiger).

    Needs labels and ``num_classes``. Quantiser options: see :class:`_InformationCriterion`.

    Example::

        >>> import torch, lightprune as lp
        >>> crit = lp.create_criterion("mutual_information", quantizer="quantile", bins=4)
        >>> crit.hparams()
        {'quantizer': 'quantile', 'threshold': None, 'bins': 4}
    """

    measure = "mutual_information"
    needs_labels = True


@register_criterion("kl_selectivity")
class KLSelectivity(_InformationCriterion):
    """KL selectivity max_y D_KL(P(T|Y=y) || P(T)) (Liu, Amjad & Geiger), over classes with images.

    Needs labels and ``num_classes``. Quantiser options: see :class:`_InformationCriterion`.

    Example::

        >>> import lightprune as lp
        >>> lp.create_criterion("kl_selectivity", quantizer="threshold", threshold=0.5)
        KLSelectivity(quantizer='threshold', threshold=0.5, bins=None)
    """

    measure = "kl_selectivity"
    needs_labels = True


@register_criterion("labeled_mi")
class LabeledMI(_InformationCriterion):
    """Labeled mutual information max_y I(T; 1[Y=y]) (Liu, Amjad & Geiger).

    Needs labels and ``num_classes``. Quantiser options: see :class:`_InformationCriterion`.

    Example::

        >>> import lightprune as lp
        >>> lp.create_criterion("labeled_mi").needs_labels
        True
    """

    measure = "labeled_mi"
    needs_labels = True
