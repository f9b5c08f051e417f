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

Accuracies only (no timing): the numbers do not depend on the machine's load. Every part runs
``lightprune compare`` (the same engine as the callbacks) in its own run directory under
``runs/bench_recovery/``; the base model is trained once (part A) and reused by the others.
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- recovery:begin -->", "<!-- recovery:end -->"
CRIT_C = ["l1", "fpgm", "feature_entropy"]


def compare(run_dir: Path, *args: str) -> list[dict[str, str]]:
    cmd = [str(Path(sys.executable).parent / "lightprune"), "compare", "--config", "configs/compare_criteria.yaml",
           "--run_dir", str(run_dir), "--wandb", "false", "--progress", "false", *args]
    print("$", " ".join(shlex.quote(c) for c in cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, env={**os.environ, "WANDB_MODE": "offline"}, check=True)
    with open(run_dir / "results.csv") as fh:
        return list(csv.DictReader(fh))


def f(v: str | float | None) -> float:
    return float("nan") if v in (None, "") else float(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5, help="fine-tuning seeds of part C (default 5)")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--fresh", action="store_true", help="empty runs/bench_recovery first (retrain the base model)")
    args = ap.parse_args()
    root = ROOT / "runs" / "bench_recovery"
    if args.fresh and root.exists():
        shutil.rmtree(root)
    base = root / "a_no_ft" / "base.ckpt"

    rows_a = compare(root / "a_no_ft", "--finetune.epochs", "0", "--ratios", "[0.3, 0.5, 0.7]")
    base_acc = f(rows_a[0]["base_test_acc"])
    rows_b = compare(root / "b_reconstruct", "--checkpoint", str(base), "--finetune.epochs", "0", "--ratios", "[0.3, 0.5]",
                     "--reconstruct", "true", "--criteria", "[l1, fpgm, feature_entropy]")
    per_seed = []
    for seed in range(args.seeds):
        per_seed.append(compare(root / f"c_seed{seed}", "--checkpoint", str(base), "--ratios", "[0.5]", "--seed", str(seed),
                                "--criteria", "[l1, fpgm, feature_entropy]"))

    out = ["## Accuracy recovery after a prune (digits)", "",
           "Command: `python benchmarks/recovery_digits.py --write-docs` "
           f"(part C over {args.seeds} fine-tuning seeds). Base model: `configs/compare_criteria.yaml`'s recipe "
           f"(cifar_vgg16, width 0.25, 12 epochs), test accuracy **{base_acc:.4f}** (360 test images: one image is "
           "0.28 points). Uniform prune of every prunable layer; scoring set 50 images per class. Accuracies only: "
           "they do not depend on the machine's load.", "",
           "### A. Right after the prune, no fine-tuning: default recovery (BatchNorm recalibration) / none", "",
           "| criterion | 30 % | 50 % | 70 % |", "|---|---|---|---|"]
    crits = list(dict.fromkeys(r["criterion"] for r in rows_a))
    for c in crits:
        cells = []
        for ratio in ("0.3", "0.5", "0.7"):
            r = next((r for r in rows_a if r["criterion"] == c and float(r["ratio"]) == float(ratio)), None)
            cells.append(f"{f(r['test_acc_before_ft']):.3f} / {f(r['test_acc_before_ft_no_recovery']):.3f}" if r else "-")
        out.append(f"| {c} | " + " | ".join(cells) + " |")
    out += ["", "### B. With least-squares reconstruction + recalibration, no fine-tuning", "",
            "| criterion | 30 % | 50 % |", "|---|---|---|"]
    for c in dict.fromkeys(r["criterion"] for r in rows_b):
        cells = [f"{f(r['test_acc_before_ft']):.3f}" for r in rows_b if r["criterion"] == c]
        out.append(f"| {c} | " + " | ".join(cells) + " |")
    out += ["", f"### C. After 3 fine-tuning epochs at 50 %: mean ± std over {args.seeds} seeds", "",
            f"Unpruned: {base_acc:.4f}. Distillation: α 0.5, T 4, teacher = the unpruned model.", "",
            "| criterion | with distillation | without | ≥ unpruned (with) |", "|---|---|---|---|"]
    for c in CRIT_C:
        kd = [f(r["test_acc"]) for rows in per_seed for r in rows if r["criterion"] == c]
        plain = [f(r["test_acc_no_kd"]) for rows in per_seed for r in rows if r["criterion"] == c]

        def ms(v):
            return f"{statistics.mean(v):.4f} ± {statistics.stdev(v) if len(v) > 1 else 0:.4f}"

        out.append(f"| {c} | {ms(kd)} | {ms(plain)} | {'yes' if statistics.mean(kd) >= base_acc else 'no'} |")
    text = "\n".join(out)
    print(text)
    if args.write_docs:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from _doc import replace_section

        replace_section(ROOT / "docs" / "benchmarks.md", BEGIN, END, text)


if __name__ == "__main__":
    main()
