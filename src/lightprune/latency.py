"""Latency model for the ``latency`` planner target, channel rounding per device, and the per-layer
latency report.

**Latency model** (:class:`LatencyTable`). Every Conv2d / Linear whose input or output width
depends on a planned coupled group gets a small table of *measured* latencies over a grid of
channel counts (:data:`DEFAULT_GRID`: 1/8, 1/4, 1/2, 3/4 and all of the channels, on each side
that varies): the layer is rebuilt in isolation as ``Conv2d -> BatchNorm2d -> ReLU`` (``Linear``
for linear layers; a depthwise conv varies on one axis, its channels) with its real input shape
(traced on the example input; the batch replaced by the latency batch size), on the device, dtype
and thread count named, and timed with the shared timer
(:func:`lightprune.evaluation.measure_latency`, median). Between grid points the cost is bilinear
(linear beyond the smallest point, never below 0). The whole network's latency is predicted as

    measured full-network latency - (sum of layer costs at full width - sum at the planned widths)

i.e. everything the table does not model (pooling, residual additions, the stem when it is not
planned, Python overhead) is assumed unchanged; when the isolated layers add up to more than the
whole network, the savings are scaled by ``full / sum of layers at full width`` (on the loaded
development machine the isolated sum of ResNet-50 exceeded the whole network and the unscaled
table over-predicted the savings: predicted 50 %, measured 34 %). The planner verifies the prediction with a real
measurement of the pruned network (``plan.meta``) and corrects its target when they disagree.

**Cache.** Each layer's grid is cached as JSON under ``~/.cache/lightprune/latency/`` (or
``$LIGHTPRUNE_CACHE_DIR/latency``, or ``cache_dir=``), one file per key: the device (CPU model /
CUDA device name), dtype, threads, batch size, the layer's shape (kind, channels, kernel, stride,
padding, dilation, input size), the grid, the number of runs and the torch version. Identical
layers (ResNet blocks) share one entry, so a second model of the same family is mostly cached.

**Search** (:func:`greedy_search`): start from the full widths; repeatedly remove a step of
channels (``max(round_to, ~C/32)``, kept counts stay multiples of ``round_to``) from the group
with the least *importance lost per millisecond saved*, until the predicted latency reaches the
target. Importance is each group's channel importance normalised to mean 1 (so the lowest
channels go first and groups are comparable); a group never loses more than ``max_layer_ratio``.

**Rounding** (:func:`auto_round_to`): ``round_to="auto"`` is 8 for CUDA float16 / bfloat16 (tensor
cores want multiples of 8), 1 otherwise (CPU: see the benchmark in docs/benchmarks.md).

**Report** (:func:`layer_latency_report`): forward hooks record each leaf module's input once; then
each leaf is timed *in isolation* with the shared timer (torch.profiler would attribute time to
ops, not modules, and adds its own overhead; isolated timing is what the latency table does
too). The whole network is timed as well; the difference is reported as ``(unattributed)``.
"""

from __future__ import annotations

import copy
import hashlib
import heapq
import json
import math
import os
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .collect import trace_leaf_calls
from .errors import ConfigError
from .evaluation import compare_latency, inference, measure_latency
from .graph import Group, dependency_graph, group_items, pruning_group

__all__ = [
    "DEFAULT_GRID", "LayerCost", "parse_dtype", "measure_model", "measure_pair", "latency_inputs", "LatencyTable", "LayerLatencyReport", "auto_round_to", "build_latency_table",
    "cache_dir", "device_name", "greedy_search", "importance_lost", "layer_latency_report",
]

DEFAULT_GRID = (0.125, 0.25, 0.5, 0.75, 1.0)


# --------------------------------------------------------------------------------------------------
# rounding per device
# --------------------------------------------------------------------------------------------------
def auto_round_to(device: torch.device | str, dtype: torch.dtype) -> int:
    """``round_to="auto"``: 8 on CUDA with float16/bfloat16 (tensor cores), else 1."""
    dev = torch.device(device)
    return 8 if dev.type == "cuda" and dtype in (torch.float16, torch.bfloat16) else 1


def parse_dtype(dtype: torch.dtype | str | None, default: torch.dtype) -> torch.dtype:
    if dtype is None:
        return default
    if isinstance(dtype, torch.dtype):
        return dtype
    d = getattr(torch, str(dtype).replace("torch.", ""), None)
    if not isinstance(d, torch.dtype):
        raise ConfigError(f"latency_dtype={dtype!r} is not allowed; give a torch dtype such as 'float32' or 'float16'")
    return d


