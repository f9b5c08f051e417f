"""Prune every classification model a user may bring: lightprune beside torch-pruning's MetaPruner.

For each model (every torchvision classification model, plus a timm list), in its own subprocess
with a time limit:

- **lightprune**: ``lp.score(model, "l1")`` -> ``lp.plan(uniform, 0.3)`` -> ``lp.prune`` -> forward;
- **torch-pruning**: ``tp.pruner.MetaPruner`` with ``MagnitudeImportance(p=1)``, ``pruning_ratio=0.3``,
  the output layer(s) ignored (the same ones lightprune finds by tracing), ``num_heads`` given for
  attention modules that expose it.

Both from the same randomly initialised model (``weights=None``, ``num_classes=10``). Reported:
status, parameters kept, MACs kept, seconds for plan + prune. The table goes into
``docs/benchmarks.md`` (section ``zoo``).

    python benchmarks/zoo.py                                   # everything, 224 px (299 Inception)
    python benchmarks/zoo.py --models resnet18 timm:deit_small_patch16_224 --input-size 64
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TIMM = [
    "timm:resnet50.a1_in1k", "timm:convnext_tiny", "timm:efficientnet_b0", "timm:regnety_008", "timm:vit_small_patch16_224",
    "timm:deit_small_patch16_224", "timm:mobilenetv3_large_100", "timm:cspresnet50", "timm:edgenext_small",
]


def all_models() -> list[str]:
    from torchvision import models as tvm

    return sorted(tvm.list_models(module=tvm)) + TIMM


def _size(name: str, size: int) -> int:
    return max(size, 75) if "inception" in name and size < 75 else (299 if "inception" in name and size == 224 else size)


def run_one(name: str, size: int, threads: int = 0, tp_timeout: float = 0) -> dict:
    """In the subprocess: both pruners on fresh copies of one model.

    ``tp_timeout`` (seconds, 0: none) bounds torch-pruning's part alone with SIGALRM, so that a model
    on which ``MetaPruner`` runs for many minutes (Swin) still gets lightprune's row and a finished
    subprocess; lightprune's own part is bounded by the parent's per-model limit.
    """
    import copy
    import signal

    import torch
    from torch import nn

    import lightprune as lp

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    kw = {}
    if name.startswith("vit_") or name.startswith("timm:"):
        kw["image_size"] = size
    model = lp.create_model(name, 10, **kw).eval()
    x = torch.randn(1, 3, size, size)
    res: dict = {"model": name, "input": size}

    net = copy.deepcopy(model)
    t = time.perf_counter()
    try:
        p = lp.plan(net, lp.score(net, "l1"), strategy="uniform", ratio=0.3, example_inputs=x)
        r = lp.prune(net, p, x, measure_latency=False)
        with torch.no_grad():
            shape = tuple(net(x).shape)
        ok = shape == (1, 10)
        res["lp"] = {"status": "ok" if ok else f"output {shape}", "params": r.params_after / r.params_before,
                     "macs": r.macs_after / r.macs_before, "s": time.perf_counter() - t,
                     "not_planned": len(p.meta.get("not_planned", {})),
                     "heads": [sum(p.num_heads[n] - len(k) for n, k in p.heads.items()), sum(p.num_heads.values())]}
    except Exception as err:  # noqa: BLE001 - reported in the table
        res["lp"] = {"status": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}", "s": time.perf_counter() - t}
    print("RESULT_LP " + json.dumps(res), flush=True)  # kept if torch-pruning then runs past the time limit

    import torch_pruning as tp

    class _Limit(Exception):
        pass

    def _alarm(*_):
        raise _Limit(f"time limit ({tp_timeout:.0f} s)")

    net = copy.deepcopy(model)
    t = time.perf_counter()
    if tp_timeout:
        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(int(tp_timeout))
    try:
        from lightprune.graph import count_macs_params
        from lightprune.graph import output_layers as outs

        mods = dict(net.named_modules())
        try:
            ignored = [mods[n] for n in outs(net, x)]
        except Exception:  # noqa: BLE001 - lightprune's graph failed: torch-pruning gets the last Linear, fails on its own
            ignored = [m for m in net.modules() if isinstance(m, nn.Linear)][-1:]
        num_heads = {}
        for m in net.modules():
            if hasattr(m, "qkv") and isinstance(m.qkv, nn.Linear) and hasattr(m, "num_heads"):
                num_heads[m.qkv] = m.num_heads
        macs_a, params_a = count_macs_params(net, x)
        pruner = tp.pruner.MetaPruner(net, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.3,
                                      ignored_layers=ignored, num_heads=num_heads)
        pruner.step()
        with torch.no_grad():
            shape = tuple(net(x).shape)
        macs_b, params_b = count_macs_params(net, x)
        res["tp"] = {"status": "ok" if shape == (1, 10) else f"output {shape}", "params": params_b / params_a,
                     "macs": macs_b / macs_a, "s": time.perf_counter() - t}
    except _Limit as err:
        res["tp"] = {"status": str(err), "s": time.perf_counter() - t}
    except Exception as err:  # noqa: BLE001
        res["tp"] = {"status": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}", "s": time.perf_counter() - t}
    finally:
        signal.alarm(0)
    return res


def _cell(r: dict | None) -> list[str]:
    if not r:
        return ["-", "-", "-", "-"]
    if "params" not in r:
        return [r["status"].replace("|", "/"), "-", "-", f"{r['s']:.1f}"]
    notes = [f"{r['not_planned']} layers left whole"] if r.get("not_planned") else []
    if r.get("heads") and r["heads"][1]:
        notes.append(f"{r['heads'][0]}/{r['heads'][1]} heads removed")
    status = r["status"] + (f" ({', '.join(notes)})" if notes else "")
    return [status, f"{r['params']:.3f}", f"{r['macs']:.3f}", f"{r['s']:.1f}"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", help="model names (torchvision names, timm:<name>); default: all")
    ap.add_argument("--input-size", type=int, default=224, help="square input side (Inception: 299 at 224, at least 75)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per model (both pruners)")
    ap.add_argument("--tp-timeout", type=float, default=300, help="seconds for torch-pruning's part alone (0: none)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in each subprocess (0: torch's default)")
    ap.add_argument("--doc", default=str(HERE.parent / "docs" / "benchmarks.md"))
    ap.add_argument("--results", default=str(HERE.parent / "runs" / "zoo.jsonl"),
                    help="one JSON line per finished model; models already in it are not rerun (delete it to start over)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args.input_size, args.threads, args.tp_timeout)))
        return
    names = args.models or all_models()
    results = Path(args.results)
    done = {}
    if results.exists():
        for ln in results.read_text().splitlines():
            r = json.loads(ln)
            done[(r["model"], r["input"])] = r
    results.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        size = _size(name, args.input_size)
        if (name, size) in done:
            rows.append(done[(name, size)])
            continue
        t = time.perf_counter()
        try:
            out = subprocess.run([sys.executable, __file__, "--one", name, "--input-size", str(size),
                                  "--threads", str(args.threads), "--tp-timeout", str(args.tp_timeout)],
                                 capture_output=True, text=True, timeout=args.timeout)
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
            lp_line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT_LP ")), None)
            errors = [ln for ln in out.stderr.strip().splitlines() if "Error" in ln or "Killed" in ln]
            if out.returncode == -9:  # SIGKILL: on this machine, the kernel's out-of-memory killer
                crash = {"status": "killed (SIGKILL: out of memory)", "s": time.perf_counter() - t}
            else:
                crash = {"status": f"crashed (exit code {out.returncode}): " + (errors or ["no error message"])[-1][:160],
                         "s": time.perf_counter() - t}
            if line:
                res = json.loads(line[7:])
            elif lp_line:  # lightprune's part finished, torch-pruning's crashed the process
                res = json.loads(lp_line[10:]) | {"tp": crash}
            else:
                res = {"model": name, "input": size, "lp": crash}
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            line = next((ln for ln in out.splitlines() if ln.startswith("RESULT_LP ")), None)
            limit = {"status": f"time limit ({args.timeout:.0f} s)", "s": args.timeout}
            res = json.loads(line[10:]) | {"tp": limit} if line else {"model": name, "input": size, "lp": limit}
        res["wall_s"] = time.perf_counter() - t
        rows.append(res)
        with results.open("a") as fh:
            fh.write(json.dumps(res) + "\n")
        print(f"{res['wall_s']:6.1f} s", name, res.get("lp", {}).get("status"), "|", res.get("tp", {}).get("status"), flush=True)

    head = ("| model | input | lightprune | params kept | MACs kept | s | torch-pruning | params kept | MACs kept | s |\n"
            "|---|---|---|---|---|---|---|---|---|---|")
    lines = [head] + [f"| {r['model']} | {r['input']} | " + " | ".join(_cell(r.get("lp")) + _cell(r.get("tp"))) + " |" for r in rows]
    import os

    load = os.getloadavg()
    cmd = "python benchmarks/zoo.py " + " ".join(argv if argv is not None else sys.argv[1:])
    body = (f"Command: `{cmd}`  \nLoad average at the end (1/5/15 min): {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} "
            f"on {os.cpu_count()} CPUs (a shared machine: times are indicative only).\n\n" + "\n".join(lines))
    from _doc import replace_section

    replace_section(Path(args.doc), "<!-- zoo:begin -->", "<!-- zoo:end -->", "## Model zoo: lightprune vs torch-pruning (l1, uniform 0.3)\n\n" + body)


if __name__ == "__main__":
    main()
