"""Accuracy recovery on digits (issue 12): the `compare` base model (cifar_vgg16 at width 0.25,
trained by configs/compare_criteria.yaml's recipe), pruned uniformly, measured

  A. right after the prune, no fine-tuning, every criterion at 30 / 50 / 70 %: with the default
     recovery (BatchNorm recalibration on the 500-image scoring set) and without;
  B. the same with least-squares reconstruction (+ recalibration) at 30 / 50 %;
  C. after compare's 3-epoch fine-tuning at 50 %, with distillation from the unpruned model and
     without, for l1, fpgm and feature_entropy, as mean and std over fine-tuning seeds.

    python benchmarks/recovery_digits.py                 # prints the markdown section
    python benchmarks/recovery_digits.py --write-docs    # ... and replaces it in docs/benchmarks.md
    python benchmarks/recovery_digits.py --seeds 2       # fewer seeds for part C (quick)
    python benchmarks/recovery_digits.py --parts C       # one part only (the others from their earlier runs)

Accuracies only (no timing): the numbers do not depend on the machine's load. Every part runs
``python -m lightprune.cli compare`` (the same engine as the callbacks; the interpreter running this
script, so ``PYTHONPATH`` picks the code) in its own run directory under ``runs/bench_recovery/``
(one per part, one per seed of part C). Every finished (criterion, ratio) pair is kept there, so an
interrupted run resumes where it stopped and a part left out of ``--parts`` is read back from its
earlier run (its rows are empty when it never ran). The base model is trained once (by whichever
part runs first) and reused by the others.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- recovery:begin -->", "<!-- recovery:end -->"
CRIT_C = ["l1", "fpgm", "feature_entropy"]


def compare(run_dir: Path, *args: str) -> list[dict[str, str]]:
    cmd = [sys.executable, "-m", "lightprune.cli", "compare", "--config", "configs/compare_criteria.yaml",
           "--run_dir", str(run_dir), "--wandb", "false", "--progress", "false", *args]
    print("$", " ".join(shlex.quote(c) for c in cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, env={**os.environ, "WANDB_MODE": "offline"}, check=True)
    return read_rows(run_dir)


def read_rows(run_dir: Path) -> list[dict[str, str]]:
    """The result rows of an earlier run of a part (none when it never finished)."""
    try:
        with open(run_dir / "results.csv") as fh:
            return list(csv.DictReader(fh))
    except OSError:
        return []


def share_scores(src: Path, dst: Path, seed: int, criteria: list[str]) -> None:
    """Give ``dst`` (a part-C run of ``seed``) the scores ``src`` computed for the criteria that do not
    depend on the seed (``criterion_class(c).seeded`` False: their scores are identical for every
    seed), so that each is scored once, not once per seed (feature_entropy: minutes). compare's cache
    key names the seed for every criterion; it is rewritten to ``seed`` here, everything else kept."""
    import json

    from lightprune.criteria import criterion_class

    for c in criteria:
        src_file, dst_file = src / "scores" / f"{c}.json", dst / "scores" / f"{c}.json"
        if criterion_class(c).seeded or not src_file.exists() or dst_file.exists():
            continue
        data = json.loads(src_file.read_text())
        data["fingerprint"]["seed"] = seed
        dst_file.parent.mkdir(parents=True, exist_ok=True)
        dst_file.write_text(json.dumps(data))


def time_reconstruction(base: Path, criterion: str, ratio: float, threads: int | None) -> dict:
    """Time one ``lp.recovery.reconstruct`` of the base model pruned uniformly by ``criterion`` at ``ratio``
    (the prune of part B, without its evaluation), in this process, and size its memory: the largest
    normal-equation system (XᵀX, XᵀY and the sums, float64) and one batch of activations of the
    unpruned network (every leaf module's output, float32), the most that is alive at once."""
    import copy

    import torch

    from lightprune import recovery
    from lightprune.compare.config import parse_config
    from lightprune.compare.runner import Comparison
    from lightprune.engine import plan_for_spec
    from lightprune.surgery import prune

    if threads:
        torch.set_num_threads(threads)
    cfg = parse_config(["--config", str(ROOT / "configs" / "compare_criteria.yaml"), "--checkpoint", str(base),
                        "--run_dir", str(base.parent.parent / "b_timing"), "--criteria", f"[{criterion}]",
                        "--wandb", "false", "--progress", "false"])
    cmp = Comparison(cfg, echo=lambda *a: None)
    cmp.setup()
    model = cmp.base_module.model
    plan = plan_for_spec(model, cmp.get_scores(criterion), cmp._spec(criterion, ratio), cmp.example)
    pruned = copy.deepcopy(model)
    prune(pruned, plan, cmp.example, measure_latency=False, recalibrate_bn=False)
    batches = cmp._scoring().batches
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    fits = recovery.reconstruct(pruned, model, batches, plan=plan)
    seconds = time.perf_counter() - t0
    load1 = os.getloadavg()[0]
    mods = dict(pruned.named_modules())

    def outputs(m):
        return getattr(m, "out_channels", getattr(m, "out_features", 0))

    gram = max(8 * (f.inputs * f.inputs + f.inputs * outputs(mods[n]) + f.inputs + outputs(mods[n])) for n, f in fits.items())
    acts = []
    hooks = [m.register_forward_hook(lambda m, a, o: acts.append(o.numel() * o.element_size()))
             for m in model.modules() if not list(m.children())]
    x = next(iter(batches))[0]
    with torch.inference_mode():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return {"seconds": seconds, "load": (load0, load1), "threads": torch.get_num_threads(), "layers": len(fits),
            "gram_mb": gram / 2**20, "batch": int(x.shape[0]), "activations_mb": sum(acts) / 2**20,
            "rows": max(f.rows for f in fits.values())}


def f(v: str | float | None) -> float:
    return float("nan") if v in (None, "") else float(v)


def parse_parts(text: str) -> set[str]:
    if text.strip().lower() == "none":
        return set()
    parts = {p.strip().upper() for p in text.split(",") if p.strip()}
    if not parts or parts - {"A", "B", "C"}:
        raise SystemExit(f"--parts={text!r}: give a comma-separated subset of A,B,C, or none (only read back)")
    return parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5, help="fine-tuning seeds of part C (default 5)")
    ap.add_argument("--parts", default="A,B,C", help="parts to run (default A,B,C; none: only write the report); the others are read back")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads of every compare run (e.g. 1 on a machine shared with other jobs, where two "
                         "threads contend for the cores); accuracies do not depend on it")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--fresh", action="store_true", help="empty runs/bench_recovery first (retrain the base model)")
    args = ap.parse_args()
    parts = parse_parts(args.parts)
    root = ROOT / "runs" / "bench_recovery"
    if args.fresh and root.exists():
        shutil.rmtree(root)
    base = root / "a_no_ft" / "base.ckpt"
    ckpt = ("--checkpoint", str(base))
    common = ("--threads", str(args.threads)) if args.threads else ()

    def run_or_read(part: str, run_dir: Path, *cargs: str) -> list[dict[str, str]]:
        if part not in parts:
            return read_rows(run_dir)
        if not base.exists() and part != "A":  # train the base model (part A's run directory) first
            compare(base.parent, *common, "--finetune.epochs", "0", "--ratios", "[0.3, 0.5, 0.7]", "--criteria", "[l1]")
        return compare(run_dir, *common, *cargs)

    a_args = ("--finetune.epochs", "0", "--ratios", "[0.3, 0.5, 0.7]")
    rows_a = run_or_read("A", root / "a_no_ft", *a_args)
    rows_b = run_or_read("B", root / "b_reconstruct", *ckpt, "--finetune.epochs", "0", "--ratios", "[0.3, 0.5]",
                         "--reconstruct", "true", "--criteria", "[l1, fpgm, feature_entropy]")
    per_seed = []
    for seed in range(args.seeds):
        if "C" in parts and seed > 0:
            share_scores(root / "c_seed0", root / f"c_seed{seed}", seed, CRIT_C)
        per_seed.append(run_or_read("C", root / f"c_seed{seed}", *ckpt, "--ratios", "[0.5]", "--seed", str(seed),
                                    "--criteria", "[" + ", ".join(CRIT_C) + "]"))
    timing = None
    if "B" in parts:
        timing = time_reconstruction(base, "l1", 0.5, args.threads)
        (root / "b_timing.json").write_text(json.dumps(timing))
    elif (root / "b_timing.json").exists():
        timing = json.loads((root / "b_timing.json").read_text())
    base_acc = next((f(r["base_test_acc"]) for rows in (rows_a, rows_b, *per_seed) for r in rows), float("nan"))

    def row(rows, c, ratio):
        return next((r for r in rows if r["criterion"] == c and float(r["ratio"]) == ratio), None)

    def acc(r, key="test_acc_before_ft"):
        return f"{f(r[key]):.3f}" if r else "-"

    threads = f" --threads {args.threads}" if args.threads else ""
    out = ["## Accuracy recovery after a prune (digits)", "",
           f"Command: `PYTHONPATH=src python benchmarks/recovery_digits.py --write-docs{threads}` (part C over "
           f"{args.seeds} fine-tuning seeds; `--parts A,B,C` reruns some parts, the others are read back from "
           "`runs/bench_recovery/`). Base model: `configs/compare_criteria.yaml`'s recipe (cifar_vgg16, width 0.25, "
           f"12 epochs), test accuracy **{base_acc:.4f}** (360 test images: one image is 0.28 points). Uniform prune; "
           "scoring set (and calibration set of the recovery) 50 training images per class. Part A prunes the 13 convs "
           "(compare leaves the hidden Linear `classifier.0` unpruned for every criterion when `bn_scale`, which needs a "
           "BatchNorm, is compared); parts B and C prune the 13 convs and `classifier.0`. Accuracies do not depend on "
           "the machine's load; the reconstruction time does.", "",
           "### A. Right after the prune, no fine-tuning: default recovery (BatchNorm recalibration) / none", "",
           "| criterion | 30 % | 50 % | 70 % |", "|---|---|---|---|"]
    for c in dict.fromkeys(r["criterion"] for r in rows_a):
        cells = [f"{acc(row(rows_a, c, q))} / {acc(row(rows_a, c, q), 'test_acc_before_ft_no_recovery')}"
                 if row(rows_a, c, q) else "-" for q in (0.3, 0.5, 0.7)]
        out.append(f"| {c} | " + " | ".join(cells) + " |")
    if rows_a:
        verdict = []
        for c in ("l1", "fpgm"):
            r3, r5 = row(rows_a, c, 0.3), row(rows_a, c, 0.5)
            if r3 and r5:
                ok = f(r3["test_acc_before_ft"]) >= 0.92 and f(r5["test_acc_before_ft"]) >= 0.80
                verdict.append(f"{c} {acc(r3)} / {acc(r5)}: {'met' if ok else '**not met**'}")
        out += ["", "Issue 12's target with the defaults, >= 0.92 at 30 % and >= 0.80 at 50 % for l1 and fpgm: "
                + "; ".join(verdict) + "."]
    out += ["", "### B. Least-squares reconstruction + recalibration (`--reconstruct true`), no fine-tuning", "",
            "| criterion | 30 % | 50 % | 50 %, recalibration only (part C's prune) | 50 %, none |", "|---|---|---|---|---|"]
    for c in dict.fromkeys(r["criterion"] for r in rows_b):
        r5 = row(rows_b, c, 0.5)
        c5 = next((row(rows, c, 0.5) for rows in per_seed if row(rows, c, 0.5)), None)
        out.append(f"| {c} | {acc(row(rows_b, c, 0.3))} | {acc(r5)} | {acc(c5)} | "
                   f"{acc(r5, 'test_acc_before_ft_no_recovery')} |")
    if timing:
        out += ["", f"Time and memory of the reconstruction of the l1 50 % prune ({timing['layers']} layers refit, "
                f"one pass of the scoring set through both networks up to each refit layer): "
                f"**{timing['seconds']:.1f} s** with {timing['threads']} torch thread(s) on a 2-core machine shared "
                f"with other jobs (load {timing['load'][0]:.1f} -> {timing['load'][1]:.1f}). Memory: the largest "
                f"normal-equation system {timing['gram_mb']:.2f} MB (XᵀX, XᵀY and sums in float64; one layer's at a "
                f"time), at most {timing['rows']:,} sampled rows per layer, and one batch ({timing['batch']} images) of "
                f"activations: {timing['activations_mb']:.1f} MB for every leaf output of the unpruned network "
                "(float32; fewer are alive at once)."]
    out += ["", f"### C. After 3 fine-tuning epochs at 50 %: mean ± std over {sum(1 for r in per_seed if r)} seeds", "",
            f"Unpruned: {base_acc:.4f}. Distillation: α 0.5, T 4, teacher = the unpruned model. Right after the prune "
            "(recalibration): the same for every seed.", "",
            "| criterion | right after the prune | with distillation | without | with >= unpruned |",
            "|---|---|---|---|---|"]
    for c in CRIT_C:
        kd = [f(r["test_acc"]) for rows in per_seed for r in rows if r["criterion"] == c]
        plain = [f(r["test_acc_no_kd"]) for rows in per_seed for r in rows if r["criterion"] == c]
        first = next((r for rows in per_seed for r in rows if r["criterion"] == c), None)

        def ms(v):
            return f"{statistics.mean(v):.4f} ± {statistics.stdev(v) if len(v) > 1 else 0:.4f}" if v else "-"

        verdict = ("yes" if statistics.mean(kd) >= base_acc else "no") if kd else "-"
        out.append(f"| {c} | {acc(first)} | {ms(kd)} | {ms(plain)} | {verdict} |")
    text = "\n".join(out)
    print(text)
    if args.write_docs:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from _doc import replace_section

        replace_section(ROOT / "docs" / "benchmarks.md", BEGIN, END, text)


if __name__ == "__main__":
    main()