def device_name(device: torch.device | str) -> str:
    """A name for the cache key: the CUDA device name, or the CPU model."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """Where latency tables are cached: ``path``, or ``$LIGHTPRUNE_CACHE_DIR/latency``, or
    ``~/.cache/lightprune/latency``."""
    if path is not None:
        return Path(path)
    root = os.environ.get("LIGHTPRUNE_CACHE_DIR")
    return Path(root) / "latency" if root else Path.home() / ".cache" / "lightprune" / "latency"


# --------------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------------
def _interp(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear through (xs, ys), linear beyond the ends."""
    if len(xs) == 1:
        return float(ys[0])
    i = 0
    while i < len(xs) - 2 and x > xs[i + 1]:
        i += 1
    x0, x1, y0, y1 = xs[i], xs[i + 1], ys[i], ys[i + 1]
    return float(y0 + (y1 - y0) * (x - x0) / (x1 - x0))


@dataclass
class LayerCost:
    """Measured cost (ms) of one layer over a grid of (input channels, output channels).

    ``in_group`` / ``out_group``: index of the planned group setting that width (None: fixed).
    ``diag``: a depthwise conv (input = output channels = its group's width; ``grid_out`` only).
    ``ms[i][j]``: latency at ``grid_in[i]`` input and ``grid_out[j]`` output channels.
    """

    name: str
    cin: int
    cout: int
    in_group: int | None
    out_group: int | None
    grid_in: list[int]
    grid_out: list[int]
    ms: list[list[float]]
    diag: bool = False
    in_mult: int = 1

    def cost(self, cin: int, cout: int) -> float:
        if self.diag:
            return max(0.0, _interp(self.grid_out, self.ms[0], cout))
        rows = [_interp(self.grid_out, row, cout) for row in self.ms]
        return max(0.0, _interp(self.grid_in, rows, cin))

    def at(self, keep: Sequence[int]) -> float:
        """Cost at the kept channel counts ``keep`` (one per group)."""
        ci = keep[self.in_group] * self.in_mult if self.in_group is not None else self.cin
        co = keep[self.out_group] if self.out_group is not None else self.cout
        return self.cost(ci, co)


@dataclass
class LatencyTable:
    """Per-layer costs of a model and its measured full latency; :meth:`predict` a plan's latency."""

    layers: list[LayerCost]
    full_ms: float | None = None
    key: dict[str, Any] = field(default_factory=dict)
    measured_layers: int = 0
    cached_layers: int = 0

    def full_width(self) -> list[int]:
        n = 1 + max([c for lc in self.layers for c in (lc.in_group, lc.out_group) if c is not None], default=-1)
        widths = [0] * n
        for lc in self.layers:
            if lc.out_group is not None:
                widths[lc.out_group] = lc.cout
            if lc.in_group is not None:
                widths[lc.in_group] = lc.cin // lc.in_mult
        return widths

    def layer_sum(self, keep: Sequence[int]) -> float:
        return sum(lc.at(keep) for lc in self.layers)

    def predict(self, keep: Sequence[int], full: Sequence[int] | None = None) -> float:
        """Predicted whole-network latency (ms) at the kept channel counts per group: the measured
        full latency minus the table's savings; when the isolated layers add up to more than the
        whole network (isolated timing overhead), the savings are scaled down by
        ``full_ms / sum of layer costs at full width``."""
        s = self.layer_sum(keep)
        if self.full_ms is None:
            return s
        s_full = self.layer_sum(full if full is not None else self.full_width())
        scale = min(1.0, self.full_ms / s_full) if s_full > 0 else 1.0
        return self.full_ms - scale * (s_full - s)

    def to_dict(self) -> dict[str, Any]:
        return {"layers": [asdict(lc) for lc in self.layers], "full_ms": self.full_ms, "key": self.key}


def _key_file(directory: Path, key: Mapping[str, Any]) -> Path:
    h = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return directory / f"{h}.json"


def _grid(c: int, fractions: Sequence[float], round_to: int) -> list[int]:
    pts = set()
    for f in fractions:
        k = max(1, int(round(f * c)))
        if round_to > 1:
            k = min(c, max(round_to, int(round(k / round_to)) * round_to))
        pts.add(min(c, k))
    pts.add(c)
    return sorted(pts)


