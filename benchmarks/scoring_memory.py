"""Peak memory of streaming scoring: CIFAR VGG-16 (full width, BN) on 1,000 digits images
(100 per class, 32x32, 3 channels), batch size 100.

Each mode runs in a fresh subprocess; the figure is the growth of the process's peak resident
memory (ru_maxrss) over its resident size just before the measured work:

- ``forward``: plain forward passes over the 1,000 images (the floor: one batch of activations);
- ``score:<criterion>``: ``lp.score`` streaming the same images;
- ``keep_all``: what a non-streaming implementation does: keep every layer's post-activation
  output for every image (the memory streaming avoids).

    python benchmarks/scoring_memory.py            # writes the "Scoring memory" section of docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CRITERIA = ["apoz", "class_selectivity", "entropy", "mutual_information", "kl_selectivity", "nisp", "taylor", "feature_entropy"]


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def child(mode: str, batch_size: int) -> dict:
    import torch

    import lightprune as lp
    from lightprune.collect import capture_activations, find_prunable_layers
    from lightprune.data import DigitsDataModule

    torch.set_num_threads(2)
    torch.manual_seed(0)
    dm = DigitsDataModule(image_size=32, channels=3)
    dm.setup("fit")
    loader = dm.scoring_dataloader(samples_per_class=100, batch_size=batch_size)
    batches = [(x, y) for x, y in loader]  # materialise the 1,000 images before measuring (12 MB)
    model = lp.create_model("cifar_vgg16", 10).eval()
    layers = find_prunable_layers(model, batches[0][0][:1])
    sizes = {}
    with torch.no_grad(), capture_activations(model, layers, lambda n, a: sizes.__setitem__(n, a[0].numel() * 4)):
        model(batches[0][0][:1])
    per_image = sum(sizes.values())
    for _ in range(2):  # warm-up: allocator pools, lazy init
        with torch.no_grad():
            model(batches[0][0])
    base = rss_mib()
    t0 = time.perf_counter()
    if mode == "forward":
        with torch.no_grad():
            for x, _ in batches:
                model(x)
    elif mode == "keep_all":
        kept = []
        with torch.no_grad(), capture_activations(model, layers, lambda n, a: kept.append(a.clone())):
            for x, _ in batches:
                model(x)
    else:
        lp.score(model, mode.split(":", 1)[1], batches, num_classes=10, progress=False)
    elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "mode": mode,
        "growth_mib": max(0.0, peak - base),
        "seconds": elapsed,
        "one_batch_acts_mib": per_image * batch_size / 2**20,
        "all_acts_mib": per_image * len(loader.dataset) / 2**20,
        "images": len(loader.dataset),
    }


def write_section(rows: list[dict], command: str) -> None:
    doc = ROOT / "docs" / "benchmarks.md"
    doc.parent.mkdir(exist_ok=True)
    text = doc.read_text() if doc.exists() else "# Benchmarks\n\nMeasured on the project machine (2 CPU cores) unless stated.\n"
    r0 = rows[0]
    lines = [
        "<!-- scoring-memory:begin -->",
        "## Scoring memory (streaming)",
        "",
        f"`{command}`",
        "",
        f"CIFAR VGG-16 (BN, full width, 14 prunable layers), {r0['images']} digits images (100 per class, 3x32x32), "
        f"batch size {BATCH}. One batch of post-activation outputs of all prunable layers: "
        f"{r0['one_batch_acts_mib']:.1f} MiB; all {r0['images']} images: {r0['all_acts_mib']:.1f} MiB. "
        "Growth = peak resident memory (ru_maxrss) minus resident memory just before the measured work, "
        "each mode in a fresh process.",
        "",
        "| mode | peak growth (MiB) | time (s) |",
        "|---|---:|---:|",
    ]
    lines += [f"| {r['mode']} | {r['growth_mib']:.1f} | {r['seconds']:.2f} |" for r in rows]
    lines += ["", "<!-- scoring-memory:end -->", ""]
    block = "\n".join(lines)
    if "<!-- scoring-memory:begin -->" in text:
        head, rest = text.split("<!-- scoring-memory:begin -->", 1)
        tail = rest.split("<!-- scoring-memory:end -->", 1)[1].lstrip("\n")
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block
    doc.write_text(text)


BATCH = 100

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--criteria", nargs="*", default=DEFAULT_CRITERIA)
    ap.add_argument("--batch-size", type=int, default=BATCH)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--no-write", action="store_true", help="print only, do not update docs/benchmarks.md")
    args = ap.parse_args()
    BATCH = args.batch_size
    if args.child:
        print(json.dumps(child(args.child, args.batch_size)))
        sys.exit(0)
    from tqdm import tqdm

    modes = ["forward", *[f"score:{c}" for c in args.criteria], "keep_all"]
    rows = []
    for mode in tqdm(modes, desc="modes"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", mode, "--batch-size", str(args.batch_size)],
            capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "2"},
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        tqdm.write(f"{mode:<28} +{rows[-1]['growth_mib']:.1f} MiB  {rows[-1]['seconds']:.2f} s")
    if not args.no_write:
        write_section(rows, "python benchmarks/scoring_memory.py " + " ".join(sys.argv[1:]))
