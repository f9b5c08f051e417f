"""Analyses of trained networks: cumulative ablation, rescaling / randomness audits, layer analysis.

Python API::

    from lightprune.analysis import (cumulative_ablation, rescaling_audit, randomness_audit,
                                     layer_analysis, FeatureEntropyMonitor, generalization_experiment)

Command line (``lightprune analyze <subcommand> --help``)::

    lightprune analyze ablation   --ckpt model.ckpt --layers features.3 --criteria '[l1, feature_entropy]'
    lightprune analyze rescale    --ckpt model.ckpt --layer features.3
    lightprune analyze randomness --ckpt model.ckpt --layer features.3
    lightprune analyze layers     --ckpt model.ckpt
    lightprune analyze generalization --seeds '[0, 1, 2]'   # trains networks on shuffled labels

Definitions and how to read the outputs: docs/analysis.md.
"""

from __future__ import annotations

from ._common import reinitialize
from .ablation import (
    ORDER_ALIASES,
    ORDERS,
    SCOPES,
    AblationResult,
    ablate_channels,
    ablation_order,
    canonical_order,
    cumulative_ablation,
)
from .audit import (
    BN_MODES,
    CONDITIONS,
    DEFAULT_AUDIT_CRITERIA,
    REINIT_SCOPES,
    AuditResult,
    randomness_audit,
    rescaling_audit,
    scaled_copy,
)
from .generalization import (
    GeneralizationResult,
    ShuffledLabelsDigits,
    generalization_experiment,
    shuffle_labels,
)
from .layers import FeatureEntropyMonitor, LayerAnalysisResult, feature_entropy_stats, layer_analysis

__all__ = [
    "main",
    "cumulative_ablation",
    "AblationResult",
    "ablate_channels",
    "ablation_order",
    "ORDERS",
    "ORDER_ALIASES",
    "canonical_order",
    "SCOPES",
    "rescaling_audit",
    "randomness_audit",
    "scaled_copy",
    "AuditResult",
    "CONDITIONS",
    "BN_MODES",
    "REINIT_SCOPES",
    "DEFAULT_AUDIT_CRITERIA",
    "layer_analysis",
    "feature_entropy_stats",
    "LayerAnalysisResult",
    "FeatureEntropyMonitor",
    "generalization_experiment",
    "GeneralizationResult",
    "ShuffledLabelsDigits",
    "shuffle_labels",
    "reinitialize",
]


def main(argv: list[str] | None = None) -> None:
    """``lightprune analyze <subcommand> ...`` (``argv`` starts after ``analyze``); see :mod:`.cli`."""
    from .cli import main as _main

    _main(argv)
