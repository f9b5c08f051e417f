"""lightprune: structured (channel) pruning and fine-tuning of CNNs with PyTorch Lightning."""

from . import errors
from .errors import ConfigError, LightpruneError, UnknownNameError
from .models import create_model, list_models
from .module import ClassificationModule

__version__ = "0.1.0"

__all__ = [
    "ClassificationModule",
    "ConfigError",
    "LightpruneError",
    "UnknownNameError",
    "create_model",
    "errors",
    "list_models",
    "__version__",
]
