"""Benchmark of the birth-time kernels (lightprune.topology) against the giotto-ph reference, and of
feature-entropy scoring against a plain forward pass.

1. Kernels, 1 thread each: ``birth_times(method="numba")`` (compiled CPU kernel),
   ``birth_times(method="torch")`` and the giotto-ph reference (``giotto_birth_times``, one
   ``ripser_parallel`` call per unit, ``n_threads=1``) on random post-ReLU maps and on real maps
   from a digits-fed conv net, at several map sizes m; all three timed in the same run, and every
   unit giotto computed is checked against both kernels (numba == torch on every unit).
2. Feature-entropy scoring (``lp.score(model, "feature_entropy", batches)``, default method: the
   compiled kernel, birth times computed per batch inside the scoring hooks) divided by a plain
   forward pass over the same batches, same threads: CIFAR VGG-16 (full width, BN) on 500 digits
   images at 32 x 32, and torchvision VGG-16 on 100 digits images at 224 x 224 (random weights).
3. numba JIT: first call with an empty cache (compilation) and first call of a new process with
   the cache filled (loading), each in a fresh subprocess.
4. Memory of the compiled kernel: its scratch memory per thread (from the array sizes), and the
   peak resident memory growth of a subprocess running it.

Usage::

    python benchmarks/topology.py --write-docs   # full run (about 5 minutes on 2 cores), writes the
                                                 # "Topology kernel" section of docs/benchmarks.md
    python benchmarks/topology.py --quick        # small counts, a smoke test; prints only

``--results FILE`` keeps each finished part in a JSON file, and a rerun with the same file only
runs the parts still missing (on a machine where long jobs get interrupted).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _doc import replace_section  # noqa: E402  (benchmarks/ is the script's folder)
from torch import nn

from lightprune.topology import birth_times, giotto_birth_times

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- topology:begin -->", "<!-- topology:end -->"
SIZES = (7, 14, 28, 56, 112, 224)
# units per (map kind, m): our kernels / giotto (giotto: up to ~10 s per unit at m = 224)
OURS_UNITS = {7: 20000, 14: 20000, 28: 10000, 56: 4000, 112: 1000, 224: 300}
GIOTTO_UNITS = {7: 2000, 14: 2000, 28: 1000, 56: 200, 112: 20, 224: 3}
QUICK_OURS = {7: 2000, 14: 2000, 28: 1000, 56: 400, 112: 100, 224: 20}
QUICK_GIOTTO = {7: 100, 14: 100, 28: 50, 56: 10, 112: 2, 224: 1}
TARGETS = {14: 300, 56: 1000, 224: 10000}  # issue 13: speed-up over giotto-ph, 1 thread each


def load() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


# ------------------------------------------------------------------------------------------------
# maps
# ------------------------------------------------------------------------------------------------
def digits_images(n: int, size: int, digit: int | None = None) -> torch.Tensor:
    """(n, 1, size, size) scikit-learn digits in [0, 1], bilinearly upsampled (no download)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images, labels = data.images, data.target
    if digit is not None:
        images = images[labels == digit]
    images = np.resize(images, (n, 8, 8))  # repeats when n exceeds the available images
    x = torch.tensor(images, dtype=torch.float32)[:, None] / 16.0
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def random_relu_maps(n: int, m: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(n, m, m, generator=gen))


