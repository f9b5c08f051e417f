"""Surgery (src/lightprune/surgery.py): exact channel removal on six architectures, VGG-16 MACs,
restore + state_dict reload, PruneReport and input validation.

Exactness is checked against a deepcopy taken before pruning, module by module: every Conv2d,
Linear and BatchNorm of the model has an expected (output index, input index) slice of the
original, derived here from the architecture by hand (next conv's ``weight[:, keep]``, residual
streams, DenseNet concatenation offsets, the 7x7 flatten of torchvision VGG). BatchNorm weights,
biases and running statistics are randomised first, so a wrong slice cannot pass by accident.
"""

from __future__ import annotations

import copy
import io
import json

import pytest
import torch
from torch import nn

import lightprune as lp
from lightprune.errors import ConfigError
from lightprune.planner import Plan
from lightprune.surgery import PruneReport, count_macs_params

Idx = torch.Tensor | None  # None = every index of that dimension


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def randomise_non_conv_state(model: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorm affine + running stats and all biases random (they are 1/0 after init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model


def sl(t: torch.Tensor, out: Idx, inp: Idx = None) -> torch.Tensor:
    if out is not None:
        t = t[out]
    if inp is not None:
        t = t[:, inp]
    return t


def check_slices(orig: nn.Module, pruned: nn.Module, spec: dict[str, tuple[Idx, Idx]]) -> int:
    """Every Conv2d/Linear/BatchNorm must be in ``spec`` and equal its original's slice. Returns how many
    tensors were compared."""
    om, pm = dict(orig.named_modules()), dict(pruned.named_modules())
    kinds = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)
    assert {n for n, m in om.items() if isinstance(m, kinds)} == set(spec), "spec must cover every layer"
    compared = 0
    for name, (out, inp) in spec.items():
        o, p = om[name], pm[name]
        if isinstance(o, (nn.Conv2d, nn.Linear)):
            if isinstance(o, nn.Conv2d) and o.groups > 1:
                assert o.groups == o.in_channels == o.out_channels  # depthwise: out only
                assert inp is None
                assert p.groups == p.in_channels == p.out_channels == (len(out) if out is not None else o.out_channels)
            pairs = [("weight", sl(o.weight, out, inp), p.weight)]
            if o.bias is not None:
                pairs.append(("bias", sl(o.bias, out), p.bias))
        else:
            pairs = [(a, sl(getattr(o, a), out), getattr(p, a)) for a in ("weight", "bias", "running_mean", "running_var")]
            assert p.num_features == pairs[0][1].numel()
        for attr, want, got in pairs:
            assert got.shape == want.shape, (name, attr, tuple(got.shape), tuple(want.shape))
            assert torch.equal(got, want), (name, attr)
            compared += 1
    return compared


def cat_idx(segments: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """Kept indices of a concatenation: segment (original offset, kept indices inside the segment)."""
    return torch.cat([off + k for off, k in segments])


def vgg_spec(model: nn.Module, keep: dict[str, torch.Tensor], flatten: int) -> dict:
    spec, prev, last_conv = {}, None, None
    for i, m in enumerate(model.features):
        name = f"features.{i}"
        if isinstance(m, nn.Conv2d):
            spec[name] = (keep[name], prev)
            prev, last_conv = keep[name], name
        elif isinstance(m, nn.BatchNorm2d):
            spec[name] = (keep[last_conv], None)
    # flatten: channel c of the last conv becomes features c*flatten ... c*flatten + flatten-1
    inp = (prev[:, None] * flatten + torch.arange(flatten)).reshape(-1)
    linears = [f"classifier.{i}" for i, m in enumerate(model.classifier) if isinstance(m, nn.Linear)]
    for name in linears[:-1]:
        spec[name] = (keep[name], inp)
        inp = keep[name]
    spec[linears[-1]] = (None, inp)
    return spec


def resnet_spec(model: nn.Module, keep: dict[str, torch.Tensor]) -> dict:
    spec = {"conv1": (keep["conv1"], None), "bn1": (keep["conv1"], None)}
    stream = keep["conv1"]
    for s in range(1, 5):
        layer = getattr(model, f"layer{s}")
        new_stream = keep[f"layer{s}.0.downsample.0"] if layer[0].downsample is not None else stream
        for b, blk in enumerate(layer):
            pre = f"layer{s}.{b}"
            inp = stream if b == 0 else new_stream
            convs = ["conv1", "conv2", "conv3"] if hasattr(blk, "conv3") else ["conv1", "conv2"]
            prev = inp
            for i, c in enumerate(convs, 1):
                out = keep[f"{pre}.{c}"]
                spec[f"{pre}.{c}"] = (out, prev)
                spec[f"{pre}.bn{i}"] = (out, None)
                prev = out
            # the residual addition couples the block's last conv with the stream: same channels
            assert torch.equal(prev, new_stream), f"{pre}: last conv and residual stream disagree"
            if blk.downsample is not None:
                spec[f"{pre}.downsample.0"] = (new_stream, inp)
                spec[f"{pre}.downsample.1"] = (new_stream, None)
        stream = new_stream
    spec["fc"] = (None, stream)
    return spec


def mobilenet_v2_spec(model: nn.Module, keep: dict[str, torch.Tensor]) -> dict:
    spec = {"features.0.0": (keep["features.0.0"], None), "features.0.1": (keep["features.0.0"], None)}
    prev = keep["features.0.0"]
    for i in range(1, 18):
        blk, pre = model.features[i], f"features.{i}.conv"
        if len(blk.conv) == 3:  # expand ratio 1: depthwise, projection, BN
            spec[f"{pre}.0.0"] = (prev, None)
            spec[f"{pre}.0.1"] = (prev, None)
            kp = keep[f"{pre}.1"]
            spec[f"{pre}.1"] = (kp, prev)
            spec[f"{pre}.2"] = (kp, None)
        else:  # expansion, depthwise, projection, BN
            ke, kp = keep[f"{pre}.0.0"], keep[f"{pre}.2"]
            spec[f"{pre}.0.0"] = (ke, prev)
            spec[f"{pre}.0.1"] = (ke, None)
            spec[f"{pre}.1.0"] = (ke, None)  # depthwise follows its expansion conv
            spec[f"{pre}.1.1"] = (ke, None)
            spec[f"{pre}.2"] = (kp, ke)
            spec[f"{pre}.3"] = (kp, None)
        if blk.use_res_connect:
            assert torch.equal(kp, prev), f"features.{i}: residual projection and its input disagree"
        prev = kp
    k18 = keep["features.18.0"]
    spec["features.18.0"] = (k18, prev)
    spec["features.18.1"] = (k18, None)
    spec["classifier.1"] = (None, k18)
    return spec


def densenet_spec(model: nn.Module, keep: dict[str, torch.Tensor]) -> dict:
    f = model.features
    spec = {"features.conv0": (keep["features.conv0"], None), "features.norm0": (keep["features.conv0"], None)}
    segs, width = [(0, keep["features.conv0"])], f.conv0.out_channels
    for b in range(1, 5):
        block = getattr(f, f"denseblock{b}")
        for ln, layer in enumerate(block.children(), 1):
            pre = f"features.denseblock{b}.denselayer{ln}"
            inp = cat_idx(segs)  # torch.cat([block input, new features of earlier layers], 1)
            k1, k2 = keep[f"{pre}.conv1"], keep[f"{pre}.conv2"]
            spec[f"{pre}.norm1"] = (inp, None)
            spec[f"{pre}.conv1"] = (k1, inp)
            spec[f"{pre}.norm2"] = (k1, None)
            spec[f"{pre}.conv2"] = (k2, k1)
            segs.append((width, k2))
            width += layer.conv2.out_channels
        if b < 4:
            t = f"features.transition{b}"
            inp, kt = cat_idx(segs), keep[f"{t}.conv"]
            spec[f"{t}.norm"] = (inp, None)
            spec[f"{t}.conv"] = (kt, inp)
            segs, width = [(0, kt)], getattr(f, f"transition{b}").conv.out_channels
    spec["features.norm5"] = (cat_idx(segs), None)
    spec["classifier"] = (None, cat_idx(segs))
    return spec


# (model name, input size, criterion, spec builder, slow)
ARCHS = {
    "cifar_vgg16": (32, "l1", lambda m, k: vgg_spec(m, k, 1)),
    "vgg16": (64, "l1", lambda m, k: vgg_spec(m, k, 49)),
    "resnet18": (64, "l1", resnet_spec),
    "resnet50": (64, "random", resnet_spec),
    "mobilenet_v2": (64, "random", mobilenet_v2_spec),
    "densenet121": (32, "l1", densenet_spec),  # its smallest input: the forward passes dominate here
}
SLOW = {"vgg16", "densenet121"}

_CACHE: dict[str, dict] = {}


def pruned_case(name: str) -> dict:
    """Build (seeded), randomise BN/biases, score, plan 50 % uniform, prune a copy; cached per module."""
    if name not in _CACHE:
        size, crit, _ = ARCHS[name]
        torch.manual_seed(0)
        orig = randomise_non_conv_state(lp.create_model(name, 10)).eval()
        x = torch.zeros(1, 3, size, size)
        scores = lp.score(orig, crit, progress=False)
        plan = lp.plan(orig, scores, strategy="uniform", ratio=0.5, example_inputs=x)
        net = copy.deepcopy(orig)
        report = lp.prune(net, plan, x, measure_latency=False)
        _CACHE[name] = {"orig": orig, "net": net.eval(), "plan": plan, "report": report, "size": size}
    return _CACHE[name]


def arch_params():
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in ARCHS]


# --------------------------------------------------------------------------------------------------
# 1. exact channel removal on six architectures
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", arch_params())
def test_prune_half_keeps_exactly_the_planned_channels(name):
    case = pruned_case(name)
    orig, net, plan, report = case["orig"], case["net"], case["plan"], case["report"]
    # scores are not trivial: the kept channels are not simply the first ones
    assert sum(not torch.equal(k, torch.arange(len(k))) for k in plan.keep.values()) >= len(plan.keep) // 2
    for n, k in plan.keep.items():
        assert len(k) == plan.channels[n] // 2  # round(0.5 * C) removed, half-up
    compared = check_slices(orig, net, ARCHS[name][2](orig, plan.keep))
    assert compared > 2 * len(plan.keep)

    x = torch.randn(2, 3, case["size"], case["size"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, 10) and torch.isfinite(y).all()

    macs0, params0 = count_macs_params(orig, x)
    macs1, params1 = count_macs_params(net, x)
    assert (report.macs_before, report.params_before, report.macs_after, report.params_after) == (macs0, params0, macs1, params1)
    print(
        f"\n{name}@{case['size']}: params {params0:,} -> {params1:,} ({params1 / params0:.3f}), "
        f"MACs {macs0:,} -> {macs1:,} ({macs1 / macs0:.3f}), {len(plan.keep)} layers in {len(plan.groups)} groups"
    )
    # removing half of the channels of nearly every layer leaves roughly a quarter of the work
    assert params1 < 0.4 * params0 and macs1 < 0.4 * macs0


# --------------------------------------------------------------------------------------------------
# 2. VGG-16 at 224 x 224: conv MACs fall to a quarter
# --------------------------------------------------------------------------------------------------
def conv_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Sum over Conv2d of out * in / groups * kh * kw * H_out * W_out (per sample), via forward hooks."""
    total = [0]

    def hook(m, args, out):
        kh, kw = m.kernel_size
        total[0] += m.out_channels * (m.in_channels // m.groups) * kh * kw * out.shape[2] * out.shape[3]

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model.eval()(x[:1])
    finally:
        for h in hs:
            h.remove()
    return total[0]


@pytest.mark.slow
def test_vgg16_uniform_half_quarters_conv_macs():
    """torchvision vgg16 at 224 x 224, uniform 50 % (L1): conv MACs after / before within 2 % of 1/4.

    Expected after pruning: sum_l c'_l * c'_{l-1} * 9 * H_l * W_l with c'_l = c_l - round(c_l / 2)
    = c_l / 2 (VGG widths are even) and c'_0 = 3 (the image is not pruned): every conv is exactly a
    quarter except the first, which halves. Before: 15,346,630,656 conv MACs (of torch-pruning's
    15.50 G total); after: 3,858,333,696 = 0.25141 of before (the half-pruned first conv adds 0.00141).
    """
    torch.manual_seed(0)
    net = lp.create_model("vgg16", 1000).eval()
    x224 = torch.zeros(1, 3, 224, 224)
    before = conv_macs(net, x224)
    x = torch.zeros(1, 3, 64, 64)  # the plan and surgery do not depend on the image size
    plan = lp.plan(net, lp.score(net, "l1", progress=False), strategy="uniform", ratio=0.5, example_inputs=x)
    convs = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    spatial = [224, 224, 112, 112, 56, 56, 56, 28, 28, 28, 14, 14, 14]
    c_before = [net.get_submodule(n).out_channels for n in convs]
    lp.prune(net, plan, x, measure_latency=False)
    after = conv_macs(net, x224)

    c_after = [len(plan.keep[n]) for n in convs]
    assert c_after == [c // 2 for c in c_before]
    exp_before = sum(c * ci * 9 * s * s for c, ci, s in zip(c_before, [3, *c_before[:-1]], spatial, strict=True))
    exp_after = sum(c * ci * 9 * s * s for c, ci, s in zip(c_after, [3, *c_after[:-1]], spatial, strict=True))
    assert before == exp_before == 15_346_630_656
    assert after == exp_after == 3_858_333_696
    ratio = after / before
    print(f"\nvgg16@224 conv MACs: {before:,} -> {after:,} = {ratio:.5f} of before (expected {exp_after / exp_before:.5f})")
    assert abs(ratio / 0.25 - 1) < 0.02


# --------------------------------------------------------------------------------------------------
# 4. restore + state_dict: bit-exact outputs
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name", ["cifar_vgg16", "resnet18", pytest.param("densenet121", marks=pytest.mark.slow)]
)
def test_restore_reproduces_outputs_bit_exactly(name):
    case = pruned_case(name)
    net, plan = case["net"], case["plan"]
    d = json.loads(json.dumps(plan.to_dict()))  # what a checkpoint or a YAML file would hold
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)

    torch.manual_seed(123)  # different random weights: everything must come from the state dict
    fresh = lp.create_model(name, 10)
    with pytest.raises(RuntimeError, match="size mismatch"):
        fresh.load_state_dict(state)
    restored = lp.restore(fresh, d)  # input shape from plan.meta["input_shape"]
    assert restored is fresh
    fresh.load_state_dict(state)
    fresh.eval()
    x = torch.randn(3, 3, case["size"], case["size"], generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(fresh(x), net(x))
    for (n1, t1), (n2, t2) in zip(fresh.state_dict().items(), net.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(t1, t2)


# --------------------------------------------------------------------------------------------------
# 5. PruneReport and errors
# --------------------------------------------------------------------------------------------------
@pytest.fixture()
def tiny_vgg():
    torch.manual_seed(0)
    return lp.create_model("cifar_vgg16", 10, width_mult=0.25).eval()


X32 = torch.zeros(1, 3, 32, 32)


def test_prune_report(tiny_vgg):
    plan = lp.plan(tiny_vgg, lp.score(tiny_vgg, "l1", progress=False), strategy="global", ratio=0.4, example_inputs=X32)
    report = lp.prune(tiny_vgg, plan, torch.zeros(4, 3, 32, 32), measure_latency=True, latency_runs=2)
    assert isinstance(report, PruneReport)
    assert report.channels_before == plan.channels
    assert report.channels_after == {n: len(k) for n, k in plan.keep.items()}
    assert report.channels_after != report.channels_before
    for n, c in report.channels_after.items():
        assert tiny_vgg.get_submodule(n).weight.shape[0] == c
    for lat in (report.latency_before, report.latency_after):
        assert {"median_ms", "batch_size", "threads"} <= set(lat)
        assert lat["median_ms"] > 0 and lat["batch_size"] == 4 and lat["threads"] >= 1 and lat["runs"] == 2
    assert report.params_after < report.params_before and report.macs_after < report.macs_before
    assert report.bias_balanced == []
    text = str(report)
    rows = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert f"{report.params_before:,}" in rows["params"] and f"{report.params_after:,}" in rows["params"]
    assert f"{report.macs_before:,}" in rows["MACs"] and f"{report.macs_after:,}" in rows["MACs"]
    assert "latency" in text
    assert json.dumps(report.to_dict())  # plain data


def test_prune_accepts_plan_dict_and_noop_plan(tiny_vgg):
    s = lp.score(tiny_vgg, "l1", progress=False)
    ref = copy.deepcopy(tiny_vgg)
    p0 = lp.plan(tiny_vgg, s, ratio=0.0, example_inputs=X32)
    r = lp.prune(tiny_vgg, p0.to_dict(), X32, measure_latency=False)
    assert r.params_after == r.params_before
    with torch.no_grad():
        assert torch.equal(tiny_vgg(X32 + 1), ref(X32 + 1))


def test_prune_errors(tiny_vgg):
    s = lp.score(tiny_vgg, "l1", progress=False)
    plan = lp.plan(tiny_vgg, s, ratio=0.5, example_inputs=X32)
    d = plan.to_dict()

    missing = copy.deepcopy(d)
    missing["keep"]["features.99"] = [0]
    missing["channels"]["features.99"] = 4
    missing["groups"].append(["features.99"])
    with pytest.raises(ConfigError, match="names layer 'features.99', which the model does not have"):
        lp.prune(copy.deepcopy(tiny_vgg), missing, X32, measure_latency=False)

    wrong = copy.deepcopy(d)
    wrong["channels"]["features.0"] = 32
    with pytest.raises(ConfigError, match="expects 32 channels in 'features.0' but the model has 16"):
        lp.prune(copy.deepcopy(tiny_vgg), wrong, X32, measure_latency=False)
    with pytest.raises(ConfigError, match="expects 32 channels"):
        lp.restore(copy.deepcopy(tiny_vgg), wrong)

    with pytest.raises(ConfigError, match="bias_balancing=True needs batches="):
        lp.prune(copy.deepcopy(tiny_vgg), plan, X32, bias_balancing=True, measure_latency=False)
    with pytest.raises(ConfigError, match="no mean input for consumer"):
        lp.prune(copy.deepcopy(tiny_vgg), plan, X32, bias_balancing=True, means={}, measure_latency=False)

    with pytest.raises(ConfigError, match="example_inputs is needed"):
        lp.plan(tiny_vgg, s, ratio=0.5)
    with pytest.raises(ConfigError, match="strategy='nope' is not allowed"):
        lp.plan(tiny_vgg, s, strategy="nope", ratio=0.5, example_inputs=X32)
    for bad in (1.0, 1.2):
        with pytest.raises(ConfigError, match=f"ratio={bad} is not allowed"):
            lp.plan(tiny_vgg, s, ratio=bad, example_inputs=X32)
    no_shape = copy.deepcopy(d)
    no_shape["meta"] = {}
    with pytest.raises(ConfigError, match="no meta\\['input_shape'\\]"):
        lp.restore(copy.deepcopy(tiny_vgg), no_shape)
    # nothing above modified the model
    assert tiny_vgg.features[0].out_channels == 16


def test_prune_refuses_partial_coupled_groups():
    """resnet18: the stem conv is coupled with layer1's block outputs; a plan that lists only one
    of them, or removes different channels from them, is refused (never prunes unlisted layers)."""
    torch.manual_seed(0)
    net = lp.create_model("resnet18", 10).eval()
    x = torch.zeros(1, 3, 32, 32)
    only = Plan({"layer1.0.conv2": torch.arange(32)}, {"layer1.0.conv2": 64}, [["layer1.0.conv2"]])
    with pytest.raises(ConfigError, match=r"would also remove output channels of '(conv1|layer1\.1\.conv2)', which the plan does not list"):
        lp.prune(net, only, x, measure_latency=False)
    members = ["conv1", "layer1.0.conv2", "layer1.1.conv2"]
    keep = {m: torch.arange(32) for m in members}
    keep["layer1.1.conv2"] = torch.arange(1, 33)
    bad = Plan(keep, dict.fromkeys(members, 64), [members])
    with pytest.raises(ConfigError, match="removes different channels from coupled layers 'conv1' and 'layer1.1.conv2'"):
        lp.prune(net, bad, x, measure_latency=False)
    assert net.conv1.out_channels == 64
