"""Recovery services (lightprune.recovery): BatchNorm recalibration, least-squares reconstruction,
distillation, optimizer state through a prune. References: plain loops, numpy least squares,
hand-computed losses, explicit slicing with the plan's kept indices."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightprune as lp
from lightprune.errors import ConfigError
from lightprune.evaluation import evaluate
from lightprune.recovery import (
    LayerFit,
    Teacher,
    distillation_loss,
    index_maps,
    recalibrate_bn,
    reconstruct,
    restore_optimizer_state,
    snapshot_optimizer_state,
)

HERE = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------------------------
# BatchNorm recalibration
# ------------------------------------------------------------------------------------------------
def conv_bn_net() -> nn.Sequential:
    """conv -> BN -> ReLU -> Dropout -> conv -> BN: the second BN sees the first BN's batch-normalised
    output with dropout off."""
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
        nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5, momentum=0.3),
    ).double()
    with torch.no_grad():  # stale statistics, to be replaced
        for bn in (net[1], net[5]):
            bn.running_mean.fill_(7.0)
            bn.running_var.fill_(0.01)
            bn.weight.uniform_(0.5, 2)
            bn.bias.uniform_(-1, 1)
    return net


def plain_stats(values: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and unbiased variance over all images and positions, by a plain loop."""
    channels = values[0].shape[1]
    per_channel: list[list[float]] = [[] for _ in range(channels)]
    for out in values:
        for img in out:
            for c in range(channels):
                per_channel[c].extend(img[c].reshape(-1).tolist())
    mean = torch.tensor([sum(v) / len(v) for v in per_channel], dtype=torch.float64)
    var = torch.tensor(
        [sum((a - m) ** 2 for a in v) / (len(v) - 1) for v, m in zip(per_channel, mean.tolist(), strict=True)],
        dtype=torch.float64,
    )
    return mean, var


@pytest.mark.parametrize("form", ["tuple", "dict", "tensor"])
def test_recalibrate_equals_plain_mean_and_unbiased_variance(form):
    net = conv_bn_net()
    net.train()
    net[5].eval()  # a frozen BN inside a training network stays frozen afterwards
    modes = [m.training for m in net.modules()]
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(n, 3, 5, 5, generator=g, dtype=torch.float64) * 2 + 1 for n in (7, 5, 3)]  # unequal batches
    labels = [torch.zeros(len(x), dtype=torch.long) for x in xs]
    batches = {
        "tuple": list(zip(xs, labels, strict=True)),
        "dict": [{"image": x, "label": y} for x, y in zip(xs, labels, strict=True)],
        "tensor": xs,
    }[form]
    ref = copy.deepcopy(net)

    n = recalibrate_bn(net, batches)

    assert n == 15
    assert [m.training for m in net.modules()] == modes
    assert net[1].momentum == 0.1 and net[5].momentum == 0.3
    assert int(net[1].num_batches_tracked) == 3 and int(net[5].num_batches_tracked) == 3
    # first BN: statistics of the first conv's output over all 15 images
    with torch.no_grad():
        first = [ref[0](x) for x in xs]
        mean, var = plain_stats(first)
        torch.testing.assert_close(net[1].running_mean, mean, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(net[1].running_var, var, rtol=1e-10, atol=1e-12)
        # second BN: the first BN normalises each batch with that batch's statistics (as in training),
        # ReLU, dropout off (identity), second conv
        second = []
        for out in first:
            h = F.batch_norm(out, None, None, ref[1].weight, ref[1].bias, True, 0.0, ref[1].eps)
            second.append(ref[4](torch.relu(h)))
        mean, var = plain_stats(second)
    torch.testing.assert_close(net[5].running_mean, mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(net[5].running_var, var, rtol=1e-10, atol=1e-12)
    # nothing but the BN buffers changed
    for (k, v), (_, w) in zip(net.state_dict().items(), ref.state_dict().items(), strict=True):
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(v, w), k


def test_recalibrate_leaves_a_norm_the_forward_never_reaches():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.unused = nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2), nn.BatchNorm2d(2, momentum=0.5)

        def forward(self, x):
            return self.bn(self.conv(x))

    net = Branchy()
    unused = copy.deepcopy(net.unused.state_dict())
    assert recalibrate_bn(net, [torch.randn(3, 3, 4, 4)]) == 3
    assert int(net.bn.num_batches_tracked) == 1
    assert all(torch.equal(v, unused[k]) for k, v in net.unused.state_dict().items())


def test_recalibrate_max_batches_and_progress():
    net = conv_bn_net()
    xs = [torch.randn(4, 3, 5, 5, dtype=torch.float64) for _ in range(5)]
    assert recalibrate_bn(net, xs, max_batches=2, progress=True) == 8
    assert int(net[1].num_batches_tracked) == 2
    mean, _ = plain_stats([net[0](x).detach() for x in xs[:2]])
    torch.testing.assert_close(net[1].running_mean, mean)


def test_recalibrate_without_batchnorm_leaves_the_network_alone():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4, track_running_stats=False))
    before = copy.deepcopy(net.state_dict())

    def never():
        raise AssertionError("the batches must not be read")
        yield

    assert recalibrate_bn(net, never()) == 0
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_recalibrate_errors():
    net = conv_bn_net()
    state = copy.deepcopy(net.state_dict())
    with pytest.raises(ConfigError, match="holds no image"):
        recalibrate_bn(net, [])
    with pytest.raises(ConfigError, match=r"batches=NoneType is not allowed"):
        recalibrate_bn(net, None)
    with pytest.raises(ConfigError, match=r"max_batches=0 is not allowed"):
        recalibrate_bn(net, [torch.zeros(2, 3, 5, 5)], max_batches=0)
    net.train()
    bad = [torch.zeros(2, 3, 5, 5, dtype=torch.float64), torch.zeros(2, 1, 5, 5, dtype=torch.float64)]
    with pytest.raises(ConfigError, match=r"shape \(2, 1, 5, 5\).*first layer '0' \(Conv2d\) expects inputs of shape \(N, 3, H, W\)"):
        recalibrate_bn(net, bad)
    # nothing written, modes restored
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert all(m.training for m in net.modules())
    vgg = lp.create_model("cifar_vgg11", 10, width_mult=0.25)
    with pytest.raises(ConfigError, match=r"shape \(2, 1, 32, 32\).*'features.0' \(Conv2d\) expects .*\(N, 3, H, W\)"):
        recalibrate_bn(vgg, [torch.zeros(2, 1, 32, 32)])