def _monotone(ms: list[list[float]]) -> list[list[float]]:
    """Noise repair: a narrower layer never costs more than a wider one (running minimum from the
    widest grid point down, on both axes). The raw measurements stay in the cache."""
    out = [list(r) for r in ms]
    for i in range(len(out) - 1, -1, -1):
        for j in range(len(out[i]) - 1, -1, -1):
            if i + 1 < len(out):
                out[i][j] = min(out[i][j], out[i + 1][j])
            if j + 1 < len(out[i]):
                out[i][j] = min(out[i][j], out[i][j + 1])
    return out


def _block(mod: nn.Module, ci: int, co: int, diag: bool) -> nn.Module:
    if isinstance(mod, nn.Linear):
        return nn.Linear(ci, co, bias=mod.bias is not None)
    conv = nn.Conv2d(ci, co, mod.kernel_size, mod.stride, mod.padding, mod.dilation, groups=co if diag else 1,
                     bias=mod.bias is not None, padding_mode=mod.padding_mode)
    return nn.Sequential(conv, nn.BatchNorm2d(co), nn.ReLU(inplace=True))


def _trace_inputs(model: nn.Module, example_inputs: torch.Tensor, types: tuple[type, ...]) -> dict[str, tuple[int, ...]]:
    """Input shape of the first call of every leaf module of ``types`` (one traced forward of one input)."""
    return {c.name: tuple(c.inp.shape) for c in trace_leaf_calls(model, example_inputs[:1])
            if c.index == 0 and isinstance(c.module, types) and isinstance(c.inp, torch.Tensor)}


def _wiring(model: nn.Module, example_inputs: torch.Tensor, groups: Sequence[Group]) -> dict[str, dict[str, Any]]:
    """For every Conv2d/Linear touched by a group: which group sets its input / output width."""
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    dg = dependency_graph(model, example_inputs[:1])
    out: dict[str, dict[str, Any]] = {}
    for gi, g in enumerate(groups):
        items = group_items(dg, pruning_group(dg, modules[g.root], [0]), names)
        for it in items:
            if it.name is None or not isinstance(it.module, (nn.Conv2d, nn.Linear)):
                continue
            m = it.module
            rec = out.setdefault(it.name, {"in": None, "out": None, "diag": False})
            dw = isinstance(m, nn.Conv2d) and m.groups > 1
            if dw:
                if m.groups != m.in_channels or m.out_channels != m.in_channels:
                    continue  # grouped (not depthwise) convs are not modelled: assumed fixed
                rec["diag"] = True
                rec["out"] = rec["in"] = gi
            elif it.output:
                rec["out"] = gi
            else:
                rec["in"] = gi
    return out


