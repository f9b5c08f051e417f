"""Feature entropy on training data vs shuffled training labels (Zhao & Zhang 2022, Fig. 6) on digits.

Runs :func:`lightprune.analysis.generalization_experiment` (the same as ``lightprune analyze
generalization``) with 0 %, 20 %, 50 % and 100 % of the training labels shuffled and 3 seeds per level,
writes the table to the "Generalisation" section of docs/benchmarks.md (between
``<!-- generalization:begin -->`` and ``<!-- generalization:end -->``) and the plot to
docs/img/generalization_digits.png, unless ``--no-write``. Resumable: rerun the same command after an
interrupt and the finished networks are read back from ``--out``.

The paper's claim (section on generalisation, model sets B and R): networks trained on corrupted labels
fit their training set but do not generalise, and have a *higher* feature entropy on the training data
than networks that generalise. The script states whether our ordering matches, whatever it is.

Usage::

    python benchmarks/generalization_digits.py                     # 12 networks; ~30-40 min on 2 busy cores
    python benchmarks/generalization_digits.py --quick --no-write  # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from _doc import replace_section  # noqa: E402  (benchmarks/ is the script's folder)

from lightprune.analysis import GeneralizationResult, generalization_experiment
from lightprune.analysis._common import markdown_table

BEGIN, END = "<!-- generalization:begin -->", "<!-- generalization:end -->"
ROOT = Path(__file__).resolve().parents[1]


def ordering_sentence(result) -> str:
    """Does the mean feature entropy rise with the shuffled fraction, layer by layer?"""
    levels = sorted({n["level"] for n in result.networks})
    lo, hi = levels[0], levels[-1]
    means = {
        layer: [np.mean([r["feature_entropy"] for n in result.networks if n["level"] == f
                         for r in n["layers"] if r["layer"] == layer]) for f in levels]
        for layer in result.layers
    }
    higher = [la for la, m in means.items() if m[-1] > m[0]]
    monotone = [la for la, m in means.items() if all(a < b for a, b in zip(m[:-1], m[1:], strict=True))]
    overall = [np.mean([m[i] for m in means.values()]) for i in range(len(levels))]
    names = ", ".join(f"{round(100 * f)} %: {v:.3f}" for f, v in zip(levels, overall, strict=True))
    claim = (
        "The paper's claim: networks trained on corrupted labels, which fit their training set but do not "
        "generalise, have *higher* feature entropy on the training data than networks that generalise."
    )
    if len(higher) == len(means) and len(monotone) == len(means):
        verdict = "**Our ordering matches it in every layer**: the feature entropy rises with the shuffled fraction."
    elif len(higher) > len(means) / 2:
        verdict = (f"**Our ordering matches it only in part**: {round(100 * hi)} % shuffled is above {round(100 * lo)} % "
                   f"in {len(higher)} of {len(means)} layers ({', '.join(higher)}), and the entropy rises "
                   f"monotonically with the fraction in {len(monotone)} of them"
                   f"{' (' + ', '.join(monotone) + ')' if monotone else ''}.")
    else:
        verdict = (f"**Our ordering does not match it**: {round(100 * hi)} % shuffled is above {round(100 * lo)} % in "
                   f"only {len(higher)} of {len(means)} layers{' (' + ', '.join(higher) + ')' if higher else ''}.")
    return f"{claim} {verdict} Mean over layers and seeds: {names}."


def caveat(result) -> str:
    """What limits the comparison with the paper, from the numbers."""
    unfit = sorted({round(100 * n["level"]) for n in result.networks if n["level"] > 0 and n["train_acc"] < 0.99})
    text = ""
    if unfit:
        text += (f" Caveat: the networks trained with {', '.join(f'{f} %' for f in unfit)} shuffled labels do not fit "
                 "their training labels in this budget (train acc column), whereas the paper compares networks that "
                 "all fit their training set; so the comparison is not yet at equal training accuracy.")
    if any(n["level"] == 1.0 for n in result.networks):
        text += (" With 100 % shuffled every training label differs from the true one, so the test accuracy falls "
                 "below chance (0.1).")
    return text


def collect(out: Path, settings: dict) -> GeneralizationResult:
    """The finished networks of ``out`` trained with ``settings`` (what the experiment reads back on a rerun)."""
    same = {k: v for k, v in settings.items() if k not in ("levels", "seeds")}
    same.setdefault("steps", None)
    networks = []
    for path in sorted(out.glob("level_*_seed_*/result.json")):
        saved = json.loads(path.read_text())
        if {k: saved["settings"].get(k) for k in same} == same:
            networks.append(saved["network"])
    if not networks:
        raise SystemExit(f"no finished network with these settings in {out}")
    networks.sort(key=lambda n: (n["level"], n["seed"]))
    seeds = sorted({n["seed"] for n in networks})
    meta = {**settings, "levels": sorted({n["level"] for n in networks}), "seeds": seeds,
            "seeds_per_level": f"{min(map(len, _seeds_by_level(networks)))}-{max(map(len, _seeds_by_level(networks)))}",
            "steps": None, "images": 10 * settings["samples_per_class"]}
    return GeneralizationResult(networks, meta)


def _seeds_by_level(networks: list[dict]) -> list[list[int]]:
    levels = sorted({n["level"] for n in networks})
    return [[n["seed"] for n in networks if n["level"] == f] for f in levels]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "runs" / "generalization_digits"))
    ap.add_argument("--quick", action="store_true", help="2 levels, 1 seed, a few steps (smoke run)")
    ap.add_argument("--no-write", action="store_true", help="do not touch docs/")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--samples-per-class", type=int, default=30)
    ap.add_argument("--only-seed", type=int, default=None,
                    help="train the networks of this seed only (no docs): start one process per seed, then rerun "
                    "without it to read them all back and write the docs")
    ap.add_argument("--collect", action="store_true",
                    help="train nothing: read back the networks finished in --out (their seeds per level are in "
                    "the table) and write the docs from them")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: least contention on a shared machine)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = dict(
        model="cifar_vgg11", model_kwargs={"width_mult": 0.125}, levels=[0.0, 0.2, 0.5, 1.0],
        seeds=list(range(args.seeds)), epochs=args.epochs, lr=1e-3, batch_size=64, image_size=32, channels=1,
        samples_per_class=args.samples_per_class, class_labels="true", p=0.1,
    )
    if args.only_seed is not None:
        settings["seeds"] = [args.only_seed]
        args.no_write = True
    if args.quick:
        settings.update(levels=[0.0, 1.0], seeds=[0], steps=5, samples_per_class=5)
    res = collect(Path(args.out), settings) if args.collect else generalization_experiment(out=args.out, **settings)
    paths = res.save(args.out)
    text = res.markdown()
    print(text)
    sentence = ordering_sentence(res)
    print(sentence)
    if args.no_write:
        return
    shutil.copyfile(paths["plot"], ROOT / "docs" / "img" / "generalization_digits.png")
    train_s = [n["train_seconds"] for n in res.networks]
    nets = markdown_table(res.network_table(), digits=3)
    cmd = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/generalization_digits.py", *(argv or sys.argv[1:])])
    body = "\n".join([
        "## Generalisation: feature entropy vs shuffled training labels (digits)",
        "",
        f"`{cmd}` (the same as `lightprune analyze generalization --seeds '{settings['seeds']}' --epochs "
        f"{settings['epochs']} --samples_per_class {settings['samples_per_class']}`). The feature-entropy paper's "
        "Fig. 6 experiment (model sets B / R) on digits: `cifar_vgg11` at 1/8 width (BatchNorm), 1-channel 32x32 "
        f"digits, Adam lr 1e-3, {settings['epochs']} epochs, batch 64, no augmentation; one network per "
        "(shuffled fraction, seed), the seed also drawing which labels are shuffled (every chosen label changes, "
        "class counts kept). Feature entropy (nats; mean over units and the 10 classes) on "
        f"{10 * settings['samples_per_class']} *training* images grouped by their true class; layers with maps "
        "of at least 3x3. Train acc: on the labels the network was trained with; test acc: true test labels. "
        f"Mean ± std over the seeds of each level (column `seeds`). {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {os.cpu_count()} CPU cores shared with other jobs; total "
        f"training time summed over the networks {np.nansum(train_s) / 60:.1f} min (networks trained in parallel "
        "processes, one per seed, on the shared machine).",
        "",
        text,
        sentence + caveat(res),
        "",
        "Per network:",
        "",
        nets,
        "![feature entropy per layer and class vs shuffled labels](img/generalization_digits.png)",
    ])
    replace_section(ROOT / "docs" / "benchmarks.md", BEGIN, END, body)
    print("wrote docs/benchmarks.md and docs/img/generalization_digits.png")


if __name__ == "__main__":
    main()
