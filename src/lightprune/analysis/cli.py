"""``lightprune analyze <subcommand>``: the analyses from the command line (jsonargparse, the same
style as ``lightprune compare``: every option typed and documented, ``--config`` YAML files,
``--print_config``).

    lightprune analyze ablation   --ckpt model.ckpt --layers '[features.3]' --criteria '[l1, feature_entropy]'
    lightprune analyze rescale    --ckpt model.ckpt --layer features.3
    lightprune analyze randomness --ckpt model.ckpt --layer features.3 --repeats 20
    lightprune analyze layers     --ckpt model.ckpt
    lightprune analyze generalization --seeds '[0, 1, 2]'     # trains its own networks (no --ckpt)
    lightprune analyze ablation --config ablation.yaml          # the same options in a YAML file
    lightprune analyze ablation --ckpt model.ckpt --print_config # a complete config to start from

Every subcommand but ``generalization`` (which trains its own networks on digits with shuffled
labels) loads a :class:`~lightprune.ClassificationModule` checkpoint, builds the data
module (digits by default, with the image size / channels / class count stored in the
checkpoint), writes its tables (CSV + markdown) and plot (PNG) to ``out`` and prints the
markdown table. Bad input ends with ``error: ...`` naming the argument, the value and what is
allowed (exit status 2).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, LightpruneError, check_choice, check_positive_int

__all__ = ["main", "build_parser", "parse", "run", "load_checkpoint", "build_datamodule", "SUBCOMMANDS"]

DATASETS = ("digits", "cifar10", "cifar100")
DEFAULT_OUT = "runs/analysis"


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------
def load_checkpoint(path: str | Path | None, device: str = "cpu"):
    """A :class:`~lightprune.ClassificationModule` from a Lightning checkpoint, in eval mode."""
    from ..module import ClassificationModule

    if path is None:
        raise ConfigError("ckpt=None: give the ClassificationModule checkpoint (.ckpt) of the trained network")
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"ckpt={str(path)!r} is not allowed; no such file")
    try:
        module = ClassificationModule.load_from_checkpoint(str(p), map_location=device)
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        raise ConfigError(
            f"ckpt={str(path)!r} could not be loaded as a ClassificationModule checkpoint: {err}"
        ) from None
    return module.eval()


def build_datamodule(options: Mapping[str, Any], hparams: Mapping[str, Any]):
    """The data module named by ``options["data"]`` (digits geometry from ``hparams`` unless set)."""
    from ..data import CIFAR10DataModule, CIFAR100DataModule, DigitsDataModule

    check_choice("data", options["data"], DATASETS)
    if options["data"] == "digits":
        size = options.get("image_size") or hparams.get("image_size") or 32
        channels = options.get("channels") or hparams.get("in_channels") or 3
        dm = DigitsDataModule(
            image_size=size, channels=channels, batch_size=options["batch_size"], seed=options["data_seed"]
        )
    else:
        cls = CIFAR10DataModule if options["data"] == "cifar10" else CIFAR100DataModule
        dm = cls(
            data_dir=options["data_dir"], batch_size=options["batch_size"], seed=options["data_seed"], num_workers=0
        )
    nc = hparams.get("num_classes")
    if nc is not None and nc != dm.num_classes:
        raise ConfigError(
            f"data={options['data']!r} has {dm.num_classes} classes but the checkpoint's model has num_classes={nc}"
        )
    return dm


def _random_model(module, seed: int):
    """A fresh network of the checkpoint's architecture (the model factory's own init), or None."""
    from ..models import create_model

    hp = dict(module.hparams)
    name = hp.get("model")
    if not isinstance(name, str):
        return None
    torch.manual_seed(seed)
    net = create_model(
        name,
        hp.get("num_classes", 10),
        in_channels=hp.get("in_channels", 3),
        **(hp.get("model_kwargs") or {}),
    )
    mine, theirs = net.state_dict(), module.model.state_dict()
    if mine.keys() != theirs.keys() or any(mine[k].shape != theirs[k].shape for k in mine):
        return None  # e.g. a pruned network: the caller re-initialises a copy instead
    return net.to(next(module.parameters()).device)


# --------------------------------------------------------------------------------------------
# options: (name, type, default, help), one table per subcommand
# --------------------------------------------------------------------------------------------
def _options() -> dict[str, tuple[str, str, list[tuple[str, Any, Any, str]]]]:
    from .ablation import NORMALIZERS, ORDER_ALIASES, ORDERS, SCOPES
    from .audit import BN_MODES, DEFAULT_AUDIT_CRITERIA, REINIT_SCOPES
    from .generalization import CLASS_LABELS, DEFAULT_LEVELS

    audit_criteria = "criteria (lightprune.list_criteria()); default: " + ", ".join(DEFAULT_AUDIT_CRITERIA)
    ablation = [
        ("layers", list[str] | str | None, None, "layers to ablate, each on its own (scope layer) or ranked together "
         "(scope network); null: every prunable layer"),
        ("criteria", list[str] | str, ["l1", "feature_entropy"], "criteria (lightprune.list_criteria())"),
        ("mode", str, "zero", "what a removed channel outputs: zero, or mean (bias balancing: the mean of what "
         "its consumer receives, as lp.prune(bias_balancing=True))"),
        ("scope", str, "layer", f"one of {', '.join(SCOPES)}: rank within each layer, or all layers together"),
        ("orders", list[str] | str, list(ORDERS), f"removal orders, named by what goes first: a subset of "
         f"{', '.join(ORDERS)} (aliases: {', '.join(ORDER_ALIASES)})"),
        ("random_orders", int, 3, "random permutations averaged (0: none)"),
        ("step", int | None, None, "channels removed per step (null: 1 layer-wise, total/50 whole-network)"),
        ("max_fraction", float, 1.0, "stop after removing this fraction of the channels, in (0, 1]"),
        ("normalize", str, "minmax", f"per-layer normalisation for scope network: {', '.join(NORMALIZERS)}"),
        ("class_specific", bool, False, "also rank per class and report the class-specific per-class gain"),
        ("seed", int, 0, "seed of the random orders and of random_rescale"),
        ("random_rescale", tuple[float, float] | None, None, "[lo, hi], e.g. [0.5, 1.5]: every scoring and "
         "test image multiplied by its own random factor from [lo, hi] (seeded; the paper's A.7); null: none"),
        ("max_images", int, 2048, "images per forward pass (configurations of one batch are stacked up to it)"),
    ]
    rescale = [
        ("layer", str | None, None, "the layer whose filters are scaled (its scores fill the table). Required"),
        ("criteria", list[str] | str, list(DEFAULT_AUDIT_CRITERIA), audit_criteria),
        ("scale", float, 0.5, "the factor"),
        ("bn", str, "auto", f"one of {', '.join(BN_MODES)}: fold adapts the running statistics of the BatchNorm "
         "after a scaled tensor (what its re-normalisation learns), keep leaves them, auto folds when the "
         "network has a BatchNorm (nothing to do on a BatchNorm-free network)"),
        ("layers", list[str] | str | None, None, "layers scored (null: every prunable layer)"),
        ("test", bool, True, "also report the test accuracy of each condition"),
    ]
    randomness = [
        ("layer", str | None, None, "the layer whose scores are compared. Required"),
        ("criteria", list[str] | str, list(DEFAULT_AUDIT_CRITERIA), audit_criteria),
        ("repeats", int, 100, "random networks (100: the feature-entropy paper's sample size)"),
        ("reinit", str, "model", f"one of {', '.join(REINIT_SCOPES)}: whole randomly initialised networks, or "
         "the trained network with only that layer re-initialised"),
        ("seed", int, 0, "random network i is drawn with seed + i"),
        ("test", bool, True, "also report the test accuracy of each network"),
    ]
    layers = [
        ("layers", list[str] | str | None, None, "layers (null: every prunable layer)"),
        ("p", float, 0.1, "selective-rate threshold"),
        ("seed", int, 0, "seed of the random initialisation"),
    ]
    generalization = [
        ("model", str, "cifar_vgg11", "zoo model trained at every level (lightprune.list_models())"),
        ("model_kwargs", dict | None, None, "its keyword arguments (null: {width_mult: 0.125} for cifar_vgg11)"),
        ("levels", list[float], list(DEFAULT_LEVELS), "fractions of the training labels shuffled"),
        ("seeds", list[int], [0], "training seeds: one network per (level, seed)"),
        ("epochs", int, 30, "training epochs (Adam, no augmentation, no weight decay)"),
        ("steps", int | None, None, "optimizer steps instead of epochs (smoke runs)"),
        ("lr", float, 1e-3, "Adam learning rate"),
        ("batch_size", int, 64, "training batch size"),
        ("image_size", int, 32, "digits image side"),
        ("channels", int, 1, "digits channels, 1 or 3"),
        ("data_seed", int, 0, "seed of the data split and of the scoring draw (the same for every network)"),
        ("samples_per_class", int, 50, "training images per class for the feature entropy"),
        ("class_labels", str, "true", f"one of {', '.join(CLASS_LABELS)}: the labels that group the scoring "
         "images into classes (true: the same groups for every network)"),
        ("layers", list[str] | None, None, "layers (null: every prunable layer with maps of at least 3x3)"),
        ("p", float, 0.1, "selective-rate threshold"),
        ("accelerator", str, "cpu", "Lightning accelerator of the training"),
        ("out", str | None, None, f"output folder, one sub-folder per network (resumable; null: {DEFAULT_OUT}/generalization)"),
        ("plot", bool, True, "also write the PNG plot"),
        ("progress", bool, True, "show progress bars (stderr)"),
    ]
    return {
        "ablation": (
            "cumulative ablation curves (accuracy, loss, per-class balanced accuracy) per criterion",
            "Remove channels one by one in the orders of each criterion (and random orders) by zeroing their "
            "post-activation output (mode zero) or replacing it by the bias-balancing value (mode mean); weights "
            "are never modified. Records test accuracy, loss and per-class balanced accuracy after each step.",
            ablation,
        ),
        "rescale": (
            "rescaling audit: criteria with inputs and/or one layer's filters scaled",
            "Each criterion on the network as it is, with the inputs scaled, with one layer's filters (weight and "
            "bias) scaled, and both.",
            rescale,
        ),
        "randomness": (
            "randomness audit: criteria of a trained layer vs randomly initialised networks",
            "The criteria of one layer in the trained network and in randomly initialised networks of the same "
            "architecture (reinit model, default; reinit layer: only that layer re-initialised); mean (std) over "
            "the random networks.",
            randomness,
        ),
        "layers": (
            "mean feature entropy and selective rate per layer, trained vs randomly initialised",
            "Feature entropy and selective rate (means over units and classes) of every layer with maps of at "
            "least 3x3, for the trained network and a randomly initialised one of the same architecture.",
            layers,
        ),
        "generalization": (
            "feature entropy on training data of networks trained with 0-100 % shuffled labels (paper Fig. 6)",
            "Train the same network on digits with each fraction of the training labels shuffled (every chosen "
            "label changes; one network per level and seed), then measure training / test accuracy and the feature "
            "entropy of every layer per class on training images. A finished network is not retrained on a rerun.",
            generalization,
        ),
    }


def _model_and_data(sub: str) -> list[tuple[str, Any, Any, str]]:
    return [
        ("ckpt", str | None, None, "ClassificationModule checkpoint (.ckpt) of the trained network. Required"),
        ("data", str, "digits", f"data set, one of {', '.join(DATASETS)}"),
        ("data_dir", str, "data", "folder of the CIFAR files (nothing is downloaded)"),
        ("image_size", int | None, None, "digits image side (null: the checkpoint's, else 32)"),
        ("channels", int | None, None, "digits channels, 1 or 3 (null: the checkpoint's)"),
        ("data_seed", int, 0, "seed of the data split and of the scoring draw (0, as training)"),
        ("batch_size", int, 128, "batch size of the scoring and test loaders"),
        ("samples_per_class", int, 50, "scoring set: images per class drawn (class-balanced, training split)"),
        ("classes", list[int] | None, None, "classes of the scoring set (null: all)"),
        ("device", str, "cpu", "torch device, e.g. cpu or cuda"),
        ("out", str | None, None, f"output folder (null: {DEFAULT_OUT}/{sub})"),
        ("plot", bool, True, "also write the PNG plot"),
        ("progress", bool, True, "show progress bars (stderr)"),
    ]


#: the analyses, in the order of ``lightprune analyze --help``
SUBCOMMANDS = ("ablation", "rescale", "randomness", "layers", "generalization")


def build_parser():
    """The jsonargparse parser of ``lightprune analyze``: one subparser per analysis, each with its
    own ``--config`` and ``--print_config``; a top-level ``--config`` takes ``<subcommand>:`` sections."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    top = ArgumentParser(
        prog="lightprune analyze",
        description="Analyses of a trained network: cumulative ablation, rescaling and randomness audits, "
        "feature entropy per layer. Each writes CSV + markdown tables and a PNG plot to `out`. "
        "`lightprune analyze <subcommand> --help` lists its options.",
        default_env=False,
    )
    top.add_argument("--config", action=ActionConfigFile, help="a YAML file with <subcommand>: sections")
    subs = top.add_subcommands(required=True, dest="subcommand")
    for sub, (short, description, options) in _options().items():
        p = ArgumentParser(prog=f"lightprune analyze {sub}", description=description, default_env=False)
        p.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of the options below")
        groups = ((sub, options),) if sub == "generalization" else (("model and data", _model_and_data(sub)), (sub, options))
        for title, rows in groups:
            group = p.add_argument_group(title)
            for key, typ, default, text in rows:
                group.add_argument(f"--{key}", type=typ, default=default, help=text)
        subs.add_subcommand(sub, p, help=short)
    return top