def build_latency_table(
    model: nn.Module,
    example_inputs: torch.Tensor,
    groups: Sequence[Group],
    *,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    threads: int | None = None,
    runs: int = 10,
    warmup: int = 3,
    grid: Sequence[float] = DEFAULT_GRID,
    round_to: int | None = None,
    cache: bool = True,
    cache_path: str | os.PathLike | None = None,
    measure_full: bool = True,
    measure: Callable[[nn.Module, torch.Tensor], float] | None = None,
    stat: str = "median",
) -> LatencyTable:
    """Measure (or read from the cache) the per-layer latency table of ``model`` for ``groups``.

    ``example_inputs`` gives the input size (its batch is replaced by ``batch_size``, default its
    own). ``stat``: the timer's ``"median"`` or ``"min"``; ``measure(module, x) -> ms`` replaces the
    shared timer (tests).
    """
    p = next(iter(model.parameters()), None)
    dev = torch.device(device) if device is not None else example_inputs.device
    dt = parse_dtype(dtype, p.dtype if p is not None else torch.float32)
    batch = int(batch_size or example_inputs.shape[0])
    n_threads = threads or torch.get_num_threads()
    rt = round_to if round_to and round_to > 1 else 1
    if measure is None:
        def measure(mod, x):
            return getattr(measure_latency(mod, x, runs=runs, warmup=warmup, threads=n_threads), f"{stat}_ms")
    shapes = _trace_inputs(model, example_inputs, (nn.Conv2d, nn.Linear))
    wiring = _wiring(model, example_inputs, groups)
    modules = dict(model.named_modules())
    base_key = {"device": device_name(dev), "device_type": dev.type, "dtype": str(dt), "threads": n_threads,
                "batch": batch, "runs": runs, "stat": stat, "torch": torch.__version__.split("+")[0]}
    directory = cache_dir(cache_path)
    layers: list[LayerCost] = []
    measured = cached = 0
    for name, w in wiring.items():
        mod = modules[name]
        if name not in shapes or (w["in"] is None and w["out"] is None):
            continue
        cin = mod.in_channels if isinstance(mod, nn.Conv2d) else mod.in_features
        cout = mod.out_channels if isinstance(mod, nn.Conv2d) else mod.out_features
        diag = bool(w["diag"])
        in_mult = 1
        if w["in"] is not None and not diag and cin % groups[w["in"]].channels == 0:
            in_mult = cin // groups[w["in"]].channels  # a Linear after flatten: channels x positions
        g_in = [cin] if (w["in"] is None or diag) else [k * in_mult for k in _grid(cin // in_mult, grid, rt)]
        g_out = _grid(cout, grid, rt) if w["out"] is not None else [cout]
        in_shape = list(shapes[name][1:])
        key = dict(base_key, kind=type(mod).__name__, diag=diag, cin=cin, cout=cout, in_shape=in_shape,
                   grid_in=g_in, grid_out=g_out,
                   conv=[list(mod.kernel_size), list(mod.stride), list(mod.padding), list(mod.dilation),
                         bool(mod.bias is not None)] if isinstance(mod, nn.Conv2d) else [bool(mod.bias is not None)])
        f = _key_file(directory, key)
        ms = None
        if cache and f.exists():
            try:
                data = json.loads(f.read_text())
                if data.get("key") == key:
                    ms = data["ms"]
                    cached += 1
            except (OSError, ValueError):
                ms = None
        if ms is None:
            ms = []
            for ci in g_in:
                row = []
                for co in g_out:
                    blk = _block(mod, co if diag else ci, co, diag).to(dev, dt).eval()
                    x = torch.randn(batch, co if diag else ci, *in_shape[1:], device=dev, dtype=dt)
                    row.append(float(measure(blk, x)))
                ms.append(row)
            measured += 1
            if cache:
                directory.mkdir(parents=True, exist_ok=True)
                tmp = f.with_suffix(".tmp")
                tmp.write_text(json.dumps({"key": key, "ms": ms}))
                tmp.replace(f)
        layers.append(LayerCost(name, cin, cout, w["in"], w["out"], g_in, g_out, _monotone(ms), diag, in_mult))
    full_ms = None
    if measure_full:
        full_ms = float(measure_model(model, example_inputs, batch, dev, dt, measure))
    return LatencyTable(layers, full_ms, base_key, measured, cached)


def latency_inputs(example_inputs: torch.Tensor, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A random batch of ``batch`` inputs shaped like ``example_inputs`` on ``device`` / ``dtype``."""
    return torch.randn(batch, *example_inputs.shape[1:], device=device, dtype=dtype if example_inputs.is_floating_point() else None)


def measure_model(model: nn.Module, example_inputs: torch.Tensor, batch: int, device, dtype,
                  measure: Callable[[nn.Module, torch.Tensor], float]) -> float:
    """Whole-network latency (ms) of a copy of ``model`` on ``device`` / ``dtype`` at ``batch``."""
    m = copy.deepcopy(model).to(device, dtype).eval()
    return float(measure(m, latency_inputs(example_inputs, batch, torch.device(device), dtype)))


def measure_pair(model: nn.Module, pruned: nn.Module, example_inputs: torch.Tensor, batch: int, device, dtype, *,
                 measure: Callable[[nn.Module, torch.Tensor], float] | None = None, runs: int = 10, warmup: int = 3,
                 threads: int | None = None, stat: str = "median") -> tuple[float, float, float]:
    """(original ms, pruned ms, measured reduction) of copies of both networks on ``device`` / ``dtype``
    at ``batch``. By default their runs are interleaved (:func:`lightprune.evaluation.compare_latency`)
    and the reduction is the median of the per-round ratios; with a custom ``measure`` they are timed
    back to back and the reduction is ``1 - pruned / original``."""
    dev = torch.device(device)
    x = latency_inputs(example_inputs, batch, dev, dtype)
    a, b = (copy.deepcopy(m).to(dev, dtype).eval() for m in (model, pruned))
    if measure is not None:
        m0, m1 = float(measure(a, x)), float(measure(b, x))
        return m0, m1, 1 - m1 / m0
    cmp = compare_latency([a, b], x, runs=runs, warmup=warmup, threads=threads)
    m0, m1 = (getattr(t, f"{stat}_ms") for t in cmp.latencies)
    return float(m0), float(m1), cmp.reduction(1)


# --------------------------------------------------------------------------------------------------
# search
# --------------------------------------------------------------------------------------------------
def importance_lost(importance: Sequence[torch.Tensor], keep: Sequence[int]) -> float:
    """Sum over groups of the normalised (mean 1) importance of the channels a plan removes (the
    lowest ones): what the latency search minimises."""
    total = 0.0
    for v, k in zip(importance, keep, strict=True):
        s = torch.sort(_norm(v)).values
        total += float(s[: v.numel() - k].sum())
    return total


def _norm(v: torch.Tensor) -> torch.Tensor:
    v = v.double()  # order kept (the planner keeps the largest raw values)
    m = v.abs().mean()
    return v / m if m > 0 else torch.ones_like(v)


def greedy_search(
    table: LatencyTable,
    importance: Sequence[torch.Tensor],
    target_ms: float,
    *,
    keep_floor: Sequence[int],
    max_layer_ratio: float = 0.9,
    round_to: int | None = None,
    steps_per_group: int = 32,
) -> tuple[list[int], float]:
    """Kept channels per group meeting ``table.predict(keep) <= target_ms`` with the least
    :func:`importance_lost` per millisecond saved (greedy). Returns ``(keep, predicted_ms)``;
    when the target cannot be met, the narrowest reachable plan with ``predicted_ms > target_ms``."""
    c = [v.numel() for v in importance]
    rt = round_to if round_to and round_to > 1 else 1
    full = list(c)
    keep = list(c)
    low = []
    for ci, kf in zip(c, keep_floor, strict=True):
        lo = max(kf, math.ceil((1 - max_layer_ratio) * ci - 1e-9), 1)
        lo = min(ci, math.ceil(lo / rt) * rt)
        low.append(lo)
    sorted_imp = [torch.sort(_norm(v)).values for v in importance]
    cum = [torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(s, 0)]) for s in sorted_imp]
    touch: list[list[LayerCost]] = [[] for _ in c]
    for lc in table.layers:
        for g in {lc.in_group, lc.out_group} - {None}:
            touch[g].append(lc)
    neighbours = [sorted({x for lc in touch[g] for x in (lc.in_group, lc.out_group) if x is not None}) for g in range(len(c))]
    step = [max(rt, rt * math.ceil(ci / steps_per_group / rt)) for ci in c]

    def nxt(g: int) -> int | None:
        k = keep[g]
        k2 = ((k - 1) // step[g]) * step[g]
        k2 = max(k2, low[g])
        return k2 if k2 < k else None

    def prio(g: int) -> tuple[float, int] | None:
        k2 = nxt(g)
        if k2 is None:
            return None
        before = sum(lc.at(keep) for lc in touch[g])
        old = keep[g]
        keep[g] = k2
        after = sum(lc.at(keep) for lc in touch[g])
        keep[g] = old
        d_lat = before - after
        d_imp = float(cum[g][c[g] - k2] - cum[g][c[g] - old])
        return (d_imp / d_lat if d_lat > 1e-12 else math.inf), k2

    version = [0] * len(c)
    heap: list[tuple[float, int, int, int]] = []
    for g in range(len(c)):
        p = prio(g)
        if p is not None:
            heapq.heappush(heap, (p[0], g, version[g], p[1]))
    pred = table.predict(keep, full)
    while pred > target_ms and heap:
        _, g, ver, k2 = heapq.heappop(heap)
        if ver != version[g]:
            continue
        keep[g] = k2
        pred = table.predict(keep, full)
        for n in set(neighbours[g]) | {g}:
            version[n] += 1
            p = prio(n)
            if p is not None:
                heapq.heappush(heap, (p[0], n, version[n], p[1]))
    return keep, pred


# --------------------------------------------------------------------------------------------------
# per-layer report
# --------------------------------------------------------------------------------------------------
@dataclass
class LayerLatencyReport:
    """Per-leaf-module latency before and after pruning (isolated timings, ms).

    ``rows``: ``{"layer", "type", "shape_before", "shape_after", "ms_before", "ms_after"}`` in
    execution order; ``total_before`` / ``total_after``: the whole network timed."""

    rows: list[dict[str, Any]]
    total_before: float
    total_after: float
    setting: str = ""

    def _other(self) -> tuple[float, float]:
        return (self.total_before - sum(r["ms_before"] for r in self.rows),
                self.total_after - sum(r["ms_after"] for r in self.rows))

    def to_markdown(self, top: int | None = None) -> str:
        rows = sorted(self.rows, key=lambda r: -r["ms_before"])[:top] if top else self.rows
        out = ["| layer | type | input before | input after | ms before | ms after | saved |",
               "|---|---|---|---|---:|---:|---:|"]
        for r in rows:
            out.append(f"| {r['layer']} | {r['type']} | {r['shape_before']} | {r['shape_after']} | {r['ms_before']:.3f} | "
                       f"{r['ms_after']:.3f} | {r['ms_before'] - r['ms_after']:.3f} |")
        ob, oa = self._other()
        out.append(f"| (unattributed: whole network - sum of layers) | | | | {ob:.3f} | {oa:.3f} | {ob - oa:.3f} |")
        out.append(f"| **whole network** | | | | **{self.total_before:.3f}** | **{self.total_after:.3f}** | "
                   f"**{self.total_before - self.total_after:.3f}** |")
        return "\n".join(out)

    __str__ = to_markdown

    def by_block(self, depth: int = 2) -> dict[str, tuple[float, float]]:
        """Time per block (the first ``depth`` parts of the module name, e.g. ``layer1.0``)."""
        blocks: dict[str, list[float]] = {}
        for r in self.rows:
            b = ".".join(r["layer"].split(".")[:depth])
            v = blocks.setdefault(b, [0.0, 0.0])
            v[0] += r["ms_before"]
            v[1] += r["ms_after"]
        return {k: (a, b) for k, (a, b) in blocks.items()}

    def plot(self, path: str | os.PathLike, depth: int = 2) -> Path:
        """Bar chart of where the time goes (per block), before and after; saved as PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        blocks = self.by_block(depth)
        names = list(blocks)
        xs = range(len(names))
        fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names) + 2), 4))
        ax.bar([x - 0.2 for x in xs], [blocks[n][0] for n in names], 0.4, label=f"before ({self.total_before:.1f} ms)")
        ax.bar([x + 0.2 for x in xs], [blocks[n][1] for n in names], 0.4, label=f"after ({self.total_after:.1f} ms)")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(names, rotation=90, fontsize=7)
        ax.set_ylabel("ms (isolated timing)")
        ax.set_title(f"Where the time goes {self.setting}".strip())
        ax.legend()
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def _leaf_inputs(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[nn.Module, tuple]]:
    """Each leaf module's first call in one forward pass: ``{name: (module, (input,))}`` (the shared trace)."""
    got: dict[str, tuple[nn.Module, tuple]] = {}
    for c in trace_leaf_calls(model, x):
        if c.index == 0 and c.name:
            got[c.name] = (c.module, (c.inp,))
    return got


