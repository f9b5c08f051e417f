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

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import torch
import torchmetrics
from torch import nn

from ..collect import PrunableLayer
from ..errors import ConfigError, UnknownNameError

__all__ = [
    "Criterion",
    "WeightCriterion",
    "ActivationCriterion",
    "Scores",
    "register_criterion",
    "create_criterion",
    "list_criteria",
]

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


def list_criteria() -> list[str]:
    """Registered criterion names, sorted (names starting with ``_`` are private and hidden)."""
    return sorted(n for n in _REGISTRY if not n.startswith("_"))


def create_criterion(name: str, **hparams: Any) -> Criterion:
    """Instantiate a registered criterion.

    Raises:
        UnknownNameError: ``name`` is not registered (the message lists the registered names).
        ConfigError: a hyperparameter is not accepted by the criterion.
    """
    if name not in _REGISTRY:
        raise UnknownNameError("criterion", name, list_criteria(), plural="criteria")
    cls = _REGISTRY[name]
    try:
        return cls(**hparams)
    except TypeError as err:
        raise ConfigError(f"bad hyperparameters for criterion {name!r}: {err}") from None


class Criterion:
    """Base class. Subclasses take hyperparameters only in ``__init__`` and validate them there."""

    name: ClassVar[str] = ""
    #: True when the criterion needs a scoring set (a data loader).
    needs_data: ClassVar[bool] = False
    #: True when it needs the labels of the scoring set as well.
    needs_labels: ClassVar[bool] = False

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
        from .scoring import stream_states

        states = {n: self.make_state(layer, num_classes) for n, layer in layers.items()}
        seen = stream_states(model, layers, states, batches, progress=progress, desc=f"scoring {self.name}")
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
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scores:
        """Inverse of :meth:`to_dict`."""
        try:
            scores = {k: torch.tensor(v, dtype=torch.float64) for k, v in data["scores"].items()}
            return cls(scores, data["criterion"], data.get("layer_scores"), data.get("meta"))
        except KeyError as err:
            raise ConfigError(f"Scores.from_dict: missing key {err}; expected 'criterion' and 'scores'") from None

    def __repr__(self) -> str:
        rows = [f"Scores(criterion={self.criterion!r}, layers={len(self)})"]
        for name, v in self._scores.items():
            extra = f"  layer_score={self.layer_scores[name]:.4g}" if self.layer_scores and name in self.layer_scores else ""
            rows.append(f"  {name:<32} C={v.numel():<5} min={v.min():.4g} mean={v.mean():.4g} max={v.max():.4g}{extra}")
        return "\n".join(rows)
