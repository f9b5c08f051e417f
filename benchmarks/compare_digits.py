"""Wall time of the full digits comparison: every registered criterion at one ratio, in one command.

    python benchmarks/compare_digits.py                      # fresh run dir, prints a markdown section
    python benchmarks/compare_digits.py --write-docs         # ... and replaces the compare section of docs/benchmarks.md
    python benchmarks/compare_digits.py -- --threads 1       # extra arguments go to `lightprune compare`

It runs ``lightprune compare --config configs/compare_criteria.yaml --run_dir <run_dir>`` through the
installed console script (base-model training included: the run dir starts empty unless --resume),
then reads ``results.csv`` / ``base.json`` and prints the comparison table with the wall time.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", default="runs/bench_compare_digits", help="run directory (emptied first unless --resume)")
    ap.add_argument("--resume", action="store_true", help="keep the run directory (reuse base model and finished pairs)")
    ap.add_argument("--write-docs", action="store_true", help="replace the compare section of docs/benchmarks.md")
    ap.add_argument("--report-only", action="store_true",
                    help="do not run: rebuild the section from the run directory (its bench.json holds the wall time)")
    ap.add_argument("extra", nargs="*", help="extra arguments of `lightprune compare` (after --)")
    args = ap.parse_args()

    run_dir = Path(args.run_dir)
    rd = run_dir if run_dir.is_absolute() else ROOT / run_dir
    if args.report_only:
        bench = json.loads((rd / "bench.json").read_text())
    else:
        if not args.resume and rd.exists():
            shutil.rmtree(rd)
        cmd = [str(Path(sys.executable).parent / "lightprune"), "compare", "--config", "configs/compare_criteria.yaml",
               "--run_dir", str(run_dir), *args.extra]
        env = {**os.environ}
        env.setdefault("WANDB_MODE", "offline")
        load0 = os.getloadavg()
        print("$", " ".join(shlex.quote(c) for c in cmd), flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, env=env, check=True)
        bench = {
            "wall_s": time.perf_counter() - t0,
            "load_before": load0[0],
            "load_after": os.getloadavg()[0],
            "extra": args.extra,
            "resumed": args.resume,
        }
        (rd / "bench.json").write_text(json.dumps(bench, indent=1))
    wall, load0, load1 = bench["wall_s"], bench["load_before"], bench["load_after"]
    shown = "lightprune compare --config configs/compare_criteria.yaml" + (
        " " + " ".join(shlex.quote(a) for a in bench["extra"]) if bench["extra"] else "")

    rows = list(csv.DictReader(open(rd / "results.csv")))
    base = json.loads((rd / "base.json").read_text())
    report = (rd / "report.md").read_text()
    table = report[report.index("| criterion |"): report.index("Full columns")].strip()
    corr = report[report.index("## Rank correlation"):report.index("## Plots")].strip().split("\n", 2)[2]
    notes = report[report.index("## Notes"):].split("\n", 2)[2].strip() if "## Notes" in report else ""
    import torch
    import yaml

    used = yaml.safe_load((rd / "config.yaml").read_text())
    ft = used["finetune"]
    per_pair = sum(float(r["finetune_s"]) for r in rows)
    scoring = sum(float(r["score_s"] or 0) for r in rows)
    section = f"""{BEGIN}
## Criteria comparison on digits (`lightprune compare`)

{len(rows)} criteria at ratio {', '.join(map(str, used['ratios']))} ({used['strategy']} strategy), one command,
base-model training included (CIFAR VGG-16 at 1/4 width, 12 epochs; unpruned test accuracy
{base['metrics']['test/acc']:.4f}). Scoring set: {used['samples_per_class']} training images per class;
fine-tuning: {ft['epochs']} epochs SGD lr {ft['lr']}, {ft['schedule']}; accuracy on the 360-image test split;
img/s: batch {used['latency_batch_size']}, fastest of {used['latency_runs']} forward passes.

```
{shown}
```

**Wall time: {wall / 60:.1f} min ({wall:.0f} s)** on {os.cpu_count()} CPU cores (torch {torch.__version__},
{torch.get_num_threads()} threads by default, Python {platform.python_version()}), W&B offline, base training included;
scoring {scoring:.0f} s and fine-tuning {per_pair:.0f} s of it. Load average (1 min) before / after: {load0:.2f} / {load1:.2f}:
the machine was shared with other jobs, so timings are indicative, and img/s is mostly noise (with the uniform
strategy every pruned model has the same architecture).

{table}

One test image is {100 / 360:.2f} pp: after fine-tuning most criteria are a few images apart, from one seed,
so the ranking is not established as significant. Accuracy before fine-tuning is the same for every
criterion because the pruned BatchNorm network collapses to predicting one digit (35 of the 360 test
images) whatever channels are kept (see Limits in docs/compare.md).

Spearman rank correlation of the channel scores (mean over the pruned layers; blank where a
criterion cannot rank a layer):

{corr}

{('Notes:' + chr(10) + chr(10) + notes) if notes else ''}
{END}"""
    print()
    print(section)
    if args.write_docs:
        doc = ROOT / "docs" / "benchmarks.md"
        text = doc.read_text() if doc.exists() else "# Benchmarks\n"
        if BEGIN in text and END in text:
            text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END):]
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
        doc.write_text(text)
        print(f"\nwrote {doc}")


if __name__ == "__main__":
    main()
