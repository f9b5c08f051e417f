"""Options of ``lightprune compare``: a jsonargparse parser (every option typed and documented, so
``lightprune compare --help`` lists them and ``--print_config`` prints a complete config) and their
validation into a :class:`CompareConfig`.

``recipe`` and ``checkpoint`` in a config file are looked up relative to that file first
(``recipe: quickstart.yaml`` next to ``configs/compare_criteria.yaml``), then relative to the working
directory; ``run_dir`` and every path on the command line are relative to the working directory.
"""

from __future__ import annotations

import inspect
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, check_choice, check_fraction, check_positive_int

__all__ = ["CompareConfig", "Finetune", "build_parser", "parse_config", "COMPARE_STRATEGIES"]

#: Strategies a comparison can use (``manual`` fixes the ratios by hand: nothing left to compare).
COMPARE_STRATEGIES = ("uniform", "afie", "global", "flops", "params", "latency")
SCHEDULES = ("cosine", "constant")


@dataclass
class Finetune:
    """Fine-tuning budget, the same for every (criterion, ratio) pair.

    Args:
        epochs: fine-tuning epochs after pruning (0: no fine-tuning; the "after" accuracy is then
            the accuracy before fine-tuning).
        lr: SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        schedule: learning-rate schedule over the fine-tuning epochs: "cosine" (to 0) or "constant".
        limit_train_batches: training batches per epoch (Lightning's ``limit_train_batches``: a
            fraction of the epoch, or a count when > 1); 1.0 = the whole training split.
        distillation: None, or ``{"alpha": .., "temperature": ..}``: fine-tune with distillation from
            the unpruned base model (``ClassificationModule(distillation=...)``).
        without_distillation: with ``distillation``, also fine-tune a copy without it and report its
            accuracy (``test_acc_no_kd``) beside.
    """

    epochs: int = 3
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    limit_train_batches: float = 1.0
    distillation: dict | None = None
    without_distillation: bool = True


@dataclass
class CompareConfig:
    """Validated options (see :func:`build_parser` for their meaning)."""

    recipe: Path | dict[str, Any]
    run_dir: Path
    checkpoint: Path | None = None
    recipe_overrides: list[str] = field(default_factory=list)
    train_epochs: int | None = None
    criteria: list[str] = field(default_factory=list)
    criterion_hparams: dict[str, dict[str, Any]] = field(default_factory=dict)
    strategy: str = "uniform"
    strategy_options: dict[str, Any] = field(default_factory=dict)
    ratios: list[float] = field(default_factory=lambda: [0.5])
    seed: int = 0
    samples_per_class: int = 100
    scoring_classes: list[int] | None = None
    layers: list[str] | None = None
    exclude: list[str] | None = None
    layer_types: list[str] | None = None
    depth_split: list[float] | None = None
    finetune: Finetune = field(default_factory=Finetune)
    recalibrate_bn: bool = True
    reconstruct: bool = False
    accelerator: str = "cpu"
    threads: int | None = None
    latency_batch_size: int = 64
    latency_runs: int = 10
    save_weights: bool = False
    progress: bool = True
    wandb: bool = True
    wandb_project: str = "lightprune-compare"
    wandb_group: str | None = None
    wandb_entity: str | None = None
    wandb_workspace: bool = False

    @property
    def group(self) -> str:
        """The W&B group (and the name of the comparison): ``wandb_group`` or the run directory's name."""
        return self.wandb_group or self.run_dir.resolve().name

    def to_dict(self) -> dict[str, Any]:
        """Plain data (paths as strings)."""
        out = asdict(self)
        for k in ("recipe", "run_dir", "checkpoint"):
            out[k] = None if out[k] is None or isinstance(out[k], dict) else str(out[k])
        return out


