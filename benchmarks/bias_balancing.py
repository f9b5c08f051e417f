"""Bias balancing (CRITERIA.md "Bias balancing"): pruning hidden units of a small MLP without retraining.

Setup: scikit-learn digits (8 x 8, flattened to 64 features, normalised with the training split's
statistics, :class:`lightprune.data.DigitsDataModule` split), an MLP ``64 -> hidden -> 10`` with
sigmoid or ReLU hidden units, trained full-batch with Adam (fixed seed per run). Then ``ratio`` of
the hidden units are removed (``lp.plan(strategy="uniform")`` + ``lp.prune``) with the given
criterion, once without and once with bias balancing (the removed units' mean over the training
split, the scoring set, is folded into the output layer's bias), **no fine-tuning**. Reported:
test accuracy before pruning, after pruning without / with balancing, mean (std) over the seeds.

Liu, Amjad & Geiger report that balancing helps sigmoid networks and hurts ReLU networks; this
benchmark measures what happens here. Writes the "## Bias balancing" section of docs/benchmarks.md
(between ``<!-- bias-balancing:begin -->`` and ``<!-- bias-balancing:end -->``).

Usage::

    python benchmarks/bias_balancing.py                 # 5 seeds x 3 ratios x 2 criteria x 2 activations (~1 min)
    python benchmarks/bias_balancing.py --seeds 2 --no-write
"""

from __future__ import annotations

import argparse
import copy
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from _doc import replace_section  # noqa: E402  (benchmarks/ is the script's folder)
from torch import nn

import lightprune as lp
from lightprune.data import DigitsDataModule

BEGIN, END = "<!-- bias-balancing:begin -->", "<!-- bias-balancing:end -->"
ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}


def load_digits_flat(seed: int = 0):
    """(x_train, y_train, x_test, y_test), x flattened to 64 features."""
    dm = DigitsDataModule(image_size=8, channels=1, seed=seed)
    dm.setup("fit")
    xtr, ytr = dm.train_set.tensors
    xte, yte = dm.test_set.tensors
    return xtr.flatten(1), ytr, xte.flatten(1), yte


def make_mlp(activation: str, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, hidden), ACTIVATIONS[activation](), nn.Linear(hidden, 10))


def train(net: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float) -> nn.Module:
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    return (net(x).argmax(1) == y).double().mean().item()


def prune_copy(net, criterion: str, ratio: float, balance: bool, xtr, ytr, seed: int) -> nn.Module:
    pruned = copy.deepcopy(net)
    hp = {"seed": seed} if criterion == "random" else {}
    scores = lp.score(pruned, criterion, progress=False, **hp)
    p = lp.plan(pruned, scores, strategy="uniform", ratio=ratio, example_inputs=xtr[:1])
    lp.prune(pruned, p, xtr[:1], bias_balancing=balance, batches=[(xtr, ytr)], measure_latency=False)
    return pruned


def run(args) -> list[dict]:
    xtr, ytr, xte, yte = load_digits_flat(args.split_seed)
    args.n_train, args.n_test = len(ytr), len(yte)
    rows = []
    for act in args.activations:
        per_key: dict[tuple, dict[str, list[float]]] = {}
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            net = train(make_mlp(act, args.hidden), xtr, ytr, args.steps, args.lr)
            acc0 = accuracy(net, xte, yte)
            for crit in args.criteria:
                for ratio in args.ratios:
                    d = per_key.setdefault((crit, ratio), {"before": [], "without": [], "with": []})
                    d["before"].append(acc0)
                    d["without"].append(accuracy(prune_copy(net, crit, ratio, False, xtr, ytr, seed), xte, yte))
                    d["with"].append(accuracy(prune_copy(net, crit, ratio, True, xtr, ytr, seed), xte, yte))
        for (crit, ratio), d in per_key.items():
            wins = sum(b > a for a, b in zip(d["without"], d["with"], strict=True))
            diff = [b - a for a, b in zip(d["without"], d["with"], strict=True)]
            rows.append({"activation": act, "criterion": crit, "ratio": ratio, **d, "wins": wins, "diff": diff})
    return rows