@pytest.mark.slow
def test_two_process_recalibration_and_reconstruction_equal_single_process(tmp_path):
    """2 gloo processes with unequal shards: identical statistics and refit weights on both ranks,
    equal to one process on the union of the shards."""
    from ddp_recovery_worker import make_data, run, shard

    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(HERE / "ddp_recovery_worker.py"), str(tmp_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-4000:]
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"ranks disagree on {k}"
    x = make_data()
    single = run(shard(x, 0) + shard(x, 1))
    assert int(r0["images"]) == int(single["images"]) == 40
    assert int(r0["bn.1.num_batches_tracked"]) == 5 + 4
    for k, v in single.items():
        torch.testing.assert_close(r0[k], v, rtol=1e-9, atol=1e-10, msg=lambda m, k=k: f"{k}: {m}")


# ------------------------------------------------------------------------------------------------
# least-squares reconstruction
# ------------------------------------------------------------------------------------------------
def test_reconstruct_recovers_an_exactly_redundant_input():
    """Hidden unit 3 is an exact linear combination of units 0-2: removing it and refitting the
    next Linear recovers the original output."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3)).double()
    with torch.no_grad():
        net[0].weight[3] = 0.5 * net[0].weight[0] - 2.0 * net[0].weight[1] + net[0].weight[2]
        net[0].bias[3] = 0.5 * net[0].bias[0] - 2.0 * net[0].bias[1] + net[0].bias[2]
    original = copy.deepcopy(net)
    plan = lp.Plan({"0": torch.tensor([0, 1, 2])}, {"0": 4}, [["0"]])
    x = torch.randn(50, 4, dtype=torch.float64)
    lp.prune(net, plan, x, measure_latency=False)
    assert net[1].in_features == 3

    fit = reconstruct(net, original, [x[:20], x[20:]], plan=plan, ridge=0.0)

    assert list(fit) == ["1"] and isinstance(fit["1"], LayerFit)
    assert fit["1"].before > 0.05 and fit["1"].after < 1e-6
    assert fit["1"].rows == 50 and fit["1"].inputs == 4 and fit["1"].intercept == "bias"
    with torch.no_grad():
        torch.testing.assert_close(net(x), original(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(net[0].weight, original[0].weight[:3])  # only the refit layer changes


def test_reconstruct_gram_accumulation_equals_numpy_lstsq():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    original = copy.deepcopy(net)
    plan = lp.Plan({"0": torch.tensor([0, 2, 3, 6, 7])}, {"0": 8}, [["0"]])
    g = torch.Generator().manual_seed(2)
    xs = [torch.randn(n, 5, generator=g, dtype=torch.float64) for n in (7, 9, 4, 11)]
    lp.prune(net, plan, xs[0], measure_latency=False)
    with torch.no_grad():
        x = torch.cat(xs)
        X = torch.relu(net[0](x)).numpy()  # pruned layer's inputs
        Y = original(x).numpy()  # original layer's outputs
    theta, *_ = np.linalg.lstsq(np.hstack([X, np.ones((len(X), 1))]), Y, rcond=None)

    fit = reconstruct(net, original, [(b, torch.zeros(len(b))) for b in xs], plan=plan, ridge=0.0)

    assert fit["2"].rows == 31
    np.testing.assert_allclose(net[2].weight.detach().numpy(), theta[:5].T, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(net[2].bias.detach().numpy(), theta[5], rtol=1e-9, atol=1e-10)
    # the reported error is the relative residual of that fit
    resid = np.linalg.norm(np.hstack([X, np.ones((len(X), 1))]) @ theta - Y) / np.linalg.norm(Y)
    assert fit["2"].after == pytest.approx(resid, rel=1e-6)


def conv_pair(bias: bool = True):
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, stride=2, padding=1, bias=bias)).double()
    original = copy.deepcopy(net)
    plan = lp.Plan({"0": torch.tensor([1, 2, 4, 5])}, {"0": 6}, [["0"]])
    return net, original, plan


def test_reconstruct_conv_unfold_equals_direct_ridge_solution():
    net, original, plan = conv_pair()
    g = torch.Generator().manual_seed(5)
    xs = [torch.randn(n, 3, 7, 7, generator=g, dtype=torch.float64) for n in (3, 2)]
    lp.prune(net, plan, xs[0], measure_latency=False)
    # direct: explicit patches by loops over output positions (stride 2, padding 1, 3x3 kernel)
    rows, targets = [], []
    with torch.no_grad():
        for x in xs:
            h = F.pad(torch.relu(net[0](x)), (1, 1, 1, 1))
            y = original(x)
            for n in range(x.shape[0]):
                for i in range(y.shape[2]):
                    for j in range(y.shape[3]):
                        rows.append(torch.cat([h[n, :, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].reshape(-1), torch.ones(1, dtype=h.dtype)]))
                        targets.append(y[n, :, i, j])
    X, Y = torch.stack(rows).numpy(), torch.stack(targets).numpy()
    G = X.T @ X
    ridge, nw = 0.01, X.shape[1] - 1
    A = G + ridge * np.mean(np.diag(G)[:nw]) * np.diag([1.0] * nw + [0.0])
    theta = np.linalg.solve(A, X.T @ Y)

    fit = reconstruct(net, original, xs, plan=plan, ridge=ridge, positions=None)

    assert fit["2"].rows == len(X) == 5 * 16 and fit["2"].inputs == 4 * 9 + 1
    np.testing.assert_allclose(net[2].weight.detach().reshape(4, -1).numpy(), theta[:nw].T, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(net[2].bias.detach().numpy(), theta[nw], rtol=1e-8, atol=1e-10)
    assert fit["2"].after < fit["2"].before


def test_reconstruct_sampled_positions_are_seeded():
    x = [torch.randn(4, 3, 9, 9, dtype=torch.float64)]
    results = []
    for seed in (0, 0, 1):
        net, original, plan = conv_pair()
        lp.prune(net, plan, x[0], measure_latency=False)
        fit = reconstruct(net, original, x, plan=plan, positions=6, seed=seed)
        assert fit["2"].rows == 4 * 6
        results.append(net[2].weight.detach().clone())
    assert torch.equal(results[0], results[1])
    assert not torch.equal(results[0], results[2])


def test_reconstruct_folds_the_intercept_into_the_following_batchnorm():
    """A bias-free conv followed by BatchNorm: the fitted constant goes into the norm's running mean,
    so the (eval-mode) network reproduces the original exactly when the removed channel is affine
    in the kept ones (1x1 first conv, no padding, no activation)."""
    torch.manual_seed(6)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 5, 3, bias=False), nn.BatchNorm2d(5)).double().eval()
    with torch.no_grad():
        net[2].running_mean.uniform_(-1, 1)
        net[2].running_var.uniform_(0.5, 2)
    original = copy.deepcopy(net)
    plan = lp.Plan({"0": torch.tensor([0, 1, 3])}, {"0": 4}, [["0"]])
    x = torch.randn(6, 3, 6, 6, dtype=torch.float64)
    lp.prune(net, plan, x, measure_latency=False)
    fit = reconstruct(net, original, [x], plan=plan, ridge=0.0, positions=None)
    assert fit["1"].intercept == "norm" and fit["1"].after < 1e-8
    assert net[1].bias is None
    with torch.no_grad():
        torch.testing.assert_close(net(x), original(x), rtol=0, atol=1e-8)


def test_reconstruct_refits_later_layers_on_the_reconstructed_network():
    """Two refit layers: the second layer's inputs come from the already refit first one."""
    torch.manual_seed(7)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2)).double()
    original = copy.deepcopy(net)
    plan = lp.Plan({"0": torch.tensor([0, 1, 3, 5]), "2": torch.tensor([1, 2, 4])}, {"0": 6, "2": 6}, [["0"], ["2"]])
    x = torch.randn(40, 4, dtype=torch.float64)
    lp.prune(net, plan, x, measure_latency=False)
    layers_seen = []
    fit = reconstruct(net, original, [x], plan=plan, ridge=0.0)
    assert list(fit) == ["2", "4"]
    layers_seen.append(fit)
    with torch.no_grad():
        X = torch.relu(net[2](torch.relu(net[0](x))))  # after the refit of "2"
        Y = original(x)
    theta = torch.linalg.lstsq(torch.cat([X, torch.ones(40, 1, dtype=X.dtype)], 1), Y).solution
    torch.testing.assert_close(net[4].weight.detach(), theta[:3].T, rtol=1e-8, atol=1e-9)
    # output rows of "2" kept by the plan are the targets of its fit
    with torch.no_grad():
        target = original[2](torch.relu(original[0](x)))[:, plan.keep["2"]]
        X2 = torch.relu(net[0](x))
    theta2 = torch.linalg.lstsq(torch.cat([X2, torch.ones(40, 1, dtype=X2.dtype)], 1), target).solution
    torch.testing.assert_close(net[2].weight.detach(), theta2[:4].T, rtol=1e-8, atol=1e-9)


