"""``lightprune compare``: compare pruning criteria side by side on one trained model.

For each listed criterion, with the same strategy, ratio(s), seed, scoring set and fine-tuning
budget: score (once per criterion, on the base model), plan, prune, evaluate before fine-tuning,
fine-tune, evaluate. Each finished (criterion, ratio) pair is saved at once, so an interrupted run
resumes. Writes ``results.csv``, ``report.md``, ``spearman.csv`` and PNG plots into the run
directory, and one W&B run per pair (offline unless ``WANDB_MODE`` says otherwise) plus a summary
run, all in one group. See docs/compare.md.

Command line::

    lightprune compare --config configs/compare_criteria.yaml
    lightprune compare --config configs/compare_criteria.yaml --criteria '[l1, fpgm]' --ratios '[0.4, 0.6]'
    lightprune compare --help            # every option, typed and documented
    lightprune compare --config configs/compare_criteria.yaml --print_config

From Python::

    from lightprune.compare import parse_config, run_comparison
    rows = run_comparison(parse_config(["--config", "configs/compare_criteria.yaml", "--wandb", "false"]))
"""

from __future__ import annotations

import os
import sys

from ..errors import LightpruneError
from .config import COMPARE_STRATEGIES, CompareConfig, Finetune, build_parser, parse_config
from .report import CSV_COLUMNS, spearman_matrices
from .runner import Comparison, pair_filename, run_comparison
from .wandb_log import PAIR_KEYS, dashboard_spec, save_workspace

__all__ = [
    "COMPARE_STRATEGIES",
    "CSV_COLUMNS",
    "PAIR_KEYS",
    "CompareConfig",
    "Comparison",
    "Finetune",
    "build_parser",
    "dashboard_spec",
    "main",
    "pair_filename",
    "parse_config",
    "run_comparison",
    "save_workspace",
    "spearman_matrices",
]


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``lightprune compare ...`` (``argv``: the arguments after ``compare``)."""
    os.environ.setdefault("WANDB_MODE", "offline")
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_config(argv)
        run_comparison(cfg)
    except LightpruneError as err:
        print(f"lightprune compare: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(
            "\nlightprune compare: interrupted; finished pairs are saved, rerun the same command to resume",
            file=sys.stderr,
        )
        raise SystemExit(130) from None


if __name__ == "__main__":  # pragma: no cover
    main()