def digits_conv_maps(n: int, m: int, seed: int) -> torch.Tensor:
    """Post-ReLU maps of the 2nd layer of a random 2-layer conv net fed with digits at m x m."""
    torch.manual_seed(seed)
    channels = 16
    net = nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.ReLU(),
    ).eval()
    n_images = -(-n // channels)
    with torch.no_grad():
        maps = torch.cat([net(batch) for batch in digits_images(n_images, m).split(32)])
    return maps.reshape(-1, m, m)[:n].contiguous()


def best_time(fn, repeat: int, *args, **kwargs):
    best, out = math.inf, None
    for _ in range(repeat):  # best of `repeat`: the least disturbed by other jobs
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return out, best


# ------------------------------------------------------------------------------------------------
# 1. kernels
# ------------------------------------------------------------------------------------------------
def giotto_repeat(m: int) -> int:
    """Timed giotto runs per row (alternated with the numba runs): fewer where one run takes seconds."""
    return 3 if m <= 56 else 2 if m <= 112 else 1


def bench_kernels(sizes, ours_units, giotto_units, seed: int, repeat: int) -> list[dict]:
    torch.set_num_threads(1)  # 1 thread each: numba follows torch.get_num_threads()
    birth_times(torch.rand(4, 5, 5), method="numba")  # JIT / cache load outside the timings
    rows = []
    for m in sizes:
        for kind, make in (
            ("random post-ReLU", random_relu_maps),
            ("digits conv (post-ReLU)", digits_conv_maps),
        ):
            maps = make(ours_units[m], m, seed)
            birth_times(maps[:8], method="numba")
            n_g = min(giotto_units[m], maps.shape[0])
            # numba and giotto alternated, best of each (giotto: best of up to 3, fewer at m >= 112,
            # where a run takes seconds): a burst of load on the shared machine hits one run of one
            # side, not the ratio
            t_numba = t_giotto = math.inf
            for r in range(repeat):
                numba_births, t = best_time(birth_times, 1, maps, method="numba")
                t_numba = min(t_numba, t)
                if r < giotto_repeat(m):
                    (ref, ambiguous), t = best_time(giotto_birth_times, 1, maps[:n_g])
                    t_giotto = min(t_giotto, t)
            torch_births, t_torch = best_time(birth_times, 1, maps, method="torch")
            if bool(ambiguous.any()):  # float32 merged distinct weights: exact rank distances
                ref[ambiguous] = giotto_birth_times(maps[:n_g][ambiguous], distances="ranks")[0]
            row = {
                "kind": kind,
                "m": m,
                "units": maps.shape[0],
                "numba_ups": maps.shape[0] / t_numba,
                "torch_ups": maps.shape[0] / t_torch,
                "giotto_units": n_g,
                "giotto_ups": n_g / t_giotto,
                "agree_numba": int((numba_births[:n_g] == ref).sum()),
                "agree_torch": int((torch_births[:n_g] == ref).sum()),
                "numba_eq_torch": bool(torch.equal(numba_births, torch_births)),
                "ambiguous": int(ambiguous.sum()),
                "no_birth": float((numba_births == -1).float().mean()),
                "load": load(),
            }
            row["speedup"] = row["numba_ups"] / row["giotto_ups"]
            rows.append(row)
            print(
                f"  m={m:3d} {kind:24s} numba {row['numba_ups']:12,.0f} u/s  torch {row['torch_ups']:10,.0f} u/s"
                f"  giotto {row['giotto_ups']:9,.1f} u/s  numba/giotto {row['speedup']:9,.0f}x  load {row['load']}",
                flush=True,
            )
    return rows


# ------------------------------------------------------------------------------------------------
# 2. feature-entropy scoring vs a plain forward pass
# ------------------------------------------------------------------------------------------------
def bench_scoring(
    model_name: str, image_size: int, n_images: int, batch_size: int, threads: int, repeat: int
) -> dict:
    import lightprune as lp
    from lightprune.collect import find_prunable_layers
    from lightprune.data import DigitsDataModule

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dm = DigitsDataModule(image_size=image_size, channels=3)
    dm.setup("fit")
    loader = dm.scoring_dataloader(samples_per_class=n_images // 10, batch_size=batch_size)
    batches = [(x, y) for x, y in loader]  # materialised: both sides see the same tensors
    model = lp.create_model(model_name, 10).eval()

    def forward():
        with torch.no_grad():
            for x, _ in batches:
                model(x)

    def score():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the 2x2-map and Linear layers cannot be ranked
            return lp.score(model, "feature_entropy", batches, num_classes=10, progress=False)

    layers = find_prunable_layers(model, batches[0][0][:1])
    criterion = lp.create_criterion("feature_entropy")

    def stream():  # the criterion's scoring alone: layers found beforehand
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return criterion.score(model, layers, batches, num_classes=10)

    with torch.no_grad():
        model(batches[0][0][:2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lp.score(
            model, "feature_entropy", [(batches[0][0][:2], batches[0][1][:2])], num_classes=10, progress=False
        )
    t_forward = t_score = t_stream = math.inf
    for _ in range(repeat):  # alternated, best of each
        t_forward = min(t_forward, best_time(forward, 1)[1])
        t_stream = min(t_stream, best_time(stream, 1)[1])
        t_score = min(t_score, best_time(score, 1)[1])
    return {
        "model": model_name,
        "image_size": image_size,
        "images": sum(len(y) for _, y in batches),
        "batch_size": batch_size,
        "threads": threads,
        "forward_s": t_forward,
        "score_s": t_score,
        "ratio": t_score / t_forward,
        "stream_s": t_stream,
        "stream_ratio": t_stream / t_forward,
        "runs": repeat,
        "load": load(),
    }


# ------------------------------------------------------------------------------------------------
# 3. JIT compilation and cache loading; 4. memory (subprocesses)
# ------------------------------------------------------------------------------------------------
_JIT_CHILD = """
import json, os, resource, sys, time
t0 = time.perf_counter()
import numba, torch
from lightprune.topology import birth_times
t1 = time.perf_counter()
torch.set_num_threads(1)
out = {"import_s": t1 - t0}
for name, dtype in (("float32", torch.float32), ("float64", torch.float64)):
    maps = torch.rand(4, 9, 9, dtype=dtype)
    t = time.perf_counter()
    birth_times(maps, method="numba")
    out[name + "_first_call_s"] = time.perf_counter() - t
    t = time.perf_counter()
    birth_times(maps, method="numba")
    out[name + "_second_call_s"] = time.perf_counter() - t
print(json.dumps(out))
"""

_MEMORY_CHILD = """
import json, resource, sys, time
import torch
from lightprune.topology import birth_times
m, n, threads = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
birth_times(torch.rand(2, m, m), method="numba")
maps = torch.relu(torch.randn(n, m, m, generator=torch.Generator().manual_seed(0)))
out = torch.empty(n, dtype=torch.int64)
def rss():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
def hwm():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
base = rss()
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # resets the peak (VmHWM) to the current resident size
birth_times(maps, method="numba")
peak = hwm()
print(json.dumps({"growth_mib": max(0.0, peak - base), "maps_mib": maps.numel() * 4 / 2**20}))
"""


def _child(code: str, *args: str, env: dict | None = None) -> dict:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    full_env.update(env or {})
    res = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=full_env, check=True
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def bench_jit() -> dict:
    with tempfile.TemporaryDirectory() as cache:
        env = {"NUMBA_CACHE_DIR": cache}
        cold = _child(_JIT_CHILD, env=env)
        warm = _child(_JIT_CHILD, env=env)
    return {"cold": cold, "warm": warm, "load": load()}


def scratch_bytes(m: int, itemsize: int = 4) -> int:
    """Scratch memory of one thread of the compiled kernel (the arrays ``births`` allocates)."""
    from lightprune._simd import PACKED, ROWS16
    E = m * (m - 1) // 2
    words = (m + 63) // 64
    return (
        2 * m * itemsize  # row keys, selection copy
        + 2 * E * (itemsize + 4)  # block keys and edge ids, radix-sort copies
        + 8 * 256 * 8  # radix-sort histograms
        + 2 * m * 8  # degrees, union-find
        + (m + 1) * words * 8  # bitset adjacency (+ a spare row)
        + max(m * m, ROWS16) * 4  # candidate entries of a block (m <= 16: the rows of W)
        + 64 * (itemsize + 4)  # rank-sort buffers
        + 64 * 8  # future-pair masks (24 <= m <= 64)
        + (PACKED + m) * 8  # a block of packed entries (used at 24 <= m <= 64)
        + 16 * 8
        + 8 * itemsize  # state
    )


def bench_memory(threads: int) -> list[dict]:
    rows = []
    for m, n in ((14, 20000), (56, 2000), (224, 200)):
        measured = _child(_MEMORY_CHILD, str(m), str(n), str(threads))
        rows.append({"m": m, "units": n, "scratch_kib": scratch_bytes(m) / 1024, **measured})
    return rows


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------
def render(kernels, scoring, jit, memory, args, command: str) -> str:
    lines = [
        "## Topology kernel",
        "",
        "Birth times of CRITERIA.md (feature entropy, steps 1-4). `lightprune.topology.birth_times`:"
        ' `method="numba"` (the compiled CPU kernel, `lightprune._birth_numba`; the default on CPU'
        ' tensors), `method="torch"` (the vectorised torch kernel; the default on CUDA tensors) and'
        " the giotto-ph reference (`giotto_birth_times`: `ripser_parallel` on D = max(W) - W, one unit"
        f" per call). {os.cpu_count()} cores, torch {torch.__version__}, numba {_numba_version()},"
        f" Python {platform.python_version()}. Load average (1, 5, 15 min) at the start:"
        f" {args.load_start}; at the end: {load()}. On a shared machine timings are indicative only;"
        " both sides of every ratio are timed in the same run.",
        "",
        "Command:",
        "",
        "```",
        command,
        "```",
        "",
    ]
    if kernels:
        lines += [
            "### Kernels, 1 thread each",
            "",
            f"`torch.set_num_threads(1)` (the compiled kernel runs on `torch.get_num_threads()` threads);"
            f" numba: best of {args.repeat} runs, giotto (`n_threads=1`, over the first units): best of 3 runs"
            " at m <= 56, 2 at m = 112, 1 at m = 224, alternated with the numba runs (a burst of load on"
            " the shared machine then hits one run of one side, not the ratio); torch: one run. Speed-up = numba units/s over giotto units/s (targets of issue 13: >= 300x at"
            ' m = 14, >= 1,000x at m = 56, >= 10,000x at m = 224). "agree": units where the kernel gives'
            " giotto's index (float32-ambiguous units compared with giotto on exact rank distances);"
            " numba == torch is checked on every unit.",
            "",
            "| maps | m | units | numba: units/s | torch: units/s | giotto: units | giotto: units/s |"
            " numba / giotto | torch / giotto | agree (numba, torch) | numba == torch | no birth | load |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|",
        ]
        for r in kernels:
            lines.append(
                f"| {r['kind']} | {r['m']} | {r['units']} | {r['numba_ups']:,.0f} | {r['torch_ups']:,.0f} |"
                f" {r['giotto_units']} | {r['giotto_ups']:,.1f} | **{r['speedup']:,.0f}x** |"
                f" {r['torch_ups'] / r['giotto_ups']:,.0f}x |"
                f" {r['agree_numba']}/{r['giotto_units']}, {r['agree_torch']}/{r['giotto_units']} |"
                f" {'yes' if r['numba_eq_torch'] else 'NO'} | {r['no_birth']:.1%} | {r['load']} |"
            )
        lines += [
            "",
            "Real maps: post-ReLU outputs of the 2nd layer of a random 2-layer conv net (16 channels) fed"
            " with scikit-learn digits upsampled to m x m. giotto's time per unit varies a lot between"
            " units (a few units at m = 112 and 224), so those ratios are rough.",
            "",
        ]
    if scoring:
        lines += [
            f"### Feature-entropy scoring vs a plain forward pass, {args.threads} threads",
            "",
            'Feature-entropy scoring (default `method="auto"`: the compiled kernel on these CPU'
            " activations; birth times computed per batch inside the scoring hooks, reading each layer's"
            " output in place, then the entropies) against `model(x)` under `torch.no_grad()` over the"
            " same materialised batches of digits images (3 channels, random weights),"
            f" `torch.set_num_threads({args.threads})`; best of the given number of alternated runs of"
            ' each. *criterion*: `create_criterion("feature_entropy").score(model, layers, batches)`'
            " with the prunable layers found beforehand (the scoring itself); *lp.score*:"
            ' `lp.score(model, "feature_entropy", batches)`, which also finds the prunable layers (a'
            " traced forward pass of one image) before scoring. Target of issue 13: <= 1.25x.",
            "",
            "| model | image size | images | batch | runs | forward (s) | criterion (s) |"
            " criterion / forward | lp.score (s) | lp.score / forward | load |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in scoring:
            lines.append(
                f"| `{r['model']}` | {r['image_size']} | {r['images']} | {r['batch_size']} |"
                f" {r.get('runs', '')} | {r['forward_s']:.2f} | {r['stream_s']:.2f} | **{r['stream_ratio']:.2f}x** |"
                f" {r['score_s']:.2f} | {r['ratio']:.2f}x | {r['load']} |"
            )
        lines.append("")
    if jit:
        c, w = jit["cold"], jit["warm"]
        lines += [
            "### numba JIT and cache",
            "",
            "Fresh subprocesses with `NUMBA_CACHE_DIR` set to an empty folder: the first run compiles"
            " (`cache=True` then writes the machine code to that folder), the second run loads it. Each"
            " dtype of the maps (float32, float64) is a separate specialisation; float16 / bfloat16 maps"
            " use the float32 one.",
            "",
            "| process | import lightprune + numba (s) | first call, float32 (s) | first call, float64 (s) | second call (s) |",
            "|---|---:|---:|---:|---:|",
            f"| cold cache (JIT compilation) | {c['import_s']:.2f} | {c['float32_first_call_s']:.2f} |"
            f" {c['float64_first_call_s']:.2f} | {c['float32_second_call_s']:.4f} |",
            f"| warm cache (new process) | {w['import_s']:.2f} | {w['float32_first_call_s']:.2f} |"
            f" {w['float64_first_call_s']:.2f} | {w['float32_second_call_s']:.4f} |",
            "",
            f"Load average after these runs: {jit['load']}.",
            "",
        ]
    if memory:
        lines += [
            "### Memory of the compiled kernel",
            "",
            "float32 and float64 maps are read in place (no copy); float16 / bfloat16 maps are up-cast to"
            " float32 one chunk of about 2^21 entries at a time (8 MiB). Besides the int64 result, each"
            " thread allocates the scratch memory below once per block of units (sizes from the arrays it"
            " allocates: O(m^2), no (m*m)^2 structure); a first trigger inside a tie group of k edges"
            " (rare, see the module docstring) allocates O(m^2 + k * #triangles / 64) more while it is"
            " counted. Measured: growth of the peak resident memory (VmHWM, reset just before the call)"
            " of a fresh process over its resident memory just before one `birth_times` call on random"
            f" post-ReLU maps ({args.threads} threads): the scratch memory, the int64 result and the"
            " allocator's granularity.",
            "",
            "| m | scratch per thread (KiB) | units | maps (MiB) | peak growth (MiB) |",
            "|---:|---:|---:|---:|---:|",
        ]
        for r in memory:
            lines.append(
                f"| {r['m']} | {r['scratch_kib']:,.1f} | {r['units']} | {r['maps_mib']:.1f} | {r['growth_mib']:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


def _numba_version() -> str:
    import numba

    return numba.__version__


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="map sizes m")
    parser.add_argument("--quick", action="store_true", help="far fewer units and images (smoke test)")
    parser.add_argument("--threads", type=int, default=2, help="threads of the scoring comparison")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeat", type=int, default=5, help="timed runs of the numba kernel (best kept), alternated with giotto's"
    )
    parser.add_argument(
        "--scoring-repeat", type=int, default=2, help="alternated runs of forward / scoring, cifar_vgg16"
    )
    parser.add_argument("--vgg-repeat", type=int, default=1, help="the same for vgg16 at 224 x 224")
    parser.add_argument("--skip-kernels", action="store_true")
    parser.add_argument("--skip-scoring", action="store_true")
    parser.add_argument("--skip-jit", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--write-docs", action="store_true", help="write the section of docs/benchmarks.md")
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="JSON file keeping each finished part; a rerun with the same file skips those parts",
    )
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    args.load_start = load()
    command = "python " + " ".join(
        shlex.quote(a) for a in ["benchmarks/topology.py", *(argv or sys.argv[1:])]
    )
    print(command, f"(load average {args.load_start})", flush=True)
    t0 = time.perf_counter()

    done = json.loads(args.results.read_text()) if args.results and args.results.exists() else {}

    def part(name: str, skip: bool, run):
        if skip:
            return None
        if name not in done:
            print(f"{name} ...", flush=True)
            done[name] = run()
            if args.results:
                args.results.write_text(json.dumps(done, indent=1))
        print(" ", done[name], flush=True)
        return done[name]

    jit = part("jit", args.skip_jit, bench_jit)  # first: the subprocesses need the cores
    kernels = part(
        "kernels",
        args.skip_kernels,
        lambda: bench_kernels(
            args.sizes,
            QUICK_OURS if args.quick else OURS_UNITS,
            QUICK_GIOTTO if args.quick else GIOTTO_UNITS,
            args.seed,
            args.repeat,
        ),
    )
    configs = [  # (model, image size, images, batch, alternated runs)
        ("cifar_vgg16", 32, 100 if args.quick else 500, 100, args.scoring_repeat),
        ("vgg16", 224, 20 if args.quick else 100, 5, args.vgg_repeat),
    ]
    scoring = [
        part(
            f"scoring:{name}",
            args.skip_scoring,
            lambda name=name, size=size, n=n, batch=batch, rep=rep: bench_scoring(
                name, size, n, batch, args.threads, rep
            ),
        )
        for name, size, n, batch, rep in configs
    ]
    scoring = [r for r in scoring if r]
    memory = part("memory", args.skip_memory, lambda: bench_memory(args.threads))

    body = render(kernels, scoring, jit, memory, args, command)
    body += f"\nTotal run time: {time.perf_counter() - t0:.0f} s.\n"
    print()
    print(body)
    if args.write_docs:
        replace_section(args.output, BEGIN, END, body)
        print(f"\nwritten to {args.output}")


if __name__ == "__main__":
    main()
