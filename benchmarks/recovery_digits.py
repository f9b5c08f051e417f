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


def f(v: str | float | None) -> float:
    return float("nan") if v in (None, "") else float(v)


def parse_parts(text: str) -> set[str]:
    parts = {p.strip().upper() for p in text.split(",") if p.strip()}
    if not parts or parts - {"A", "B", "C"}:
        raise SystemExit(f"--parts={text!r}: give a comma-separated subset of A,B,C")
    return parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5, help="fine-tuning seeds of part C (default 5)")
    ap.add_argument("--parts", default="A,B,C", help="parts to run (default A,B,C); the others are read back")
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
    base_acc = next((f(r["base_test_acc"]) for rows in (rows_a, rows_b, *per_seed) for r in rows), float("nan"))

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
            return f"{statistics.mean(v):.4f} ± {statistics.stdev(v) if len(v) > 1 else 0:.4f}" if v else "-"

        verdict = ("yes" if statistics.mean(kd) >= base_acc else "no") if kd else "-"
        out.append(f"| {c} | {ms(kd)} | {ms(plain)} | {verdict} |")
    text = "\n".join(out)
    print(text)
    if args.write_docs:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from _doc import replace_section

        replace_section(ROOT / "docs" / "benchmarks.md", BEGIN, END, text)


if __name__ == "__main__":
    main()
