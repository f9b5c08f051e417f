"""Latency target, channel rounding and per-layer latency (issue 14), on CPU (and CUDA with --device).

(a) ResNet-50, ``--size`` 224, ``--batch`` 8: ``lp.plan(strategy="latency", ratio=0.5)`` (l1 scores on
    the random-init weights), then the uniform plan reaching the same *measured* latency (bisection on
    the uniform ratio, every step timed interleaved with the original); MACs, parameters and the
    importance lost (:func:`lightprune.latency.importance_lost`) of both; the latency table's
    prediction beside every measurement.
(b) Uniform 50 % on VGG-16, ResNet-50 and MobileNetV2 with ``round_to`` 1, 8 and 16: MACs factor and
    measured speed-up.
(c) The original and the two ResNet-50 plans timed again, one after the other, in one run (median of
    ``--runs``); the per-layer latency report of the latency plan (table + PNG).

``uptime`` is printed at the start and at the end. Writes the "## Latency" section of
docs/benchmarks.md (between ``<!-- latency:begin -->`` and ``<!-- latency:end -->``) and
docs/img/latency_layers.png, unless ``--no-write``.

Usage::

    python benchmarks/latency.py                 # full: 224 x 224, batch 8, 10 runs (tens of minutes on 1 CPU thread)
    python benchmarks/latency.py --quick         # smoke run: 64 x 64, batch 2, 3 runs
    python benchmarks/latency.py --threads 4 --device cuda --dtype float16
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from _doc import replace_section  # noqa: E402  (benchmarks/ is the script's folder)

import lightprune as lp
from lightprune import latency as lat
from lightprune.collect import find_prunable_layers
from lightprune.evaluation import compare_latency, measure_latency
from lightprune.graph import count_macs_params, find_groups

BEGIN, END = "<!-- latency:begin -->", "<!-- latency:end -->"
STABLE_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(4 << 30), "MALLOC_TOP_PAD_": str(256 << 20)}
ROOT = Path(__file__).resolve().parents[1]


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "uptime unavailable"


def log(*a):
    print(*a, flush=True)


class Bench:
    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.dtype = getattr(torch, args.dtype)

    def x(self, batch: int) -> torch.Tensor:
        return torch.randn(batch, 3, self.args.size, self.args.size, device=self.device, dtype=self.dtype)

    def ms(self, model) -> float:
        model = model.to(self.device, self.dtype).eval()
        return measure_latency(model, self.x(self.args.batch), runs=self.args.runs, warmup=self.args.warmup,
                               threads=self.args.threads).median_ms

    def compare(self, *models):
        """The networks timed with their runs interleaved (``compare_latency``): per-network median ms
        and the median of the per-round ratios to the first (a drifting load cancels in the ratio)."""
        models = [m.to(self.device, self.dtype).eval() for m in models]
        return compare_latency(models, self.x(self.args.batch), runs=self.args.runs, warmup=self.args.warmup,
                               threads=self.args.threads)

    def pair(self, base, pruned) -> tuple[float, float, float]:
        """(original ms, pruned ms, measured reduction = 1 - median per-round ratio)."""
        cmp = self.compare(base, pruned)
        return cmp.latencies[0].median_ms, cmp.latencies[1].median_ms, cmp.reduction(1)


def pruned_copy(net, plan, x1):
    c = copy.deepcopy(net)
    lp.prune(c, plan, x1, measure_latency=False)
    return c


def group_keep(groups, plan):
    return [len(plan.keep[g.root]) for g in groups]


def group_importance(groups, scores):
    return [torch.stack([scores[m].double() for m in g.members]).mean(0) for g in groups]


def part_a(b: Bench, out: dict) -> None:
    a = b.args
    net = lp.create_model("resnet50", 1000).eval()
    x1 = torch.zeros(1, 3, a.size, a.size)
    scores = lp.score(net, "l1")
    groups = find_groups(net, x1, find_prunable_layers(net, x1, list(scores)))
    imp = group_importance(groups, scores)
    opts = dict(latency_batch_size=a.batch, latency_runs=a.runs, latency_warmup=a.warmup, latency_threads=a.threads,
                latency_device=a.device, latency_dtype=a.dtype, latency_tolerance=a.tolerance, latency_cache_dir=a.cache_dir)
    t0 = time.time()
    p_lat = lp.plan(net, scores, strategy="latency", ratio=a.ratio, example_inputs=x1, **opts)
    out["plan_s"] = time.time() - t0
    out["lat_meta"] = {k: v for k, v in p_lat.meta.items() if k.startswith("latency")}
    log(f"latency plan in {out['plan_s']:.0f} s; rounds: {p_lat.meta['latency_rounds']}")
    table = lat.build_latency_table(net, x1, groups, batch_size=a.batch, device=a.device, dtype=a.dtype,
                                    threads=a.threads, runs=a.runs, warmup=a.warmup, cache_path=a.cache_dir,
                                    measure_full=False)
    table.full_ms = p_lat.meta["latency_before_ms"]
    full = [g.channels for g in groups]
    m_lat = pruned_copy(net, p_lat, x1)
    goal = p_lat.meta["latency_measured_reduction"]
    # uniform plan reaching the same measured reduction: bisection on the uniform ratio
    checks = [("latency plan", p_lat.meta["latency_predicted_ms"], p_lat.meta["latency_measured_ms"],
               p_lat.meta["latency_before_ms"])]
    lo, hi = 0.0, 0.9
    best = None
    for _ in range(a.bisect):
        r = (lo + hi) / 2
        p = lp.plan(net, scores, strategy="uniform", ratio=r, example_inputs=x1)
        m0, m1, red = b.pair(net, pruned_copy(net, p, x1))
        pred = table.predict(group_keep(groups, p), full)
        checks.append((f"uniform {r:.3f}", pred * m0 / table.full_ms, m1, m0))
        log(f"uniform r={r:.3f}: measured reduction {red:.3f} (goal {goal:.3f}); predicted {1 - pred / table.full_ms:.3f}")
        if red >= goal:
            hi, best = r, p
        else:
            lo = r
    if best is None:
        best = lp.plan(net, scores, strategy="uniform", ratio=hi, example_inputs=x1)
    m_uni = pruned_copy(net, best, x1)
    # (c) the three timed in one run
    log("final measurement:", uptime())
    # the three networks interleaved, in --final-repeats separate comparisons (each with its own
    # warm-up): the reduction is the median of the per-round ratios of all of them
    cmps = [b.compare(net, m_lat, m_uni) for _ in range(a.final_repeats)]
    t_orig, t_lat, t_uni = (statistics.median(t for c in cmps for t in c.times_ms[i]) for i in range(3))
    out["final_reductions"] = tuple(1 - statistics.median(r for c in cmps for r in c.round_ratios(i)) for i in (1, 2))
    out["final_each"] = [(c.reduction(1), c.reduction(2), c.latencies[0].median_ms) for c in cmps]
    mp = [count_macs_params(m, x1) for m in (net, m_lat, m_uni)]
    out["a"] = {
        "orig": (t_orig, *mp[0]), "latency": (t_lat, *mp[1]), "uniform": (t_uni, *mp[2]),
        "uniform_ratio": hi, "imp_lat": lat.importance_lost(imp, group_keep(groups, p_lat)),
        "imp_uni": lat.importance_lost(imp, group_keep(groups, best)), "checks": checks,
    }
    rep = lat.layer_latency_report(net, m_lat, b.x(a.batch), runs=a.runs, warmup=a.warmup, threads=a.threads)
    out["report"] = rep


def part_b(b: Bench, out: dict) -> None:
    a = b.args
    rows = []
    x1 = torch.zeros(1, 3, a.size, a.size)
    for name in a.models:
        net = lp.create_model(name, 1000).eval()
        scores = lp.score(net, "l1")
        macs0, params0 = count_macs_params(net, x1)
        t0 = b.ms(net)
        for rt in (1, 8, 16):
            p = lp.plan(net, scores, strategy="uniform", ratio=0.5, example_inputs=x1, round_to=rt)
            m = pruned_copy(net, p, x1)
            macs1, params1 = count_macs_params(m, x1)
            t_before, t1, red = b.pair(net, m)
            rows.append((name, rt, macs0 / macs1, params0 / params1, 1 / (1 - red), t_before, t1, p.global_ratio))
            log(f"{name} round_to={rt}: MACs x{macs0 / macs1:.2f}, speed-up x{t_before / t1:.2f} ({t_before:.1f} -> {t1:.1f} ms)")
        del t0
    out["b"] = rows


def render(a, out, start_uptime, end_uptime, cmd) -> str:
    lines = ["## Latency", "",
             "The `latency` target, channel rounding and per-layer latency (issue 14); `benchmarks/latency.py`. "
             "Random-init torchvision models, l1 scores. Every time is the median of the runs of the shared timer "
             "(`lightprune.evaluation.measure_latency`); a reduction or speed-up is the median of per-round ratios of "
             "networks timed with their runs interleaved (`lightprune.evaluation.compare_latency`), so a drifting "
             "machine speed cancels out.", "",
             f"Command: `{cmd}`", "",
             f"Setting: {a.device} ({lat.device_name(a.device)}), {a.dtype}, {a.threads or torch.get_num_threads()} thread(s), "
             f"batch {a.batch}, input {a.size} x {a.size}, {a.runs} runs after {a.warmup} warm-up; torch {torch.__version__}, "
             f"Python {platform.python_version()}; malloc: "
             + (", ".join(f"`{k}={os.environ[k]}`" for k in STABLE_MALLOC if k in os.environ) or "glibc defaults") + ".", "",
             f"Load at the start: `{start_uptime}`; at the end: `{end_uptime}`.", ""]
    if a.quick:
        lines += ["**Smoke run (`--quick`): small input, few runs; the numbers only show that the pipeline works.**", ""]
    if "a" in out:
        r = out["a"]
        o, la, un = r["orig"], r["latency"], r["uniform"]
        meta = out["lat_meta"]

        red_lat, red_uni = out["final_reductions"]

        lines += [f"### (a) ResNet-50: `latency` target {a.ratio:.0%} vs uniform at the same latency", "",
                  f"Planning took {out['plan_s']:.0f} s (latency table: {meta['latency_table']}). "
                  f"Final measurement in one run (c): the three networks interleaved, in "
                  f"{a.final_repeats} separate comparisons of {a.runs} rounds each (each with its own warm-up); "
                  f"reductions: median of all {a.final_repeats * a.runs} per-round ratios (each comparison's own "
                  "median: " + "; ".join(f"{100 * r1:.1f} % / {100 * r2:.1f} % (original {t0:.0f} ms)"
                                         for r1, r2, t0 in out["final_each"]) + "):", "",
                  "| network | ms | latency reduction | MACs (G) | params (M) | importance lost |",
                  "|---|---:|---:|---:|---:|---:|",
                  f"| original | {o[0]:.1f} | - | {o[1] / 1e9:.3f} | {o[2] / 1e6:.2f} | 0 |",
                  f"| `latency` plan | {la[0]:.1f} | {100 * red_lat:.1f} % | {la[1] / 1e9:.3f} | {la[2] / 1e6:.2f} | {r['imp_lat']:.1f} |",
                  f"| uniform (ratio {r['uniform_ratio']:.3f}) | {un[0]:.1f} | {100 * red_uni:.1f} % | {un[1] / 1e9:.3f} | {un[2] / 1e6:.2f} | {r['imp_uni']:.1f} |",
                  "", f"Target met within 5 % on the final measurement: "
                  f"**{'yes' if abs(red_lat - a.ratio) <= 0.05 else 'no'}** "
                  f"({100 * red_lat:.1f} % for {a.ratio:.0%}). The `latency` plan keeps "
                  f"{'at least as many' if la[1] >= un[1] else 'fewer'} MACs and "
                  f"{'at least as many' if la[2] >= un[2] else 'fewer'} parameters than the uniform plan.", "",
                  "Search rounds (predicted by the table vs measured):", "",
                  "| round | target (predicted ms) | predicted ms | measured before | measured ms | measured reduction |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for i, rd in enumerate(meta["latency_rounds"]):
            lines.append(f"| {i + 1} | {rd['target_ms']:.1f} | {rd['predicted_ms']:.1f} | {rd.get('measured_before_ms', 0):.1f} | "
                         f"{rd.get('measured_ms', 0):.1f} | {100 * rd.get('measured_reduction', 0):.1f} % |")
        lines += ["", "Prediction vs measurement for every measured plan (prediction rescaled to the original's "
                  "time in the same comparison):", "", "| plan | predicted ms | measured ms | error |", "|---|---:|---:|---:|"]
        for name, pred, meas, _base in r["checks"]:
            lines.append(f"| {name} | {pred:.1f} | {meas:.1f} | {100 * (pred - meas) / meas:+.1f} % |")
        rep = out["report"]
        lines += ["", f"Per-layer latency of the `latency` plan {rep.setting} (`lightprune.latency.layer_latency_report`: "
                  "each leaf module timed in isolation on its recorded input; the 15 slowest before pruning), "
                  "and where the time goes per block: `docs/img/latency_layers.png`.", "",
                  rep.to_markdown(top=15), ""]
    if "b" in out:
        lines += ["### (b) Uniform 50 % with `round_to` 1, 8, 16", "",
                  "| model | round_to | channels removed | MACs factor | params factor | speed-up | ms before | ms after |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, rt, mf, pf, su, t0, t1, gr in out["b"]:
            lines.append(f"| {name} | {rt} | {100 * gr:.1f} % | {mf:.2f} | {pf:.2f} | {su:.2f} | {t0:.1f} | {t1:.1f} |")
        lines += ["", "`round_to=\"auto\"` (the default) is 1 on CPU and 8 on CUDA float16/bfloat16."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 64 x 64 input, batch 2, 3 runs")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--tolerance", type=float, default=0.03, help="latency_tolerance of the search")
    ap.add_argument("--final-repeats", type=int, default=3, help="separate interleaved comparisons in (c)")
    ap.add_argument("--bisect", type=int, default=6, help="measured bisection steps for the uniform plan")
    ap.add_argument("--models", nargs="+", default=["vgg16", "resnet50", "mobilenet_v2"])
    ap.add_argument("--parts", default="ab", help="which parts to run: a, b or ab")
    ap.add_argument("--cache-dir", default=None, help="latency table cache (default ~/.cache/lightprune/latency)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--system-malloc", action="store_true",
                    help="keep glibc's default malloc settings (by default the script re-runs itself with "
                         "MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_/MALLOC_TOP_PAD_ set, see docs/latency.md)")
    a = ap.parse_args(argv)
    if not a.system_malloc and sys.platform.startswith("linux") and argv is None and STABLE_MALLOC.keys() - os.environ.keys():
        # glibc returns the freed activation memory of a large network to the OS and faults it in again
        # on the next forward: the same ResNet-50 then times at 320 or 390 ms depending on the heap's
        # state. Fixed thresholds keep the memory mapped, so every network is timed in the same state.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **STABLE_MALLOC})
    if a.quick:
        a.size, a.batch, a.runs, a.warmup, a.bisect = 64, 2, 3, 1, 4
    if a.threads:
        torch.set_num_threads(a.threads)
    start = uptime()
    log(start)
    b = Bench(a)
    out: dict = {}
    if "a" in a.parts:
        part_a(b, out)
    if "b" in a.parts:
        part_b(b, out)
    end = uptime()
    log(end)
    cmd = "python benchmarks/latency.py " + " ".join(shlex.quote(s) for s in (argv if argv is not None else sys.argv[1:]))
    body = render(a, out, start, end, cmd.strip())
    print(body)
    if not a.no_write:
        if "report" in out:
            out["report"].plot(ROOT / "docs" / "img" / "latency_layers.png")
        replace_section(ROOT / "docs" / "benchmarks.md", BEGIN, END, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
