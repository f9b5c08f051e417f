"""Every analysis of :mod:`lightprune.analysis` once on digits-trained networks.

Networks (trained here, fixed seeds, CPU):

- **vgg16**: the ``configs/train_digits.yaml`` recipe in Python (plain training): CIFAR VGG-16 at 1/4 width
  (BatchNorm), SGD lr 0.05 momentum 0.9 wd 5e-4, cosine schedule, 12 epochs, batch 64, with the
  :class:`~lightprune.analysis.FeatureEntropyMonitor` attached (Fig. 5B);
- **homogeneous**: CIFAR VGG-11 at 1/4 width without BatchNorm, every conv / hidden Linear bias
  fixed at 0 (feature maps scale exactly with inputs and weights), Adam lr 1e-3, 8 epochs, batch 32:
  the setting in which the rescaling audit can be bit-exact.

Analyses: layer-wise cumulative ablation of one layer (zero and mean mode, class-specific gain),
whole-network ablation, rescaling audit (homogeneous net, and the VGG-16 net with ``bn=fold`` and
``bn=keep``), randomness audit, layer analysis. Outputs (CSV, markdown, PNG) go to ``--out``; the
tables are written to the "Analyses on digits" section of docs/benchmarks.md (between
``<!-- analysis:begin -->`` and ``<!-- analysis:end -->``) unless ``--no-write``.

Usage::

    python benchmarks/analysis_digits.py                       # ~30-60 min on 2 busy CPU cores
    python benchmarks/analysis_digits.py --quick --no-write    # smoke run (a few minutes)
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shlex
import sys
import time
from functools import partial
from pathlib import Path

import lightning as L
import torch
from _doc import replace_section  # noqa: E402  (benchmarks/ is the script's folder)
from torch import nn

import lightprune as lp
from lightprune.analysis import (
    FeatureEntropyMonitor,
    cumulative_ablation,
    layer_analysis,
    randomness_audit,
    rescaling_audit,
)
from lightprune.analysis._common import markdown_table
from lightprune.data import DigitsDataModule
from lightprune.evaluation import evaluate

BEGIN, END = "<!-- analysis:begin -->", "<!-- analysis:end -->"
ROOT = Path(__file__).resolve().parents[1]
ABLATION_CRITERIA = ["l1", "apoz", "mutual_information", "kl_selectivity", "feature_entropy"]


def train(
    module: lp.ClassificationModule, epochs: int, batch_size: int, out: Path, callbacks=()
) -> tuple[float, L.Trainer]:
    L.seed_everything(0, verbose=False)
    dm = DigitsDataModule(image_size=32, channels=3, batch_size=batch_size)
    from lightning.pytorch.loggers import CSVLogger

    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=CSVLogger(str(out), name="logs"),
        callbacks=list(callbacks),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=5,
    )
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    elapsed = time.perf_counter() - t0
    trainer.save_checkpoint(str(out / "model.ckpt"))
    return elapsed, trainer


def vgg16_module(epochs: int) -> lp.ClassificationModule:
    return lp.ClassificationModule(
        "cifar_vgg16",
        num_classes=10,
        image_size=32,
        model_kwargs={"width_mult": 0.25},
        optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=5e-4),
        lr_scheduler=partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=epochs),
    )


def homogeneous_module() -> lp.ClassificationModule:
    torch.manual_seed(0)
    module = lp.ClassificationModule(
        "cifar_vgg11",
        num_classes=10,
        image_size=32,
        model_kwargs={"width_mult": 0.25, "batch_norm": False},
        optimizer=partial(torch.optim.Adam, lr=1e-3),
    )
    final = module.model.classifier[-1]
    for m in module.model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m is not final:
            nn.init.zeros_(m.bias)
            m.bias.requires_grad_(False)
    return module


def write_section(path: Path, body: str) -> None:
    replace_section(path, BEGIN, END, body)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "runs" / "analysis_digits"))
    ap.add_argument("--quick", action="store_true", help="short training and small settings (smoke run)")
    ap.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    ap.add_argument("--layer", default="features.7", help="layer of the VGG-16 network to ablate / audit")
    ap.add_argument("--samples-per-class", type=int, default=50)
    ap.add_argument(
        "--reuse", action="store_true", help="reuse the trained checkpoints of an earlier run in --out"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    q = args.quick
    spc = 10 if q else args.samples_per_class
    epochs = 2 if q else 12
    layer = args.layer
    timings: dict[str, float] = {}
    sections: list[str] = []

    # ---- training (or --reuse of the checkpoints of an earlier run) --------------------------
    monitor = FeatureEntropyMonitor(
        every_n_epochs=1, samples_per_class=10 if q else 20, output_dir=str(out / "monitor")
    )
    hom_epochs = 2 if q else 8
    if (
        args.reuse
        and (out / "quickstart" / "model.ckpt").exists()
        and (out / "homogeneous" / "model.ckpt").exists()
    ):
        qs = lp.ClassificationModule.load_from_checkpoint(
            str(out / "quickstart" / "model.ckpt"), map_location="cpu"
        )
        hom = lp.ClassificationModule.load_from_checkpoint(
            str(out / "homogeneous" / "model.ckpt"), map_location="cpu"
        )
        monitor.history = [
            {k: float(v) if k not in ("epoch", "global_step") else int(v) for k, v in r.items() if v != ""}
            for r in csv.DictReader(open(out / "monitor" / "feature_entropy_monitor.csv"))
        ]
        monitor.layers = [
            k.split("/", 1)[1]
            for k in monitor.history[0]
            if k.startswith("feature_entropy/") and k != "feature_entropy/mean"
        ]
        print("reusing the checkpoints of", out, flush=True)
    else:
        qs = vgg16_module(epochs)
        timings["train vgg16 (+ monitor)"], _ = train(qs, epochs, 64, out / "quickstart", [monitor])
        hom = homogeneous_module()
        timings["train homogeneous"], _ = train(hom, hom_epochs, 32, out / "homogeneous")
    qs.eval()
    hom.eval()
    dm = DigitsDataModule(image_size=32, channels=3, batch_size=128)
    dm.setup("fit")
    dm.setup("test")
    acc_qs = evaluate(qs.model, dm.test_dataloader(), num_classes=10)["acc"]
    acc_hom = evaluate(hom.model, dm.test_dataloader(), num_classes=10)["acc"]
    print(f"test accuracy: vgg16 {acc_qs:.4f}, homogeneous {acc_hom:.4f}", flush=True)

    # ---- ablation ---------------------------------------------------------------------------
    crits = ["l1", "feature_entropy"] if q else ABLATION_CRITERIA
    ablation_md = []
    for mode in ("zero", "mean"):
        t0 = time.perf_counter()
        res = cumulative_ablation(
            qs,
            dm,
            dm,
            layers=layer,
            criteria=crits,
            mode=mode,
            random_orders=2 if q else 5,
            samples_per_class=spc,
            progress=True,
        )
        timings[f"ablation {layer} ({mode})"] = time.perf_counter() - t0
        res.save(out / f"ablation_{mode}")
        ablation_md.append(
            f"**mode = {mode}** (`{layer}`, {res.summary[0]['channels']} channels, step 1):\n\n"
            + res.summary_markdown()
        )
    t0 = time.perf_counter()
    cs = cumulative_ablation(
        qs,
        dm,
        dm,
        layers=layer,
        criteria=["apoz", "feature_entropy"] if not q else ["feature_entropy"],
        orders=["least_important_first"],
        random_orders=0,
        class_specific=True,
        samples_per_class=spc,
        progress=True,
    )
    timings[f"class-specific gain {layer}"] = time.perf_counter() - t0
    cs.save(out / "ablation_class_specific")
    gain_md = markdown_table(
        cs.class_gain, ["unit", "criterion", "class_specific_gain", "shared_gain"]
    )
    t0 = time.perf_counter()
    net_res = cumulative_ablation(
        qs,
        dm,
        dm,
        criteria=["l1", "feature_entropy"] if q else ["l1", "kl_selectivity", "feature_entropy"],
        scope="network",
        random_orders=1 if q else 3,
        samples_per_class=spc,
        progress=True,
        max_fraction=0.5 if q else 1.0,
    )
    timings["whole-network ablation"] = time.perf_counter() - t0
    net_res.save(out / "ablation_network")

    # ---- audits -----------------------------------------------------------------------------
    audit_crits = ["l1", "fpgm", "apoz", "feature_entropy"] if q else None
    kw = {"samples_per_class": spc, "progress": True, "test_data": dm}
    if audit_crits:
        kw["criteria"] = audit_crits
    t0 = time.perf_counter()
    resc_hom = rescaling_audit(hom, dm, layer="features.3", **kw)
    timings["rescaling audit (homogeneous)"] = time.perf_counter() - t0
    resc_hom.save(out / "rescale_homogeneous")
    t0 = time.perf_counter()
    resc_fold = rescaling_audit(qs, dm, layer=layer, bn="fold", **kw)
    resc_keep = rescaling_audit(qs, dm, layer=layer, bn="keep", **kw)
    timings["rescaling audit (vgg16, fold + keep)"] = time.perf_counter() - t0
    resc_fold.save(out / "rescale_quickstart_fold")
    resc_keep.save(out / "rescale_quickstart_keep")
    t0 = time.perf_counter()
    # whole randomly initialised networks (reinit="model"); the paper draws 100, this CPU run 3 / 20
    rnd = randomness_audit(qs, dm, layer=layer, repeats=3 if q else 20, **kw)
    timings["randomness audit"] = time.perf_counter() - t0
    rnd.save(out / "randomness")

    # ---- layer analysis -----------------------------------------------------------------------
    t0 = time.perf_counter()
    torch.manual_seed(0)
    fresh = lp.create_model("cifar_vgg16", 10, width_mult=0.25)
    la = layer_analysis(qs, dm, random_model=fresh, samples_per_class=spc, progress=True)
    timings["layer analysis"] = time.perf_counter() - t0
    la.save(out / "layers")
    hist_rows = []
    names = monitor.layers or []
    picked = (
        list(dict.fromkeys(names[i] for i in (0, len(names) // 3, 2 * len(names) // 3, len(names) - 1)))
        if names
        else []
    )
    for h in monitor.history:
        row = {
            "epoch": h["epoch"],
            "train loss": h["train_loss"],
            "mean FE": h.get("feature_entropy/mean", float("nan")),
            "mean sel. rate": h.get("selective_rate/mean", float("nan")),
        }
        for n in picked:
            row[f"FE {n}"] = h.get(f"feature_entropy/{n}", float("nan"))
        hist_rows.append(row)

    # ---- report -----------------------------------------------------------------------------
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    cmd = "python benchmarks/analysis_digits.py" + (
        " " + shlex.join(argv if argv is not None else sys.argv[1:]) if (argv or sys.argv[1:]) else ""
    )
    sections.append("## Analyses on digits\n")
    sections.append(
        f"`{cmd}` (CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, Python {platform.python_version()}; "
        f"load average at the end {', '.join(f'{v:.2f}' for v in load)}: the machine was shared, timings are indicative). "
        f"Outputs (CSV, markdown, PNG): `{os.path.relpath(out, ROOT)}/`. Definitions: docs/analysis.md.\n"
    )
    sections.append(
        f"Networks: **vgg16** = the configs/train_digits.yaml recipe (CIFAR VGG-16, 1/4 width, BatchNorm, "
        f"{epochs} epochs): test accuracy {acc_qs:.4f}; **homogeneous** = CIFAR VGG-11, 1/4 width, no BatchNorm, "
        f"conv / hidden biases fixed at 0 ({hom_epochs} epochs, Adam): test accuracy {acc_hom:.4f}. "
        f"Scoring set: {spc} training images per class; test split: 360 images.\n"
    )
    sections.append("### Cumulative ablation (layer-wise)\n")
    sections.append(
        "least_important_first = the pruning order (higher `area` = better), most_important_first = the most "
        "important channel removed first (lower `area` = the criterion found the important channels). "
        "`acc_X`: test accuracy after removing X % of the layer's channels; `removed_at_90`: channels removed "
        "before the accuracy first drops below 90 % of the unablated one; `per_class_gain`: see docs/analysis.md.\n"
    )
    sections += ablation_md
    sections.append(
        f"**Per-class gain with a class-specific ranking** (`{layer}`, criterion computed on the scoring images of "
        "one class, least important first; the feature-entropy paper's Table 11):\n\n" + gain_md
    )
    sections.append("### Cumulative ablation (whole network)\n")
    sections.append(
        "All prunable layers ranked together (importance min-max normalised within each layer), "
        f"{net_res.summary[0]['channels']} channels, step {net_res.meta['step']}:\n\n"
        + net_res.summary_markdown()
    )
    sections.append("### Rescaling audit\n")
    sections.append(
        "Homogeneous network (maps scale exactly: feature entropy must be bit-identical, L1 of the scaled layer exactly 0.5x):\n\n"
        + resc_hom.markdown().split("\n", 2)[2]
    )
    sections.append(
        "VGG-16 network (BatchNorm), `bn=fold` (the BatchNorm statistics follow the scale, as re-normalisation would):\n\n"
        + resc_fold.markdown().split("\n", 2)[2]
    )
    sections.append(
        "VGG-16 network, `bn=keep` (eval-mode BatchNorm keeps its statistics: the maps after it change):\n\n"
        + resc_keep.markdown().split("\n", 2)[2]
    )
    sections.append("### Randomness audit\n")
    sections.append(rnd.markdown().split("\n", 2)[2])
    sections.append("### Layer analysis (trained vs random, Fig. 5A)\n")
    sections.append(la.markdown())
    sections.append(
        "### Feature entropy during training (FeatureEntropyMonitor, Fig. 5B)\n\n"
        f"{monitor.samples_per_class} images per class, every epoch (epoch 0 = before training); mean over the "
        "layers with maps of at least 3x3, and a few single layers:\n\n" + markdown_table(hist_rows, digits=3)
    )
    sections.append(
        "### Time\n\n" + markdown_table([{"step": k, "seconds": v} for k, v in timings.items()], digits=1)
    )
    body = "\n".join(s if s.endswith("\n") else s + "\n" for s in sections)
    (out / "benchmarks_section.md").write_text(body)
    print(body)
    if not args.no_write:
        write_section(ROOT / "docs" / "benchmarks.md", body)
        print("wrote the analysis section of docs/benchmarks.md")


if __name__ == "__main__":
    main()
