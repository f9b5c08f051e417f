"""lightprune: structured (channel) pruning and fine-tuning of CNNs with PyTorch Lightning."""

from . import errors, topology
from .criteria import Criterion, Scores, create_criterion, list_criteria, register_criterion, score
from .errors import ConfigError, LightpruneError, UnknownNameError
from .export import export
from .models import create_model, list_models
from .module import ClassificationModule
from .planner import Plan, plan
from .surgery import PruneReport, prune, restore

__version__ = "0.1.0"

__all__ = [
    "ClassificationModule",
    "Plan",
    "PruneReport",
    "plan",
    "prune",
    "restore",
    "export",
    "Criterion",
    "Scores",
    "create_criterion",
    "list_criteria",
    "register_criterion",
    "score",
    "ConfigError",
    "LightpruneError",
    "UnknownNameError",
    "create_model",
    "errors",
    "topology",
    "list_models",
    "__version__",
]
