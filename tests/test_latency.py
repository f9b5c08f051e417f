"""The latency target (lightprune.latency + planner): search on an injected deterministic latency
table, the disk cache, the unreachable-target error, round_to="auto", the params target's
granularity, the callback / compare front ends, and the per-layer report. No assertion here
depends on a measured time: every timing the search uses is injected."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

import lightprune as lp
from lightprune import latency as lat
from lightprune.collect import find_prunable_layers
from lightprune.errors import ConfigError
from lightprune.graph import count_macs_params, find_groups
from lightprune.plan import Plan

X32 = torch.zeros(1, 3, 32, 32)


def tiny():
    return lp.create_model("cifar_vgg11", 10, width_mult=0.25)


def fake_measure(module: nn.Module, x: torch.Tensor) -> float:
    """Deterministic 'latency': 1 ms per 10 MMACs of the whole batch + 0.01 ms per call (blocks of
    the latency table counted analytically: fast)."""
    first = module[0] if isinstance(module, nn.Sequential) else module
    if isinstance(first, nn.Conv2d) and isinstance(module, nn.Sequential) or isinstance(module, nn.Linear):
        if isinstance(first, nn.Linear):
            macs = first.in_features * first.out_features
        else:
            h, w = x.shape[2] // first.stride[0], x.shape[3] // first.stride[1]
            k = first.kernel_size[0] * first.kernel_size[1]
            macs = first.in_channels // first.groups * first.out_channels * k * h * w + 2 * first.out_channels * h * w
    else:
        macs, _ = count_macs_params(module, x)
    return macs * x.shape[0] / 1e7 + 0.01


# ------------------------------------------------------------------------------ synthetic table
def chain_table(widths=(16, 32, 32, 64), spatial=(1024, 256, 64, 16), fixed=1.0):
    """Conv chain: layer l maps group l-1 -> group l; cost = cin * cout * spatial_l * 1e-5 ms."""
    grid = lat.DEFAULT_GRID
    layers = []
    cin_full = 3
    for i, (c, s) in enumerate(zip(widths, spatial, strict=True)):
        gin = [cin_full] if i == 0 else sorted({max(1, round(f * cin_full)) for f in grid})
        gout = sorted({max(1, round(f * c)) for f in grid})
        ms = [[a * b * s * 1e-5 for b in gout] for a in gin]
        layers.append(lat.LayerCost(f"conv{i}", cin_full, c, None if i == 0 else i - 1, i, gin, gout, ms))
        cin_full = c
    gin = sorted({max(1, round(f * cin_full)) for f in grid})
    layers.append(lat.LayerCost("fc", cin_full, 10, len(widths) - 1, None, gin, [10], [[a * 10 * 1e-5] for a in gin]))
    full = list(widths)
    table = lat.LatencyTable(layers)
    table.full_ms = table.layer_sum(full) + fixed
    return table


def chain_importance(widths=(16, 32, 32, 64)):
    g = torch.Generator().manual_seed(0)
    # different spreads per group: some groups have many near-useless channels
    return [torch.rand(c, generator=g) ** (1 + 3 * i) for i, c in enumerate(widths)]


def uniform_keep(widths, r):
    return [c - math.floor(r * c + 0.5) for c in widths]


def test_greedy_meets_target_with_less_importance_lost_than_uniform_at_equal_latency():
    widths = (16, 32, 32, 64)
    table, imp = chain_table(widths), chain_importance(widths)
    full_ms = table.predict(list(widths))
    assert full_ms == pytest.approx(table.full_ms)
    target = 0.5 * full_ms
    keep, pred = lat.greedy_search(table, imp, target, keep_floor=[1] * 4)
    assert pred <= target
    assert all(1 <= k <= c for k, c in zip(keep, widths, strict=True))
    # the uniform plan reaching the same (or lower) predicted latency: smallest ratio, by scan
    r = next(r / 1000 for r in range(1000) if table.predict(uniform_keep(widths, r / 1000)) <= pred)
    uni = uniform_keep(widths, r)
    assert table.predict(uni) <= pred
    assert lat.importance_lost(imp, keep) < lat.importance_lost(imp, uni)


def test_greedy_respects_round_to_and_max_layer_ratio():
    widths = (16, 32, 32, 64)
    table, imp = chain_table(widths), chain_importance(widths)
    keep, _ = lat.greedy_search(table, imp, 0.4 * table.full_ms, keep_floor=[1] * 4, round_to=8, max_layer_ratio=0.75)
    assert all(k % 8 == 0 or k == c for k, c in zip(keep, widths, strict=True))
    assert all(k >= 0.25 * c for k, c in zip(keep, widths, strict=True))


def test_unreachable_latency_target_names_the_best_reachable_reduction():
    net = tiny()
    with pytest.raises(ConfigError, match=r"a reduction of 0.99 cannot be reached .* best reachable reduction is 0\.\d+"):
        lp.plan(net, lp.score(net, "l1"), strategy="latency", ratio=0.99, example_inputs=X32, latency_measure=fake_measure,
                latency_cache=False)


# ------------------------------------------------------------------------------ planner, cache, meta
def test_latency_plan_meets_the_target_on_the_injected_measure(tmp_path):
    net = tiny()
    p = lp.plan(net, lp.score(net, "l1"), strategy="latency", ratio=0.5, example_inputs=X32, latency_batch_size=4,
                latency_measure=fake_measure, latency_cache_dir=tmp_path, latency_tolerance=0.02)
    m = p.meta
    assert p.strategy == "latency" and p.target_ratio == 0.5
    assert abs(m["latency_measured_reduction"] - 0.5) <= 0.02
    assert m["latency_predicted_ms"] > 0 and m["latency_measured_ms"] > 0 and m["latency_rounds"]
    assert m["latency_setting"]["batch_size"] == 4 and m["latency_setting"]["dtype"] == "torch.float32"
    # the plan really does what meta says
    clone = copy.deepcopy(net)
    lp.prune(clone, p, X32, measure_latency=False)
    x4 = torch.zeros(4, 3, 32, 32)
    assert fake_measure(clone, x4) == pytest.approx(m["latency_measured_ms"])
    # prediction and measurement agree closely on a MAC-proportional 'device'
    assert m["latency_predicted_ms"] == pytest.approx(m["latency_measured_ms"], rel=0.1)


def test_disk_cache_key_and_hit(tmp_path):
    net = tiny()
    layers = find_prunable_layers(net, X32)
    groups = find_groups(net, X32, layers)
    calls = []

    def counting(module, x):
        calls.append(type(module).__name__)
        return fake_measure(module, x)

    t1 = lat.build_latency_table(net, X32, groups, batch_size=2, measure=counting, cache_path=tmp_path)
    files = sorted(tmp_path.glob("*.json"))
    # identical layers (two 128->128 convs at the same size) are measured once, then read back
    assert t1.measured_layers + t1.cached_layers == len(t1.layers) > 0 and t1.cached_layers >= 1
    assert len(files) == t1.measured_layers
    n_first = len(calls)
    t2 = lat.build_latency_table(net, X32, groups, batch_size=2, measure=counting, cache_path=tmp_path)
    assert t2.measured_layers == 0 and t2.cached_layers == len(t2.layers)
    assert calls[n_first:] == ["CifarVGG"]  # only the whole network was timed again
    assert [lc.ms for lc in t1.layers] == [lc.ms for lc in t2.layers]
    # another batch size is another key
    lat.build_latency_table(net, X32, groups, batch_size=3, measure=counting, cache_path=tmp_path, measure_full=False)
    assert len(sorted(tmp_path.glob("*.json"))) == 2 * len(files)
    key = __import__("json").loads(files[0].read_text())["key"]
    assert {"device", "dtype", "threads", "batch", "in_shape", "cin", "cout", "grid_in", "grid_out"} <= set(key)


def test_cache_dir_default_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("LIGHTPRUNE_CACHE_DIR", raising=False)
    assert lat.cache_dir() == Path.home() / ".cache" / "lightprune" / "latency"
    monkeypatch.setenv("LIGHTPRUNE_CACHE_DIR", str(tmp_path))
    assert lat.cache_dir() == tmp_path / "latency"


def test_round_to_auto():
    assert lat.auto_round_to("cuda", torch.float16) == 8
    assert lat.auto_round_to("cuda", torch.bfloat16) == 8
    assert lat.auto_round_to("cuda", torch.float32) == 1
    assert lat.auto_round_to("cpu", torch.float16) == 1
    net = tiny()
    s = lp.score(net, "l1")
    a = lp.plan(net, s, strategy="uniform", ratio=0.3, example_inputs=X32)  # default round_to="auto"
    b = lp.plan(net, s, strategy="uniform", ratio=0.3, example_inputs=X32, round_to=None)
    c = lp.plan(net, s, strategy="uniform", ratio=0.3, example_inputs=X32, round_to=8)
    assert {k: v.tolist() for k, v in a.keep.items()} == {k: v.tolist() for k, v in b.keep.items()}
    assert all(len(v) % 8 == 0 for v in c.keep.values())
    with pytest.raises(ConfigError, match="only for strategy='latency'"):
        lp.plan(net, s, strategy="uniform", ratio=0.3, example_inputs=X32, latency_batch_size=8)


# ------------------------------------------------------------------------------ params target granularity
def _params_of(net, groups, keep_counts, imp):
    keep, channels = {}, {}
    for g, k in zip(groups, keep_counts, strict=True):
        idx = torch.sort(torch.argsort(imp[g.root].double(), descending=True, stable=True)[:k]).values
        for m in g.members:
            keep[m], channels[m] = idx, g.channels
    clone = copy.deepcopy(net)
    lp.prune(clone, Plan(keep, channels, [g.members for g in groups]), X32, measure_latency=False)
    return count_macs_params(clone, X32)[1]


def test_params_target_is_within_one_channel_per_coupled_group():
    net = tiny()
    s = lp.score(net, "l1")
    p = lp.plan(net, s, strategy="params", ratio=0.5, example_inputs=X32)
    groups = find_groups(net, X32, find_prunable_layers(net, X32, list(s)))
    kept = [len(p.keep[g.root]) for g in groups]
    target = 0.5 * p.meta["params_before"]
    assert p.meta["params_after"] <= target
    # one more channel in every coupled group (where there is one to give back) overshoots the target
    plus_one = [min(k + 1, g.channels) for k, g in zip(kept, groups, strict=True)]
    assert _params_of(net, groups, plus_one, dict(s.items())) > target


# ------------------------------------------------------------------------------ front ends
def test_pruning_callback_accepts_the_latency_target(tmp_path):
    from lightprune.callbacks import PruningCallback
    from lightprune.data import DigitsDataModule

    module = lp.ClassificationModule("cifar_vgg11", 10, in_channels=1, model_kwargs={"width_mult": 0.25})
    cb = PruningCallback(criterion="l1", strategy="latency", ratio=0.4, at_epoch=0, samples_per_class=4, latency_batch_size=1,
                         strategy_kwargs={"latency_measure": fake_measure, "latency_cache_dir": str(tmp_path),
                                          "latency_batch_size": 2})
    t = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=1, limit_val_batches=1,
                  num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=[cb])
    t.fit(module, datamodule=DigitsDataModule(image_size=32, channels=1, batch_size=16))
    assert len(cb.history) == 1
    assert cb.history[0]["params_after"] < cb.history[0]["params_before"]
    assert cb.history[0]["strategy"] == "latency"


def test_compare_config_accepts_the_latency_target():
    from lightprune.compare import parse_config

    root = Path(__file__).resolve().parents[1]
    cfg = parse_config(["--config", str(root / "configs" / "compare_criteria.yaml"), "--strategy", "latency",
                        "--strategy_options", "{latency_batch_size: 8}"])
    assert cfg.strategy == "latency"


def test_engine_spec_passes_the_latency_target_through(tmp_path):
    from lightprune.engine import PruneSpec, plan_for_spec

    net = tiny()
    spec = PruneSpec(strategy="latency", ratio=0.3, strategy_kwargs={"latency_measure": fake_measure,
                                                                    "latency_cache_dir": str(tmp_path)})
    p = plan_for_spec(net, lp.score(net, "l1"), spec, X32)
    assert p.strategy == "latency" and abs(p.meta["latency_measured_reduction"] - 0.3) <= 0.02


# ------------------------------------------------------------------------------ report
def test_layer_latency_report_table_and_plot(tmp_path):
    net = tiny()
    after = copy.deepcopy(net)
    lp.prune(after, lp.plan(after, lp.score(after, "l1"), ratio=0.5, example_inputs=X32), X32, measure_latency=False)
    rep = lat.layer_latency_report(net, after, torch.zeros(2, 3, 32, 32), runs=2, warmup=1)
    names = [r["layer"] for r in rep.rows]
    assert names[0] == "features.0" and "classifier.2" in names
    row = rep.rows[names.index("features.4")]
    assert row["shape_before"] == "16x16x16" and row["shape_after"] == "8x16x16" and row["type"] == "Conv2d"
    assert all(r["ms_before"] >= 0 and r["ms_after"] >= 0 for r in rep.rows)
    md = rep.to_markdown()
    assert "| features.4 | Conv2d | 16x16x16 | 8x16x16 |" in md and "whole network" in md
    png = rep.plot(tmp_path / "where.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(rep.by_block(1)) == {"features", "avgpool", "classifier"}


def test_bad_latency_options_name_the_option():
    net = tiny()
    s = lp.score(net, "l1")
    with pytest.raises(ConfigError, match=r"latency_stat='mean' is not allowed"):
        lp.plan(net, s, strategy="latency", ratio=0.3, example_inputs=X32, latency_stat="mean")
    with pytest.raises(ConfigError, match=r"unknown latency option\(s\) \['latency_batchsize'\]"):
        lp.plan(net, s, strategy="latency", ratio=0.3, example_inputs=X32, latency_batchsize=8)
    with pytest.raises(ConfigError, match=r"does not take \['normalize'\]"):
        lp.plan(net, s, strategy="latency", ratio=0.3, example_inputs=X32, normalize="rank")


# ------------------------------------------------------------------------------ interleaved timing
def test_compare_latency_interleaves_rounds_and_rotates_the_order():
    from lightprune.evaluation import compare_latency

    log = []
    calls = [lambda n=n: log.append(n) for n in "abc"]
    cmp = compare_latency(calls, runs=4, warmup=0)
    # round r starts with network r mod 3, then the next ones in order (torch's Timer.timeit makes
    # two untimed calls before each timed one: consecutive calls of one network are one run)
    import itertools

    assert "".join(k for k, _ in itertools.groupby(log)) == "abc" + "bca" + "cab" + "abc"
    assert cmp.ratios[0] == 1.0 and all(t.runs == 4 for t in cmp.latencies)


def test_compare_latency_ratio_is_the_median_of_per_round_ratios(monkeypatch):
    from torch.utils import benchmark

    from lightprune import evaluation

    # a 'machine' that slows down 10x half-way: block-wise timing would see a 10x slower second
    # network; the per-round ratio is 0.5 in every round
    clock = {"n": 0}

    class FakeTimer:
        def __init__(self, stmt, globals, num_threads):
            self.cost = globals["call"]()

        def timeit(self, number):
            clock["n"] += 1
            slow = 10.0 if clock["n"] > 6 else 1.0
            return type("M", (), {"median": self.cost * slow * number})()

    monkeypatch.setattr(benchmark, "Timer", FakeTimer)
    cmp = evaluation.compare_latency([lambda: 2.0, lambda: 1.0], runs=6, warmup=0)
    assert cmp.ratios[1] == pytest.approx(0.5) and cmp.reduction(1) == pytest.approx(0.5)


def test_compare_latency_bad_input():
    from lightprune.evaluation import compare_latency

    with pytest.raises(ConfigError, match="models is empty"):
        compare_latency([], torch.zeros(1, 3))
    with pytest.raises(ConfigError, match=r"runs=0 is not allowed"):
        compare_latency([nn.Linear(3, 2)], torch.zeros(1, 3), runs=0)
    with pytest.raises(ConfigError, match="example_inputs is needed"):
        compare_latency([nn.Linear(3, 2)])