def test_reconstruct_errors():
    net, original, plan = conv_pair()
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    lp.prune(net, plan, x, measure_latency=False)
    with pytest.raises(ConfigError, match="'nope', which the pruned network does not have"):
        reconstruct(net, original, [x], plan=plan, layers=["nope"])
    with pytest.raises(ConfigError, match=r"'0', whose inputs were not reduced \(3 in pruned, 3 in original\)"):
        reconstruct(net, original, [x], plan=plan, layers=["0"])
    with pytest.raises(ConfigError, match=r"'1' \(ReLU\); allowed: Conv2d with groups=1 and Linear"):
        reconstruct(net, original, [x], plan=plan, layers=["1"])
    with pytest.raises(ConfigError, match="holds no batch"):
        reconstruct(net, original, [], plan=plan)
    with pytest.raises(ConfigError, match="not an iterator or generator"):
        reconstruct(net, original, iter([x]), plan=plan)
    with pytest.raises(ConfigError, match=r"ridge=-1 is not allowed"):
        reconstruct(net, original, [x], plan=plan, ridge=-1)
    with pytest.raises(ConfigError, match=r"positions=0 is not allowed"):
        reconstruct(net, original, [x], plan=plan, positions=0)
    with pytest.raises(ConfigError, match=r"shape \(2, 1, 7, 7\).*expects inputs of shape \(N, 3, H, W\)"):
        reconstruct(net, original, [torch.zeros(2, 1, 7, 7, dtype=torch.float64)], plan=plan)
    # a refit layer that lost outputs needs the plan
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    b = copy.deepcopy(a)
    p2 = lp.Plan({"0": torch.tensor([0, 1]), "1": torch.tensor([1, 3])}, {"0": 4, "1": 4}, [["0"], ["1"]])
    lp.prune(a, p2, torch.zeros(2, 3), measure_latency=False)
    with pytest.raises(ConfigError, match=r"layer '1' has 2 outputs in pruned and 4 in original; pass plan="):
        reconstruct(a, b, [torch.randn(8, 3)])

    class WithUnused(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.used, self.unused = nn.Linear(3, 2), nn.Linear(width, 2)

        def forward(self, x):
            return self.used(x)

    with pytest.raises(ConfigError, match="'unused', which does not run in the forward pass: it gets no data"):
        reconstruct(WithUnused(2), WithUnused(4), [torch.randn(3, 3)], layers=["unused"])


# ------------------------------------------------------------------------------------------------
# on a trained network: digits, cifar_vgg11 (BatchNorm), 50 % uniform l1 prune
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_vgg():
    """cifar_vgg11 (width 0.25) trained one epoch on digits (Adam, batch 16)."""
    from lightprune.data import DigitsDataModule

    torch.manual_seed(0)
    dm = DigitsDataModule(image_size=32, channels=3, batch_size=16)
    dm.setup("fit")
    net = lp.create_model("cifar_vgg11", 10, width_mult=0.25)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    for x, y in dm.train_dataloader():
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    test = list(dm.test_dataloader())
    calib = list(dm.scoring_dataloader(20, batch_size=50))  # 200 training images, 20 per class
    return net, test, calib


def prune_half(net, calib):
    pruned = copy.deepcopy(net)
    x = calib[0][0][:2]
    plan = lp.plan(pruned, lp.score(pruned, "l1"), strategy="uniform", ratio=0.5, example_inputs=x)
    lp.prune(pruned, plan, x, measure_latency=False)
    return pruned, plan


@pytest.mark.slow
def test_recalibration_and_reconstruction_recover_accuracy_after_a_50_percent_prune(trained_vgg):
    net, test, calib = trained_vgg
    acc = lambda m: evaluate(m, test, num_classes=10)["acc"]  # noqa: E731
    trained = acc(net)
    pruned, plan = prune_half(net, calib)
    plain = acc(pruned)
    recal = copy.deepcopy(pruned)
    assert recalibrate_bn(recal, calib) == 200
    recalibrated = acc(recal)
    fit = reconstruct(pruned, net, calib, plan=plan, positions=16)
    reconstructed = acc(pruned)
    recalibrate_bn(pruned, calib)
    both = acc(pruned)
    print(f"trained {trained:.3f}, pruned 50 % {plain:.3f}, + recalibration {recalibrated:.3f}, "
          f"+ reconstruction {reconstructed:.3f}, + both {both:.3f}")
    assert trained > 0.8
    assert plain < 0.25  # a 50 % prune of every layer wrecks it
    assert recalibrated > plain + 0.15 and recalibrated > 0.3  # measured: 0.10 -> 0.45
    assert len(fit) == 9 and all(f.after < f.before for f in fit.values())  # 7 convs + 2 Linear layers
    assert reconstructed > plain + 0.3  # measured: 0.92
    assert both > recalibrated + 0.2 and both > 0.75  # measured: 0.92


# ------------------------------------------------------------------------------------------------
# distillation
# ------------------------------------------------------------------------------------------------
def test_distillation_loss_against_hand_computation():
    zs = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    zt = [[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]]
    y = [1, 0]
    alpha, T = 0.3, 2.0

    def softmax(z):
        e = [math.exp(v) for v in z]
        return [v / sum(e) for v in e]

    ce = sum(-math.log(softmax(s)[t]) for s, t in zip(zs, y, strict=True)) / 2
    kl = 0.0
    for s, t in zip(zs, zt, strict=True):
        ps, pt = softmax([v / T for v in s]), softmax([v / T for v in t])
        kl += sum(b * math.log(b / a) for a, b in zip(ps, pt, strict=True))
    kl /= 2
    expected = (1 - alpha) * ce + alpha * T * T * kl

    loss, parts = distillation_loss(torch.tensor(zs), torch.tensor(zt), torch.tensor(y), alpha=alpha, temperature=T)

    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(parts["ce"]) == pytest.approx(ce, rel=1e-6)
    assert float(parts["kd"]) == pytest.approx(T * T * kl, rel=1e-6)
    only_ce, _ = distillation_loss(torch.tensor(zs), torch.tensor(zt), torch.tensor(y), alpha=0.0)
    assert float(only_ce) == pytest.approx(ce, rel=1e-6)


def test_distillation_gradients_reach_only_the_student_and_the_teacher_stays_frozen():
    torch.manual_seed(0)

    class Student(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3))

    parent = Student()
    parent.teacher = Teacher.from_model(parent.net)
    teacher_state = {k: v.clone() for k, v in parent.teacher.model.state_dict().items()}
    assert set(parent.state_dict()) == {f"net.{k}" for k in teacher_state}  # not registered, not saved
    assert len(list(parent.parameters())) == 4
    opt = torch.optim.SGD(parent.parameters(), lr=0.5)
    parent.train()
    assert not parent.teacher.model.training
    assert all(not p.requires_grad for p in parent.teacher.model.parameters())

    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    loss, _ = distillation_loss(parent.net(x), parent.teacher(x), y, alpha=0.7)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in parent.net.parameters())
    assert all(p.grad is None for p in parent.teacher.model.parameters())
    opt.step()
    for k, v in parent.teacher.model.state_dict().items():
        assert torch.equal(v, teacher_state[k])
    assert not torch.equal(parent.net[0].weight, teacher_state["0.weight"])
    # eval-mode teacher: dropout off, deterministic outputs, no graph
    out1, out2 = parent.teacher(x), parent.teacher(x)
    assert torch.equal(out1, out2) and not out1.requires_grad
    # follows the inputs' dtype (and device)
    assert parent.teacher(x.double()).dtype == torch.float64