def _shape(args: tuple) -> str:
    return "x".join(str(s) for s in args[0].shape[1:]) if args and isinstance(args[0], torch.Tensor) else "-"


def layer_latency_report(
    model_before: nn.Module,
    model_after: nn.Module,
    example_inputs: torch.Tensor,
    *,
    runs: int = 10,
    warmup: int = 3,
    threads: int | None = None,
) -> LayerLatencyReport:
    """Per-layer latency of two versions of a network on ``example_inputs`` (its device, dtype,
    batch): every leaf module timed in isolation with the shared timer on the input it receives
    in the network (recorded by a forward pre-hook), plus the whole network. Leaves are matched by
    name (pruning keeps names)."""

    def time_all(model):
        leaves = _leaf_inputs(model, example_inputs)
        res = {}
        with inference(model):
            for n, (mod, args) in leaves.items():
                a = args  # an in-place activation re-applied to its own output is a no-op: same work
                res[n] = (measure_latency(lambda _m=mod, _a=a: _m(*_a), runs=runs, warmup=warmup, threads=threads).median_ms,
                          _shape(a), type(mod).__name__)
        total = measure_latency(model, example_inputs, runs=runs, warmup=warmup, threads=threads).median_ms
        return res, total

    before, tb = time_all(model_before)
    after, ta = time_all(model_after)
    rows = []
    for n, (ms, shape, typ) in before.items():
        ms2, shape2, _ = after.get(n, (0.0, "-", typ))
        rows.append({"layer": n, "type": typ, "shape_before": shape, "shape_after": shape2, "ms_before": ms, "ms_after": ms2})
    setting = (f"({example_inputs.device}, {str(example_inputs.dtype).replace('torch.', '')}, batch {example_inputs.shape[0]}, "
               f"input {'x'.join(str(s) for s in example_inputs.shape[1:])}, {threads or torch.get_num_threads()} threads)")
    return LayerLatencyReport(rows, tb, ta, setting)
