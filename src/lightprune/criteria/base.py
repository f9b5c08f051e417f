"""Criterion base classes, the registry, and :class:`Scores`.

A criterion is a small class with one job: turn a network (and, for activation criteria, a
scoring set) into one importance value per output channel of every prunable layer,
**higher = keep**. Three kinds:

- :class:`WeightCriterion`: looks at weights only (``layer_importance(layer)``).
- :class:`ActivationCriterion`: streams the scoring set; for each layer it makes one
  torchmetrics ``Metric`` (:meth:`ActivationCriterion.make_state`) whose ``update(act, labels)``
  receives the layer's post-activation output of one batch and whose ``compute()`` returns the
  importance. States declare their reduction across processes (``dist_reduce_fx``), so under
  DDP every rank ends with the same scores.
- any other :class:`Criterion` overrides :meth:`Criterion.score` (NISP, torch-pruning adapters).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar

import torch
import torchmetrics
from torch import nn

from ..collect import PrunableLayer, capture_activations
from ..data import split_batch
from ..errors import ConfigError, UnknownNameError
from ..evaluation import inference, model_device, progress

__all__ = [
    "Criterion",
    "WeightCriterion",
    "ActivationCriterion",
    "Scores",
    "register_criterion",
    "create_criterion",
    "list_criteria",
    "criterion_class",
    "stream_states",
    "ENTRY_POINT_GROUP",
]

#: the entry-point group through which installed packages add criteria (``name = "pkg.module:Class"``)
ENTRY_POINT_GROUP = "lightprune.criteria"

_REGISTRY: dict[str, type[Criterion]] = {}


def register_criterion(name: str):
    """Class decorator: register a :class:`Criterion` subclass under ``name``.

    Example::

        >>> from lightprune.criteria import WeightCriterion, register_criterion, create_criterion
        >>> @register_criterion("_doc_ones")
        ... class Ones(WeightCriterion):
        ...     def layer_importance(self, layer):
        ...         return torch.ones(layer.out_channels, dtype=torch.float64)
        >>> create_criterion("_doc_ones").name
        '_doc_ones'
    """

    def deco(cls: type[Criterion]) -> type[Criterion]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ConfigError(f"criterion name {name!r} is already registered by {_REGISTRY[name].__name__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


_ENTRY_POINTS_LOADED = False


def _load_entry_points() -> None:
    """Register the criteria that installed packages declare in the ``lightprune.criteria`` entry-point
    group (once per process). An entry point names a Criterion subclass (registered under the entry
    point's name unless it registered itself) or a module whose import registers its criteria."""
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as err:  # noqa: BLE001 - a broken plug-in must not break the registry
            import warnings

            warnings.warn(f"lightprune: the criterion entry point {ep.name!r} ({ep.value}) failed to load: {err}", stacklevel=2)
            continue
        if isinstance(obj, type) and issubclass(obj, Criterion) and obj not in _REGISTRY.values():
            register_criterion(ep.name)(obj)


def list_criteria() -> list[str]:
    """Registered criterion names, sorted (names starting with ``_`` are private and hidden),
    including those of installed packages (entry-point group ``lightprune.criteria``)."""
    _load_entry_points()
    return sorted(n for n in _REGISTRY if not n.startswith("_"))


def criterion_class(name: str) -> type[Criterion]:
    """The class registered under ``name`` (its class attributes declare what it needs).

    Raises:
        UnknownNameError: ``name`` is not registered (the message lists the registered names).
    """
    _load_entry_points()
    if name not in _REGISTRY:
        raise UnknownNameError("criterion", name, list_criteria(), plural="criteria")
    return _REGISTRY[name]


def create_criterion(name: str, **hparams: Any) -> Criterion:
    """Instantiate a registered criterion.

    Raises:
        UnknownNameError: ``name`` is not registered (the message lists the registered names).
        ConfigError: a hyperparameter is not accepted by the criterion.
    """
    cls = criterion_class(name)
    try:
        return cls(**hparams)
    except TypeError as err:
        raise ConfigError(f"bad hyperparameters for criterion {name!r}: {err}") from None


class Criterion:
    """Base class. Subclasses take hyperparameters only in ``__init__`` and validate them there.

    What a criterion needs is declared as data (class attributes), so front ends never special-case
    criteria by name: ``needs_data``, ``needs_labels``, ``needs_batchnorm`` (it can only score layers
    followed by a BatchNorm), ``layer_scores`` (it gives layer-level values, e.g. AFIE, that the
    ``afie`` strategy uses) and ``seeded`` (it takes a ``seed`` hyperparameter).
    """

    name: ClassVar[str] = ""
    #: True when the criterion needs a scoring set (a data loader).
    needs_data: ClassVar[bool] = False
    #: True when it needs the labels of the scoring set as well.
    needs_labels: ClassVar[bool] = False
    #: True when it can only score layers whose output goes through a BatchNorm.
    needs_batchnorm: ClassVar[bool] = False
    #: True when it gives layer-level scores (``Scores.layer_scores``).
    layer_scores: ClassVar[bool] = False
    #: True when it takes a ``seed`` hyperparameter (front ends pass their seed).
    seeded: ClassVar[bool] = False

    def hparams(self) -> dict[str, Any]:
        """Hyperparameters as plain data (stored in :attr:`Scores.meta`)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def score(
        self,
        model: nn.Module,
        layers: dict[str, PrunableLayer],
        batches: Any = None,
        *,
        num_classes: int | None = None,
        progress: bool = False,
    ) -> Scores:
        """Score ``layers`` of ``model``; ``batches`` yields ``(inputs, labels)`` for data criteria."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams().items())
        return f"{type(self).__name__}({args})"


class WeightCriterion(Criterion):
    """A criterion that needs only the weights: implement :meth:`layer_importance`."""

    def layer_importance(self, layer: PrunableLayer) -> torch.Tensor:
        """Return a 1-D float64 tensor of length ``layer.out_channels``."""
        raise NotImplementedError

    def layer_score(self, layer: PrunableLayer) -> float | None:
        """Optional layer-level value (AFIE); None by default."""
        return None

    def score(self, model, layers, batches=None, *, num_classes=None, progress=False) -> Scores:
        with torch.no_grad():
            imp = {n: self.layer_importance(layer).detach().double().cpu() for n, layer in layers.items()}
            ls = {n: self.layer_score(layer) for n, layer in layers.items()}
        layer_scores = {n: float(v) for n, v in ls.items() if v is not None} or None
        return Scores(imp, criterion=self.name, layer_scores=layer_scores, meta={"hparams": self.hparams()})


class ActivationCriterion(Criterion):
    """A criterion computed from streamed post-activation outputs: implement :meth:`make_state`."""

    needs_data = True

    def make_state(self, layer: PrunableLayer, num_classes: int | None) -> torchmetrics.Metric:
        """A fresh torchmetrics ``Metric`` for ``layer``: ``update(act, labels)``, ``compute() -> (C,)``.

        ``act`` is (B, C, H, W) for convs and (B, C) for Linear layers; ``labels`` is (B,) int64.
        """
        raise NotImplementedError

    def score(self, model, layers, batches=None, *, num_classes=None, progress=False) -> Scores:
        states = {n: self.make_state(layer, num_classes) for n, layer in layers.items()}
        seen = stream_states(model, layers, states, batches, progress_bar=progress, desc=f"scoring {self.name}")
        imp = {n: st.compute().detach().double().cpu().reshape(-1) for n, st in states.items()}
        return Scores(imp, criterion=self.name, meta={"hparams": self.hparams(), "num_images": seen})


class Scores(Mapping[str, torch.Tensor]):
    """Per-layer channel importance (higher = keep), as an ordered mapping ``layer name -> (C,) tensor``.

    Attributes:
        criterion: the criterion's registered name.
        layer_scores: layer-level values (AFIE), or None.
        meta: plain-data details (hyperparameters, number of images scored, ...).

    Example::

        >>> s = Scores({"conv": torch.tensor([0.5, 2.0])}, criterion="l1")
        >>> Scores.from_dict(s.to_dict())["conv"].tolist()
        [0.5, 2.0]
    """

    def __init__(
        self,
        scores: Mapping[str, torch.Tensor],
        criterion: str,
        layer_scores: Mapping[str, float] | None = None,
        meta: Mapping[str, Any] | None = None,
        cannot_rank: Iterable[str] = (),
    ) -> None:
        self._scores = {}
        for name, value in scores.items():
            t = torch.as_tensor(value)
            if t.ndim != 1:
                raise ConfigError(f"scores[{name!r}] must be 1-D (one value per channel), got shape {tuple(t.shape)}")
            self._scores[name] = t
        self.criterion = criterion
        self.layer_scores = dict(layer_scores) if layer_scores is not None else None
        self.meta = dict(meta or {})
        self._cannot_rank = [n for n in cannot_rank if n in self._scores]

    @property
    def flat(self) -> list[str]:
        """Layers this criterion cannot rank: every channel has the same score (or the criterion said
        so). The planner would keep channels by index there; the engine's fallback re-scores them.

        Example::

            >>> Scores({"a": torch.tensor([1.0, 1.0]), "b": torch.tensor([0.0, 2.0])}, criterion="x").flat
            ['a']
        """
        out = list(self._cannot_rank)
        for name, v in self._scores.items():
            if name not in out and v.numel() > 1 and bool((v == v[0]).all()):
                out.append(name)
        return [n for n in self._scores if n in out]

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._scores[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._scores)

    def __len__(self) -> int:
        return len(self._scores)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, floats, strings): JSON/YAML-safe and ``torch.load(weights_only=True)``-safe."""
        return {
            "criterion": self.criterion,
            "scores": {k: v.double().tolist() for k, v in self._scores.items()},
            "layer_scores": self.layer_scores,
            "meta": self.meta,
            "cannot_rank": list(self._cannot_rank),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scores:
        """Inverse of :meth:`to_dict`."""
        try:
            scores = {k: torch.tensor(v, dtype=torch.float64) for k, v in data["scores"].items()}
            return cls(scores, data["criterion"], data.get("layer_scores"), data.get("meta"), data.get("cannot_rank") or ())
        except KeyError as err:
            raise ConfigError(f"Scores.from_dict: missing key {err}; expected 'criterion' and 'scores'") from None

    def __repr__(self) -> str:
        rows = [f"Scores(criterion={self.criterion!r}, layers={len(self)})"]
        for name, v in self._scores.items():
            extra = f"  layer_score={self.layer_scores[name]:.4g}" if self.layer_scores and name in self.layer_scores else ""
            rows.append(f"  {name:<32} C={v.numel():<5} min={v.min():.4g} mean={v.mean():.4g} max={v.max():.4g}{extra}")
        return "\n".join(rows)


def stream_states(
    model: nn.Module,
    layers: dict[str, PrunableLayer],
    states: dict[str, torchmetrics.Metric],
    batches: Iterable[Any],
    *,
    progress_bar: bool = False,
    desc: str = "scoring",
) -> int:
    """Run ``batches`` through ``model`` (eval mode, no gradients), feeding each layer's
    post-activation output and the labels to ``states[layer].update``. Returns the local image count.

    Raises:
        ConfigError: a batch is not ``(inputs, labels)`` (or a dict batch), or a layer's activations
            contain NaN or inf (the message names the layer).
    """
    device = model_device(model)
    for st in states.values():
        st.to(device)
    labels: dict[str, torch.Tensor] = {}

    def feed(name: str, act: torch.Tensor) -> None:
        states[name].update(act.detach(), labels["y"])

    seen = 0
    with inference(model), capture_activations(model, layers, feed, check_finite=True):
        for batch in progress(batches, enabled=progress_bar, desc=desc):
            x, y = split_batch(batch)
            labels["y"] = y.to(device)
            model(x.to(device))
            seen += int(x.shape[0])
    return seen
