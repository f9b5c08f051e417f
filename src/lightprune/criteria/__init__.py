"""Channel-scoring criteria behind one registry. Definitions: docs/CRITERIA.md (shared/docs)."""

from . import activations, adapters, nisp, topology, weights  # noqa: F401  (importing registers the criteria)
from .base import (
    ActivationCriterion,
    Criterion,
    Scores,
    WeightCriterion,
    create_criterion,
    criterion_class,
    list_criteria,
    register_criterion,
    stream_states,
)
from .scoring import resolve_criterion, score

__all__ = [
    "ActivationCriterion",
    "Criterion",
    "Scores",
    "WeightCriterion",
    "create_criterion",
    "criterion_class",
    "resolve_criterion",
    "stream_states",
    "list_criteria",
    "register_criterion",
    "score",
]