def ms(v: list[float]) -> str:
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    return f"{100 * statistics.mean(v):.1f} ({100 * sd:.1f})"


def render(rows: list[dict], args, argv: list[str], seconds: float) -> str:
    cmd = " ".join(["python", "benchmarks/bias_balancing.py", *map(shlex.quote, argv)])
    lines = [
        "## Bias balancing",
        "",
        f"MLP 64 -> {args.hidden} -> 10 on scikit-learn digits (8 x 8 flattened; `DigitsDataModule` split: "
        f"{args.n_train:,} train / {args.n_test:,} test images), full-batch Adam "
        f"(lr {args.lr}, {args.steps} steps), seeds 0..{args.seeds - 1} (the seed sets the initial weights and the "
        "`random` criterion). A fraction `ratio` of the hidden units is removed (`strategy=\"uniform\"`), "
        "without and with bias balancing (means over the training split), **no fine-tuning**. "
        "Test accuracy in %, mean (std) over the seeds; \"with > without\" counts the seeds where balancing "
        "gave a strictly higher accuracy.",
        "",
        f"CPU ({args.threads} thread), torch {torch.__version__}, Python {platform.python_version()}, {seconds:.0f} s in all.",
        "",
        "Command:",
        "",
        "```",
        cmd,
        "```",
        "",
        "| hidden units | criterion | ratio | before pruning | pruned, without balancing | pruned, with balancing | with - without | with > without |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['activation']} | {r['criterion']} | {r['ratio']:.2f} | {ms(r['before'])} | {ms(r['without'])} |"
            f" {ms(r['with'])} | {ms(r['diff'])} | {r['wins']}/{len(r['diff'])} |"
        )
    lines += ["", "Summary (computed from the table):", ""]
    for act in dict.fromkeys(r["activation"] for r in rows):
        mine = [r for r in rows if r["activation"] == act]
        gains = [statistics.mean(r["diff"]) for r in mine]
        wins = sum(r["wins"] for r in mine)
        runs = sum(len(r["diff"]) for r in mine)
        lines.append(
            f"- {act}: balancing raised the mean accuracy in {sum(g > 0 for g in gains)} of {len(gains)} "
            f"(criterion, ratio) cells, by {100 * statistics.mean(gains):+.1f} points on average "
            f"(range {100 * min(gains):+.1f} to {100 * max(gains):+.1f}); higher in {wins} of {runs} single runs."
        )
    mean_gain = {
        act: statistics.mean(statistics.mean(r["diff"]) for r in rows if r["activation"] == act)
        for act in dict.fromkeys(r["activation"] for r in rows)
    }
    lines += ["", "Liu, Amjad & Geiger find that balancing helps sigmoid networks and hurts ReLU networks."]
    if "sigmoid" in mean_gain:
        lines[-1] += f" Sigmoid here: {'helps' if mean_gain['sigmoid'] > 0 else 'does not help'} on average."
    if "relu" in mean_gain:
        lines[-1] += f" ReLU here: {'hurts' if mean_gain['relu'] < 0 else 'helps as well'} on average"
        if mean_gain["relu"] >= 0:
            lines[-1] += (
                " (presumably because a ReLU unit's mean output is > 0, so removing it shifts every "
                "logit, and the balanced bias restores that shift)"
            )
        lines[-1] += "."
    lines += ["With few units left (ratio 0.75) the stds are large: read those cells as noisy.", ""]
    return "\n".join(lines)


def write_section(path: Path, body: str) -> None:
    replace_section(path, BEGIN, END, body)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="training seeds 0..N-1")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--criteria", nargs="+", default=["l1", "random"])
    parser.add_argument("--activations", nargs="+", default=["sigmoid", "relu"], choices=sorted(ACTIVATIONS))
    parser.add_argument("--hidden", type=int, default=64, help="hidden units")
    parser.add_argument("--steps", type=int, default=300, help="full-batch Adam steps")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the digits train/test split")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (tiny tensors: 1 is fastest)")
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
    )
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing it")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = run(args)
    body = render(rows, args, argv, time.perf_counter() - t0)
    print(body)
    if not args.no_write:
        write_section(args.output, body)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
