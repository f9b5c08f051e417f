"""``lightprune analyze <subcommand>``: the analyses from the command line.

    lightprune analyze ablation   --ckpt model.ckpt --layer features.3 --criteria l1 feature_entropy
    lightprune analyze rescale    --ckpt model.ckpt --layer features.3
    lightprune analyze randomness --ckpt model.ckpt --layer features.3 --repeats 5
    lightprune analyze layers     --ckpt model.ckpt

Every subcommand loads a :class:`~lightprune.ClassificationModule` checkpoint, builds the data
module (digits by default, with the image size / channels / class count stored in the
checkpoint), writes its tables (CSV + markdown) and plot (PNG) to ``--out`` and prints the
markdown table. Bad input ends with ``error: ...`` naming the argument, the value and what is
allowed (exit status 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, LightpruneError, check_choice

__all__ = ["main", "build_parser", "load_checkpoint", "build_datamodule"]

DATASETS = ("digits", "cifar10", "cifar100")
DEFAULT_OUT = "runs/analysis"


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------
def load_checkpoint(path: str | Path, device: str = "cpu"):
    """A :class:`~lightprune.ClassificationModule` from a Lightning checkpoint, in eval mode."""
    from ..module import ClassificationModule

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


def build_datamodule(args: argparse.Namespace, hparams: dict[str, Any]):
    from ..data import CIFAR10DataModule, CIFAR100DataModule, DigitsDataModule

    check_choice("data", args.data, DATASETS)
    if args.data == "digits":
        size = args.image_size or hparams.get("image_size") or 32
        channels = args.channels or hparams.get("in_channels") or 3
        dm = DigitsDataModule(
            image_size=size, channels=channels, batch_size=args.batch_size, seed=args.data_seed
        )
    else:
        cls = CIFAR10DataModule if args.data == "cifar10" else CIFAR100DataModule
        dm = cls(data_dir=args.data_dir, batch_size=args.batch_size, seed=args.data_seed, num_workers=0)
    nc = hparams.get("num_classes")
    if nc is not None and nc != dm.num_classes:
        raise ConfigError(
            f"data={args.data!r} has {dm.num_classes} classes but the checkpoint's model has num_classes={nc}"
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
# parser
# --------------------------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser, sub: str) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument(
        "--ckpt", required=True, help="ClassificationModule checkpoint (.ckpt) of the trained network"
    )
    g.add_argument(
        "--data", default="digits", help=f"data set, one of {', '.join(DATASETS)} (default: digits)"
    )
    g.add_argument("--data-dir", default="data", help="folder of the CIFAR files (nothing is downloaded)")
    g.add_argument(
        "--image-size", type=int, default=None, help="digits image side (default: the checkpoint's, else 32)"
    )
    g.add_argument(
        "--channels", type=int, default=None, help="digits channels, 1 or 3 (default: the checkpoint's)"
    )
    g.add_argument(
        "--data-seed",
        type=int,
        default=0,
        help="seed of the data split and scoring draw (default 0, as training)",
    )
    g.add_argument(
        "--batch-size", type=int, default=128, help="batch size of the scoring and test loaders (default 128)"
    )
    g.add_argument(
        "--samples-per-class",
        type=int,
        default=50,
        help="scoring images per class, training split (default 50)",
    )
    g.add_argument(
        "--classes", type=int, nargs="+", default=None, help="classes of the scoring set (default: all)"
    )
    g.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    o = p.add_argument_group("output")
    o.add_argument("--out", default=None, help=f"output folder (default: {DEFAULT_OUT}/{sub})")
    o.add_argument("--no-plot", action="store_true", help="write tables only")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    from .ablation import NORMALIZERS, ORDERS, SCOPES
    from .audit import BN_MODES, DEFAULT_AUDIT_CRITERIA

    parser = argparse.ArgumentParser(
        prog="lightprune analyze",
        description="Analyses of a trained network: cumulative ablation, rescaling and randomness audits, "
        "feature entropy per layer. Each writes CSV + markdown tables and a PNG plot to --out.",
    )
    subs = parser.add_subparsers(dest="subcommand", metavar="{ablation,rescale,randomness,layers}")
    subs.required = True

    a = subs.add_parser(
        "ablation",
        help="cumulative ablation curves (accuracy, loss, per-class balanced accuracy) per criterion",
        description="Remove channels one by one in ascending / descending order of importance (and random "
        "orders) by zeroing their post-activation output (--mode zero) or replacing it by its mean over the "
        "scoring set (--mode mean, bias balancing); weights are never modified. Records test accuracy, loss "
        "and per-class balanced accuracy after each step.",
    )
    _common(a, "ablation")
    g = a.add_argument_group("ablation")
    g.add_argument(
        "--layer",
        action="append",
        default=None,
        help="layer to ablate (repeat for several; default: every prunable layer)",
    )
    g.add_argument(
        "--criteria",
        nargs="+",
        default=["l1", "feature_entropy"],
        help="criteria (lightprune.list_criteria()), default: l1 feature_entropy",
    )
    g.add_argument("--mode", default="zero", help="zero (default) or mean")
    g.add_argument(
        "--scope",
        default="layer",
        help=f"one of {', '.join(SCOPES)}: rank within each layer (default) or all layers together",
    )
    g.add_argument(
        "--orders", nargs="+", default=list(ORDERS), help=f"subset of {' '.join(ORDERS)} (default: both)"
    )
    g.add_argument(
        "--random-orders", type=int, default=3, help="random permutations averaged (default 3, 0 = none)"
    )
    g.add_argument(
        "--step",
        type=int,
        default=None,
        help="channels removed per step (default 1 layer-wise, total/50 network)",
    )
    g.add_argument(
        "--max-fraction",
        type=float,
        default=1.0,
        help="stop after removing this fraction, in (0, 1] (default 1)",
    )
    g.add_argument(
        "--normalize",
        default="minmax",
        help=f"per-layer normalisation for --scope network: {', '.join(NORMALIZERS)}",
    )
    g.add_argument(
        "--class-specific",
        action="store_true",
        help="also rank per class and report the class-specific per-class gain",
    )
    g.add_argument("--seed", type=int, default=0, help="seed of the random orders (default 0)")
    g.add_argument("--max-images", type=int, default=2048, help="images per forward pass (default 2048)")

    r = subs.add_parser(
        "rescale",
        help="rescaling audit: criteria with inputs and/or one layer's filters scaled",
        description="Each criterion on the network as it is, with the inputs scaled, with one layer's filters "
        "(weight and bias) scaled, and both. BatchNorm: --bn fold adapts the running statistics of the "
        "BatchNorm after a scaled tensor (what its re-normalisation learns), --bn keep leaves them.",
    )
    _common(r, "rescale")
    g = r.add_argument_group("rescaling audit")
    g.add_argument(
        "--layer", required=True, help="the layer whose filters are scaled (its scores fill the table)"
    )
    g.add_argument(
        "--criteria",
        nargs="+",
        default=list(DEFAULT_AUDIT_CRITERIA),
        help="criteria (default: " + " ".join(DEFAULT_AUDIT_CRITERIA) + ")",
    )
    g.add_argument("--scale", type=float, default=0.5, help="the factor (default 0.5)")
    g.add_argument("--bn", default="fold", help=f"one of {', '.join(BN_MODES)} (default fold)")
    g.add_argument("--layers", nargs="+", default=None, help="layers scored (default: every prunable layer)")
    g.add_argument("--no-test", action="store_true", help="skip the test accuracy of each condition")

    q = subs.add_parser(
        "randomness",
        help="randomness audit: criteria of a trained layer vs random re-initialisations of it",
        description="The criteria of one layer in the trained network and with that layer re-initialised "
        "(--repeats seeds); mean (std) over the re-initialisations.",
    )
    _common(q, "randomness")
    g = q.add_argument_group("randomness audit")
    g.add_argument("--layer", required=True, help="the layer re-initialised")
    g.add_argument(
        "--criteria",
        nargs="+",
        default=list(DEFAULT_AUDIT_CRITERIA),
        help="criteria (default: " + " ".join(DEFAULT_AUDIT_CRITERIA) + ")",
    )
    g.add_argument("--repeats", type=int, default=5, help="re-initialisations (default 5)")
    g.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    g.add_argument("--no-test", action="store_true", help="skip the test accuracy of each network")

    la = subs.add_parser(
        "layers",
        help="mean feature entropy and selective rate per layer, trained vs randomly initialised",
        description="Feature entropy and selective rate (means over units and classes) of every layer with "
        "maps of at least 3x3, for the trained network and a randomly initialised one of the same architecture.",
    )
    _common(la, "layers")
    g = la.add_argument_group("layer analysis")
    g.add_argument("--layers", nargs="+", default=None, help="layers (default: every prunable layer)")
    g.add_argument("--p", type=float, default=0.1, help="selective-rate threshold (default 0.1)")
    g.add_argument("--seed", type=int, default=0, help="seed of the random initialisation (default 0)")
    return parser


# --------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------
def _run(args: argparse.Namespace) -> dict[str, Path]:
    from .ablation import cumulative_ablation
    from .audit import randomness_audit, rescaling_audit
    from .layers import layer_analysis

    for name in ("batch_size", "samples_per_class"):
        if getattr(args, name) < 1:
            raise ConfigError(
                f"--{name.replace('_', '-')}={getattr(args, name)} is not allowed; it must be an integer >= 1"
            )
    out = Path(args.out or f"{DEFAULT_OUT}/{args.subcommand}")
    module = load_checkpoint(args.ckpt, args.device)
    dm = build_datamodule(args, dict(module.hparams))
    progress = not args.no_progress
    common = {"samples_per_class": args.samples_per_class, "classes": args.classes, "progress": progress}
    if args.subcommand == "ablation":
        res = cumulative_ablation(
            module,
            dm,
            dm,
            layers=args.layer,
            criteria=args.criteria,
            mode=args.mode,
            scope=args.scope,
            orders=args.orders,
            random_orders=args.random_orders,
            step=args.step,
            max_fraction=args.max_fraction,
            normalize=args.normalize,
            class_specific=args.class_specific,
            seed=args.seed,
            max_images=args.max_images,
            **common,
        )
        paths = res.save(out, plot=not args.no_plot)
        text = res.summary_markdown()
        if res.class_gain:
            text += "\n" + Path(paths["class_gain_md"]).read_text()
    elif args.subcommand == "rescale":
        res = rescaling_audit(
            module,
            dm,
            layer=args.layer,
            criteria=args.criteria,
            scale=args.scale,
            bn=args.bn,
            layers=args.layers,
            test_data=None if args.no_test else dm,
            **common,
        )
        paths = res.save(out, plot=not args.no_plot)
        text = res.markdown()
    elif args.subcommand == "randomness":
        res = randomness_audit(
            module,
            dm,
            layer=args.layer,
            criteria=args.criteria,
            repeats=args.repeats,
            seed=args.seed,
            test_data=None if args.no_test else dm,
            **common,
        )
        paths = res.save(out, plot=not args.no_plot)
        text = res.markdown()
    else:
        res = layer_analysis(
            module,
            dm,
            layers=args.layers,
            random_model=_random_model(module, args.seed),
            seed=args.seed,
            p=args.p,
            **common,
        )
        paths = res.save(out, plot=not args.no_plot)
        text = res.markdown()
    print(text)
    print("written:")
    for p in paths.values():
        print(f"  {p}")
    return paths


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``lightprune analyze`` (``argv`` without the ``analyze`` word)."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        _run(args)
    except LightpruneError as err:
        print(f"lightprune analyze {args.subcommand}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
