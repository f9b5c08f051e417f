"""Channel-scoring criteria behind one registry. Definitions: docs/CRITERIA.md (shared/docs)."""

from . import activations, adapters, nisp, topology, weights  # noqa: F401  (importing registers the criteria)
from .base import (
    ActivationCriterion,
    Criterion,
    Scores,
    WeightCriterion,
    create_criterion,
    list_criteria,
    register_criterion,
)
from .scoring import score

__all__ = [
    "ActivationCriterion",
    "Criterion",
    "Scores",
    "WeightCriterion",
    "create_criterion",
    "list_criteria",
    "register_criterion",
    "score",
]