def build_parser():
    """The jsonargparse parser of ``lightprune compare``."""
    from jsonargparse import ActionConfigFile, ArgumentParser
    from jsonargparse.typing import path_type

    with _no_skip_check_warning():
        AnyPath = path_type("f", skip_check=True)  # resolved relative to the config file that names it

    p = ArgumentParser(
        prog="lightprune compare",
        description=(
            "Compare pruning criteria side by side: from one trained checkpoint (trained first from "
            "`recipe` when none is given), each criterion is scored, planned with the same strategy and "
            "ratio, pruned, evaluated, fine-tuned with the same budget and evaluated again. Writes "
            "results.csv, report.md and PNG plots to run_dir, one W&B run per (criterion, ratio). "
            "An interrupted comparison resumes: rerun the same command."
        ),
        default_env=False,
    )
    p.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of the options below")
    p.add_argument(
        "--recipe", type=AnyPath | dict | None, default=None,
        help="LightningCLI fit config (model, data, trainer) of the base model: a YAML path, e.g. "
        "configs/quickstart.yaml, or the same mapping inline. Its data module is the comparison's data, "
        "its model the architecture, its trainer trains the base model when no checkpoint is given "
        "(pruning callbacks of lightprune.callbacks and the logger are dropped: the base model stays "
        "unpruned, logs go to <run_dir>/train). Required",
    )
    p.add_argument(
        "--recipe_overrides", type=list[str], default=[],
        help="extra LightningCLI arguments applied to the recipe, e.g. ['--trainer.max_epochs=2']",
    )
    p.add_argument(
        "--checkpoint", type=AnyPath | None, default=None,
        help="trained checkpoint of the recipe's model (a Lightning .ckpt or a state_dict); "
        "null: <run_dir>/base.ckpt, trained from the recipe first when missing (reruns reuse it)",
    )
    p.add_argument(
        "--train_epochs", type=int | None, default=None,
        help="epochs when training the base model (null: the recipe's trainer.max_epochs)",
    )
    p.add_argument(
        "--run_dir", type=str, default="runs/compare",
        help="output folder (base checkpoint, results, report, W&B runs), relative to the working directory; "
        "rerunning with the same run_dir resumes",
    )
    p.add_argument(
        "--criteria", type=list[str], default=["all"],
        help="criteria to compare (see lightprune.list_criteria()); ['all'] = every registered criterion",
    )
    p.add_argument(
        "--criterion_hparams", type=dict[str, dict[str, Any]], default={},
        help="hyperparameters per criterion, e.g. {feature_entropy: {p: 0.1}, taylor: {precision: model}}",
    )
    p.add_argument(
        "--strategy", type=str, default="uniform",
        help=f"planner strategy, the same for every criterion: one of {', '.join(COMPARE_STRATEGIES)}. "
        "With 'afie' the per-layer ratios come from the AFIE layer scores of the base model (the same "
        "for every criterion) and each criterion ranks the channels inside the layers",
    )
    p.add_argument(
        "--strategy_options", type=dict[str, Any], default={},
        help="extra options of lightprune.plan, e.g. {normalize: rank, max_layer_ratio: 0.8} (global), "
        "{base_strategy: global} (flops), {round_to: 8}",
    )
    p.add_argument(
        "--ratios", type=float | list[float], default=[0.5],
        help="pruning ratio(s) in [0, 1): fraction of channels removed (strategy flops: of MACs); "
        "several give accuracy-vs-ratio curves",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of scoring (random criteria) and of every fine-tuning run")
    p.add_argument(
        "--samples_per_class", type=int, default=100,
        help="scoring set: images per class drawn (class-balanced, from the training split)",
    )
    p.add_argument("--scoring_classes", type=list[int] | None, default=None, help="classes of the scoring set (null: all)")
    p.add_argument(
        "--layers", type=list[str] | None, default=None,
        help="layers to prune (module names or glob patterns), the same for every criterion; null: every prunable layer "
        "(without bn_scale) or every prunable layer followed by a BatchNorm (with bn_scale)",
    )
    p.add_argument("--recalibrate_bn", type=bool, default=True,
                   help="re-estimate BatchNorm statistics right after each prune (on the scoring set); the accuracy "
                   "right after the prune is also reported without it (test_acc_before_ft_no_recovery)")
    p.add_argument("--reconstruct", type=bool, default=False,
                   help="least-squares reconstruction of the layers that lost inputs, right after each prune")
    p.add_argument(
        "--depth_split", type=list[float] | None, default=None,
        help="split points of per-layer criteria 'a+b' (fractions of the layers in execution order; null: equal "
        "parts); the information paper: mutual_information+kl_selectivity with [0.3333]",
    )
    p.add_argument("--exclude", type=list[str] | None, default=None, help="layers not pruned (names or glob patterns)")
    p.add_argument(
        "--layer_types", type=list[str] | None, default=None,
        help="layer types pruned: conv and/or linear (null: both); the papers prune convolutions only",
    )
    p.add_argument("--finetune", type=Finetune, default=Finetune(), help="fine-tuning budget (the same for every pair)")
    p.add_argument(
        "--accelerator", type=str, default="cpu",
        help="Lightning accelerator of evaluation and fine-tuning ('cpu', 'gpu', 'auto'); scoring runs on the same device",
    )
    p.add_argument("--threads", type=int | None, default=None, help="torch CPU threads (null: torch's default)")
    p.add_argument("--latency_batch_size", type=int, default=64, help="batch size of the latency / img/s measurement")
    p.add_argument("--latency_runs", type=int, default=10, help="timed forward passes per latency measurement (median)")
    p.add_argument(
        "--save_weights", type=bool, default=False,
        help="also save each fine-tuned pruned model (<run_dir>/pairs/*.pt: plan + state_dict, reload with lightprune.restore)",
    )
    p.add_argument("--progress", type=bool, default=True, help="show progress bars")
    p.add_argument("--wandb", type=bool, default=True, help="log to Weights & Biases (offline unless WANDB_MODE says otherwise)")
    p.add_argument("--wandb_project", type=str, default="lightprune-compare", help="W&B project")
    p.add_argument("--wandb_group", type=str | None, default=None, help="W&B group of the runs (null: the run_dir's name)")
    p.add_argument("--wandb_entity", type=str | None, default=None, help="W&B entity (null: your default)")
    p.add_argument(
        "--wandb_workspace", type=bool, default=False,
        help="online only: save a W&B workspace view of the group at the end (needs `pip install wandb-workspaces`)",
    )
    return p


def _path(value: Any) -> Path | None:
    """A path option: relative to the config file that names it, else to the working directory."""
    if value is None:
        return None
    rel = getattr(value, "relative", None)
    absolute = getattr(value, "absolute", None)
    if rel is None or absolute is None:
        return Path(str(value)).expanduser().resolve()
    candidates = [Path(absolute), Path(rel).expanduser().resolve()]
    return next((c for c in candidates if c.exists()), candidates[0])


def _plain(value: Any) -> Any:
    """jsonargparse Namespaces -> plain dicts (recursively)."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _criteria(names: list[str]) -> list[str]:
    from ..criteria import list_criteria

    known = list_criteria()
    if not isinstance(names, list) or not names:
        raise ConfigError(f"criteria={names!r} is not allowed; give a non-empty list of: all, {', '.join(known)}")
    if "all" in names:
        if len(names) > 1:
            raise ConfigError(f"criteria={names!r}: 'all' stands alone (it already means every criterion)")
        return known
    out: list[str] = []
    for name in names:
        parts = [p.strip() for p in str(name).split("+")]  # "a+b": per-layer criteria by depth (depth_split)
        for part in parts:
            if part not in known:
                raise ConfigError(
                    f"criteria contains {name!r}, which is not a registered criterion; known criteria: {', '.join(known)} "
                    "(several joined by '+': per-layer criteria by depth)"
                )
        name = "+".join(parts)
        if name in out:
            raise ConfigError(f"criteria contains {name!r} twice")
        out.append(name)
    return out


def validate(ns: Any) -> CompareConfig:
    """Check every option; raise :class:`ConfigError` naming the argument, the value and what is allowed."""
    from ..criteria import create_criterion

    get = ns.get if hasattr(ns, "get") else lambda k, d=None: getattr(ns, k, d)
    raw_recipe = get("recipe")
    if raw_recipe is None:
        raise ConfigError("recipe=None: give the LightningCLI fit config of the base model, e.g. --recipe configs/quickstart.yaml")
    if isinstance(raw_recipe, dict) or hasattr(raw_recipe, "keys") and not hasattr(raw_recipe, "relative"):
        recipe: Path | dict[str, Any] = _plain(raw_recipe)
        for key in ("model", "data"):
            if key not in recipe:
                raise ConfigError(f"recipe (inline) has no {key!r} section; it must be a LightningCLI fit config with model and data")
    else:
        recipe = _path(raw_recipe)
        assert recipe is not None
        if not recipe.is_file():
            raise ConfigError(f"recipe={str(recipe)!r} does not exist; give the path of a LightningCLI fit config (YAML)")
    checkpoint = _path(get("checkpoint"))
    if checkpoint is not None and not checkpoint.is_file():
        raise ConfigError(
            f"checkpoint={str(checkpoint)!r} does not exist; give a trained checkpoint file, or null to train from the recipe"
        )
    criteria = _criteria(list(get("criteria") or []))
    hparams = dict(get("criterion_hparams") or {})
    for name, hp in hparams.items():
        if name not in criteria:
            raise ConfigError(f"criterion_hparams names {name!r}, which is not among the compared criteria: {', '.join(criteria)}")
        if not isinstance(hp, dict):
            raise ConfigError(f"criterion_hparams[{name!r}]={hp!r} is not allowed; give a mapping of hyperparameters")
        if "+" in name:  # per-layer criteria: {part: {hyperparameters}}
            for part, sub in hp.items():
                if part not in name.split("+") or not isinstance(sub, dict):
                    raise ConfigError(
                        f"criterion_hparams[{name!r}] must map each of {name.split('+')} to its hyperparameters; got {part!r}: {sub!r}"
                    )
                create_criterion(part, **sub)
        else:
            create_criterion(name, **hp)  # raises ConfigError on bad hyperparameters
    strategy = get("strategy")
    if strategy == "manual":
        raise ConfigError(
            f"strategy='manual' is not allowed in a comparison (hand-set ratios leave nothing to compare); "
            f"choose one of: {', '.join(COMPARE_STRATEGIES)}"
        )
    check_choice("strategy", strategy, COMPARE_STRATEGIES)
    options = dict(get("strategy_options") or {})
    for bad in ("ratio", "strategy", "example_inputs", "ratios"):
        if bad in options:
            raise ConfigError(f"strategy_options contains {bad!r}, which the comparison sets itself; use --{'ratios' if bad.startswith('ratio') else bad}")
    if options.get("base_strategy") not in (None, "uniform", "global", "afie"):
        check_choice("strategy_options.base_strategy", options["base_strategy"], ("uniform", "global", "afie"))
    raw_ratios = get("ratios")
    ratios = [raw_ratios] if isinstance(raw_ratios, (int, float)) and not isinstance(raw_ratios, bool) else list(raw_ratios or [])
    if not ratios:
        raise ConfigError("ratios=[] is not allowed; give at least one ratio in [0, 1)")
    ratios = [check_fraction(f"ratios[{i}]", r) for i, r in enumerate(ratios)]
    if len(set(ratios)) != len(ratios):
        raise ConfigError(f"ratios={ratios!r} repeats a value")
    samples = check_positive_int("samples_per_class", get("samples_per_class"))
    classes = get("scoring_classes")
    if classes is not None:
        classes = [int(c) for c in classes]
    layers = get("layers")
    ft_raw = get("finetune")
    ft_dict = dict(vars(ft_raw)) if not isinstance(ft_raw, (dict, Finetune)) else (asdict(ft_raw) if isinstance(ft_raw, Finetune) else dict(ft_raw))
    known_ft = set(inspect.signature(Finetune).parameters)
    ft_dict = {k: v for k, v in ft_dict.items() if k in known_ft and not k.startswith("__")}
    ft = Finetune(**ft_dict)
    check_positive_int("finetune.epochs", ft.epochs, minimum=0)
    for key in ("lr", "momentum", "weight_decay"):
        v = getattr(ft, key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ConfigError(f"finetune.{key}={v!r} is not allowed; it must be a number >= 0")
    if not ft.lr > 0:
        raise ConfigError(f"finetune.lr={ft.lr!r} is not allowed; it must be > 0")
    check_choice("finetune.schedule", ft.schedule, SCHEDULES)
    from ..module import check_distillation

    try:
        ft.distillation = check_distillation(ft.distillation)
    except ConfigError as err:
        raise ConfigError(f"finetune.{err}") from None
    if not (isinstance(ft.limit_train_batches, (int, float)) and ft.limit_train_batches > 0):
        raise ConfigError(f"finetune.limit_train_batches={ft.limit_train_batches!r} is not allowed; it must be > 0")
    train_epochs = get("train_epochs")
    if train_epochs is not None:
        check_positive_int("train_epochs", train_epochs)
    threads = get("threads")
    if threads is not None:
        check_positive_int("threads", threads)
    check_choice("accelerator", get("accelerator"), ("cpu", "gpu", "cuda", "auto"))
    run_dir = _path(get("run_dir"))
    assert run_dir is not None
    values: dict[str, Any] = {
        "recipe": recipe, "run_dir": run_dir, "checkpoint": checkpoint,
        "recipe_overrides": [str(a) for a in (get("recipe_overrides") or [])], "train_epochs": train_epochs,
        "criteria": criteria, "criterion_hparams": hparams, "strategy": strategy, "strategy_options": options,
        "ratios": ratios, "seed": int(get("seed")), "samples_per_class": samples, "scoring_classes": classes,
        "layers": list(layers) if layers is not None else None, "exclude": _str_list(get("exclude")),
        "layer_types": _str_list(get("layer_types")),
        "depth_split": [float(f) for f in get("depth_split")] if get("depth_split") is not None else None,
        "finetune": ft, "accelerator": get("accelerator"),
        "recalibrate_bn": bool(get("recalibrate_bn")), "reconstruct": bool(get("reconstruct")),
        "threads": threads, "latency_batch_size": check_positive_int("latency_batch_size", get("latency_batch_size")),
        "latency_runs": check_positive_int("latency_runs", get("latency_runs")), "save_weights": bool(get("save_weights")),
        "progress": bool(get("progress")), "wandb": bool(get("wandb")), "wandb_project": str(get("wandb_project")),
        "wandb_group": get("wandb_group"), "wandb_entity": get("wandb_entity"),
        "wandb_workspace": bool(get("wandb_workspace")),
    }
    return CompareConfig(**values)


@contextmanager
def _no_skip_check_warning():
    # Path types with skip_check are deprecated in jsonargparse but are the only ones that resolve a
    # path relative to the config file naming it without requiring it to exist (we check it ourselves).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="(?s).*skip_check parameter of Path")
        warnings.filterwarnings("ignore", message="(?s).*By default only one JsonargparseDeprecationWarning")
        yield


def parse_config(argv: list[str]) -> CompareConfig:
    """Parse ``lightprune compare`` arguments (jsonargparse exits on syntax/type errors) and validate them."""
    with _no_skip_check_warning():
        ns = build_parser().parse_args(argv)
    return validate(ns)


def _str_list(value: Any) -> list[str] | None:
    """A scalar or a list of strings as a list; None stays None."""
    return None if value is None else ([value] if isinstance(value, str) else [str(v) for v in value])