def parse(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """``(subcommand, options)`` from the arguments after ``analyze`` (jsonargparse exits on syntax
    and type errors, ``--help`` and ``--print_config``)."""
    ns = build_parser().parse_args(argv)
    sub = ns.subcommand
    options = ns[sub].as_dict()
    options.pop("config", None)
    return sub, options


# --------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------
def run(sub: str, options: Mapping[str, Any]) -> dict[str, Path]:
    """Run analysis ``sub`` with the parsed ``options``; print the markdown table; return the paths written."""
    from .ablation import cumulative_ablation
    from .audit import randomness_audit, rescaling_audit
    from .layers import layer_analysis

    o = dict(options)
    for name in ("batch_size", "samples_per_class"):
        check_positive_int(name, o[name])
    if sub == "generalization":
        return _run_generalization(o)
    if sub in ("rescale", "randomness") and not o.get("layer"):
        raise ConfigError(f"layer={o.get('layer')!r}: give the name of one prunable layer, e.g. --layer features.3")
    out = Path(o["out"] or f"{DEFAULT_OUT}/{sub}")
    module = load_checkpoint(o["ckpt"], o["device"])
    dm = build_datamodule(o, dict(module.hparams))
    common = {"samples_per_class": o["samples_per_class"], "classes": o["classes"], "progress": o["progress"]}
    test = None if not o.get("test", True) else dm
    if sub == "ablation":
        res = cumulative_ablation(
            module, dm, dm, layers=o["layers"], criteria=o["criteria"], mode=o["mode"], scope=o["scope"],
            orders=o["orders"], random_orders=o["random_orders"], step=o["step"], max_fraction=o["max_fraction"],
            normalize=o["normalize"], class_specific=o["class_specific"], seed=o["seed"],
            random_rescale=o["random_rescale"], max_images=o["max_images"], **common,
        )
    elif sub == "rescale":
        res = rescaling_audit(
            module, dm, layer=o["layer"], criteria=o["criteria"], scale=o["scale"], bn=o["bn"], layers=o["layers"],
            test_data=test, **common,
        )
    elif sub == "randomness":
        res = randomness_audit(
            module, dm, layer=o["layer"], criteria=o["criteria"], repeats=o["repeats"], reinit=o["reinit"],
            seed=o["seed"], test_data=test, **common,
        )
    else:
        res = layer_analysis(
            module, dm, layers=o["layers"], random_model=_random_model(module, o["seed"]), seed=o["seed"],
            p=o["p"], **common,
        )
    paths = res.save(out, plot=o["plot"])
    if sub == "ablation":
        text = res.summary_markdown()
        if res.class_gain:
            text += "\n" + Path(paths["class_gain_md"]).read_text()
    else:
        text = res.markdown()
    print(text)
    print("written:")
    for p in paths.values():
        print(f"  {p}")
    return paths


def _run_generalization(o: dict[str, Any]) -> dict[str, Path]:
    from .generalization import generalization_experiment

    out = Path(o.pop("out") or f"{DEFAULT_OUT}/generalization")
    plot = o.pop("plot")
    res = generalization_experiment(out=out, **o)
    paths = res.save(out, plot=plot)
    print(res.markdown())
    print("written:")
    for p in paths.values():
        print(f"  {p}")
    return paths


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``lightprune analyze`` (``argv`` without the ``analyze`` word)."""
    sub, options = parse(list(sys.argv[1:] if argv is None else argv))
    try:
        run(sub, options)
    except LightpruneError as err:
        print(f"lightprune analyze {sub}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