def test_teacher_from_state_and_errors():
    build = lambda: nn.Linear(4, 3)  # noqa: E731
    src = build()
    t = Teacher.from_state(build, src.state_dict())
    x = torch.randn(2, 4)
    torch.testing.assert_close(t(x), src(x).detach())
    with pytest.raises(ConfigError, match="state_dict does not fit the built network"):
        Teacher.from_state(lambda: nn.Linear(5, 3), src.state_dict())
    with pytest.raises(ConfigError, match=r"model=str is not allowed"):
        Teacher("net")  # type: ignore[arg-type]


def test_distillation_errors():
    s, y = torch.randn(4, 10), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ConfigError, match=r"student logits have shape \(4, 10\) but teacher logits \(4, 5\)"):
        distillation_loss(s, torch.randn(4, 5), y)
    with pytest.raises(ConfigError, match=r"alpha=1.5 is not allowed; it must be a number in \[0, 1\]"):
        distillation_loss(s, s, y, alpha=1.5)
    with pytest.raises(ConfigError, match=r"temperature=0 is not allowed; it must be a number > 0"):
        distillation_loss(s, s, y, temperature=0)
    with pytest.raises(ConfigError, match=r"targets have shape \(3,\); expected \(4,\)"):
        distillation_loss(s, s, y[:3])
    with pytest.raises(ConfigError, match="targets=None is allowed only with alpha=1"):
        distillation_loss(s, s, None)
    loss, parts = distillation_loss(s, s.flip(0), None, alpha=1.0)
    assert float(loss) == pytest.approx(float(parts["kd"]))


