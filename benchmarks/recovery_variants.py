"""Why BatchNorm recalibration alone stops short at 50 % (issue 12): recovery variants and layer
scopes on the `compare` base model of benchmarks/recovery_digits.py (its part A trains it), no
fine-tuning, test accuracy right after the prune. One line per (scope, criterion, ratio, variant):

    PYTHONPATH=src python benchmarks/recovery_variants.py l1,fpgm 0.3,0.5 recal,mean,bb_recal all,nocls
    PYTHONPATH=src python benchmarks/recovery_variants.py l1 0.5 recal single     # one layer at a time

Variants (every one through the engine's ``run_prune``, as every front end):
  none         no recovery
  recal        BatchNorm recalibration on the 500-image scoring set (the default)
  recal_train  recalibration on every training image (1257) instead
  mean         only the running means re-estimated (variances kept): mean compensation alone
  bb / bb_recal  bias balancing (removed channels replaced by their mean) without / with recalibration
  affine       per channel, the least-squares affine map of each BatchNorm's input onto the unpruned
               network's, folded into the norm, layer by layer (a diagonal reconstruction)
  recon        least-squares reconstruction + recalibration (``--reconstruct true``)
  recon_mb1/2/4  the same on the first 1 / 2 / 4 batches (64 images each) of the scoring set
  recon_p64    the same with 64 sampled positions per image instead of 256
Scopes: all (the 13 convs and the hidden Linear classifier.0), nocls (the 13 convs), nofirst (all but
the first conv), nofirst_nocls, single (each layer alone). Accuracies only; one torch thread.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    os.environ.setdefault("WANDB_MODE", "offline")
    torch.set_num_threads(1)
    from lightprune import recovery
    from lightprune.collect import find_prunable_layers
    from lightprune.compare.config import parse_config
    from lightprune.compare.runner import Comparison
    from lightprune.criteria import Scores
    from lightprune.engine import evaluate_splits, run_prune
    from lightprune.evaluation import inference

    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    crits, ratios, variants, scopes = (a.split(",") for a in sys.argv[1:5])
    base_ckpt = ROOT / "runs" / "bench_recovery" / "a_no_ft" / "base.ckpt"
    if not base_ckpt.exists():
        raise SystemExit(f"{base_ckpt} is missing: run benchmarks/recovery_digits.py --parts A first")
    cfg = parse_config(["--config", str(ROOT / "configs" / "compare_criteria.yaml"), "--checkpoint", str(base_ckpt),
                        "--run_dir", str(ROOT / "runs" / "bench_recovery" / "variants"), "--wandb", "false",
                        "--criteria", f"[{','.join(crits)}]", "--progress", "false"])
    cmp = Comparison(cfg, echo=lambda *a: None)
    cmp.setup()
    base = cmp.base_module.model
    info = find_prunable_layers(base, cmp.example)
    every = list(cmp.layers)
    scope_layers = {
        "all": every,
        "nocls": [n for n in every if not n.startswith("classifier")],
        "nofirst": [n for n in every if n != every[0]],
        "nofirst_nocls": [n for n in every if n != every[0] and not n.startswith("classifier")],
        **{f"only:{n}": [n] for n in every},
    }
    if scopes == ["single"]:
        scopes = [f"only:{n}" for n in every]
    batches = cmp._scoring().batches
    test = {"test": cmp.dm.test_dataloader()}

    def mean_only(model, plan):
        norms = [m for m in model.modules() if isinstance(m, recovery.BATCH_NORMS)]
        kept = [m.running_var.clone() for m in norms]
        recovery.recalibrate_bn(model, batches)
        for m, v in zip(norms, kept, strict=True):
            m.running_var.copy_(v)

    def recal_train(model, plan):
        cmp.dm.setup("fit")
        recovery.recalibrate_bn(model, cmp.dm.train_dataloader())

    def affine(model, plan):
        pm, om = dict(model.named_modules()), dict(base.named_modules())
        for conv, bn in [(n, i.norm) for n, i in info.items() if i.norm]:
            keep = plan.keep.get(conv)
            keep = torch.as_tensor(keep) if keep is not None else None
            seen: dict[str, torch.Tensor] = {}
            h1 = pm[bn].register_forward_hook(lambda m, a, o, s=seen: s.__setitem__("p", a[0].detach()))
            h2 = om[bn].register_forward_hook(lambda m, a, o, s=seen: s.__setitem__("o", a[0].detach()))
            total, n = None, 0
            with inference(model), inference(base):
                for x, _ in batches:
                    model(x)
                    base(x)
                    yp, yo = seen["p"].double(), seen["o"].double()
                    yo = yo if keep is None else yo[:, keep]
                    d = [0, 2, 3]
                    t = torch.stack([yp.sum(d), yo.sum(d), (yp * yp).sum(d), (yp * yo).sum(d)])
                    total = t if total is None else total + t
                    n += yp.numel() // yp.shape[1]
            h1.remove()
            h2.remove()
            mp, mo = total[0] / n, total[1] / n
            slope = ((total[3] / n - mp * mo) / (total[2] / n - mp * mp).clamp_min(1e-12)).clamp_min(1e-3)
            shift = mo - slope * mp
            norm = pm[bn]
            with torch.no_grad():  # BN(slope·y + shift) as a BatchNorm of y
                mu, var = norm.running_mean.double(), norm.running_var.double()
                norm.running_mean.copy_(((mu - shift) / slope).float())
                norm.running_var.copy_(((var + norm.eps) / slope**2 - norm.eps).clamp_min(0).float())

    variant_opts = {
        "none": {"recal": False},
        "recal": {"recal": True},
        "recal_train": {"recal": False, "post": recal_train},
        "mean": {"recal": False, "post": mean_only},
        "bb": {"recal": False, "bb": True},
        "bb_recal": {"recal": True, "bb": True},
        "affine": {"recal": False, "post": affine},
        "recon": {"recal": True, "recon": {}},
        "recon_mb1": {"recal": True, "recon": {"max_batches": 1}},
        "recon_mb2": {"recal": True, "recon": {"max_batches": 2}},
        "recon_mb4": {"recal": True, "recon": {"max_batches": 4}},
        "recon_p64": {"recal": True, "recon": {"positions": 64}},
    }
    for v in variants:
        if v not in variant_opts:
            raise SystemExit(f"variant {v!r} unknown; allowed: {', '.join(variant_opts)}")
    for scope in scopes:
        if scope not in scope_layers:
            raise SystemExit(f"scope {scope!r} unknown; allowed: {', '.join(s for s in scope_layers if ':' not in s)}, single")
        for crit in crits:
            full = cmp.get_scores(crit)
            scores = Scores({n: full[n] for n in full if n in scope_layers[scope]}, full.criterion)
            for ratio in map(float, ratios):
                for v in variants:
                    o = variant_opts[v]
                    model = copy.deepcopy(base)
                    spec = dataclasses.replace(cmp._spec(crit, ratio), layers=scope_layers[scope], recalibrate_bn=o["recal"],
                                               reconstruct="recon" in o, reconstruct_kwargs=o.get("recon", {}),
                                               bias_balancing=o.get("bb", False))
                    t0 = time.perf_counter()
                    res = run_prune(model, cmp._scoring(), spec, scores=scores, evaluate_on=None, num_classes=10,
                                    evaluate_before=False, latency_inputs=None)
                    if "post" in o:
                        o["post"](model, res.plan)
                    seconds = time.perf_counter() - t0
                    acc = evaluate_splits(model, test, 10)["test/acc"]
                    macs = 100 * (1 - res.report.macs_after / res.report.macs_before)
                    print(f"{scope:14s} {crit:16s} {ratio:.1f} {v:11s} test {acc:.4f}  ({seconds:.1f} s, MACs -{macs:.1f} %)",
                          flush=True)


if __name__ == "__main__":
    main()