# ------------------------------------------------------------------------------------------------
# optimizer state through a prune
# ------------------------------------------------------------------------------------------------
class TinyResNet(nn.Module):
    """stem conv -> one residual block (conv1, conv2 + identity) -> conv3 -> head: the stem and
    conv2 are coupled through the addition."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv1, self.bn1 = nn.Conv2d(8, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 10, 3, padding=1)
        self.head = nn.Linear(10, 3)

    def forward(self, x):
        h = F.relu(self.bn0(self.stem(x)))
        h = F.relu(h + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(h))))))
        h = F.relu(self.conv3(h))
        return self.head(h.mean(dim=(2, 3)))


def vgg():
    return lp.create_model("cifar_vgg11", 3, width_mult=0.125)


# (model builder, input size, a conv in the middle, its producer whose kept outputs are its kept inputs)
NETS = {
    "vgg": (vgg, 32, "features.4", "features.0"),
    "resnet": (TinyResNet, 8, "conv2", "conv1"),
}
OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-3, amsgrad=True),
}


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("net_name", sorted(NETS))
def test_optimizer_state_is_carried_through_a_prune(net_name, opt_name):
    build, size, mid, producer = NETS[net_name]
    torch.manual_seed(0)
    model = build()
    x, y = torch.randn(6, 3, size, size), torch.tensor([0, 1, 2, 0, 1, 2])
    opt = OPTIMIZERS[opt_name](model.parameters())
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    plan = lp.plan(model, lp.score(model, "l1"), strategy="uniform", ratio=0.5, example_inputs=x[:1])
    if net_name == "resnet":
        assert any(set(g) == {"stem", "conv2"} for g in plan.groups)
    old_params = {n: p.detach().clone() for n, p in model.named_parameters()}

    snapshot = snapshot_optimizer_state(opt, model)
    maps = index_maps(model, lambda m: lp.prune(m, plan, x[:1], measure_latency=False))
    lp.prune(model, plan, x[:1], measure_latency=False)
    new_opt = OPTIMIZERS[opt_name](model.parameters())
    restored = restore_optimizer_state(new_opt, model, snapshot, maps)

    names = {n for n, _ in model.named_parameters()}
    assert set(maps) == names and set(restored) == names == set(snapshot)
    by_name = dict(model.named_parameters())
    for n, p in by_name.items():
        # the maps pick exactly the surviving weights ...
        assert torch.equal(old_params[n].reshape(-1)[maps[n]].view(p.shape), p.detach()), n
        # ... and the state of the same elements
        state = new_opt.state[p]
        for key, old in snapshot[n].state.items():
            if old.ndim == 0:
                assert torch.equal(state[key], old), (n, key)
            else:
                assert state[key].shape == p.shape, (n, key)
    keys = {"sgd": ["momentum_buffer"], "adamw": ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]}[opt_name]
    keep_out, keep_in = plan.keep[mid], plan.keep[producer]
    norm = {"features.4": "features.5", "conv2": "bn2"}[mid]
    for key in keys:
        old = snapshot[f"{mid}.weight"].state[key]
        assert torch.equal(new_opt.state[by_name[f"{mid}.weight"]][key], old[keep_out][:, keep_in]), key
        assert torch.equal(new_opt.state[by_name[f"{norm}.weight"]][key], snapshot[f"{norm}.weight"].state[key][keep_out])
    if opt_name == "adamw":
        assert float(new_opt.state[by_name[f"{mid}.weight"]]["step"]) == 2.0
    # training goes on
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    new_opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    new_opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())


def test_index_maps_and_restore_errors():
    net = nn.Sequential(nn.Linear(3, 2))

    def shifts_values(m):
        with torch.no_grad():
            m[0].bias.add_(0.5)

    with pytest.raises(ConfigError, match="parameter '0.bias' holds values that are not distinct element indices"):
        index_maps(net, shifts_values)
    maps = index_maps(net, lambda m: None)
    assert maps["0.weight"].tolist() == list(range(6)) and maps["0.weight"].dtype == torch.long
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(2, 3)).sum().backward()
    opt.step()
    snap = snapshot_optimizer_state(opt, net)
    bad = {"0.weight": snap["0.weight"].__class__((2, 3), {"factored": torch.zeros(2)}), "0.bias": snap["0.bias"]}
    with pytest.raises(ConfigError, match=r"state 'factored' of '0.weight' has shape \(2,\), neither a scalar nor"):
        restore_optimizer_state(torch.optim.SGD(net.parameters(), lr=0.1), net, bad, maps)
    with pytest.raises(ConfigError, match="no index map for parameter '0.weight'"):
        restore_optimizer_state(torch.optim.SGD(net.parameters(), lr=0.1), net, snap, {})
    other = nn.Linear(3, 2)
    with pytest.raises(ConfigError, match="not a parameter of the model"):
        snapshot_optimizer_state(opt, other)


@pytest.mark.parametrize(
    "kwargs",
    [dict(padding=1), dict(stride=2, padding=2, dilation=2), dict(padding="same"), dict(padding=1, padding_mode="reflect"),
     dict(kernel_size=(1, 3), stride=(2, 1), padding=(0, 1))],
)
def test_sampled_patches_equal_the_conv(kwargs):
    """Rows gathered at sampled positions reproduce the conv's own output there (weights @ patch)."""
    from lightprune.recovery import _layer_rows

    conv = nn.Conv2d(3, 4, **{"kernel_size": 3, **kwargs}).double()
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    y = conv(x)
    for positions in (5, None):
        xr, yr = _layer_rows(conv, x, y, positions, seed=3)
        assert xr.shape[0] == yr.shape[0] == 2 * (positions or y.shape[2] * y.shape[3])
        torch.testing.assert_close(xr @ conv.weight.reshape(4, -1).t() + conv.bias, yr)
