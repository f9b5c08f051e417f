"""Bias balancing (CRITERIA.md "Bias balancing"; ``lp.prune(..., bias_balancing=True)``).

Removing unit j and replacing its output by its mean over the scoring set equals removing it and
adding ``w_{k,j} * mean_j`` to the bias of every consumer k (conv consumers: the sum of the kernel
weights on channel j times the channel's mean; exact when the consumer has no padding). Checked
by hand on tiny float64 networks, then on a digits MLP: with sigmoid hidden units balancing must
raise the test accuracy after removing half of the units without fine-tuning; the ReLU numbers
are printed, not asserted (the paper expects balancing to help less or hurt there).
The full table over seeds and ratios: ``python benchmarks/bias_balancing.py`` (docs/benchmarks.md).
"""

from __future__ import annotations

import copy
import statistics

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightprune as lp
from lightprune.planner import Plan
from lightprune.surgery import consumer_input_means


def single_layer_plan(layer: str, channels: int, keep: list[int]) -> Plan:
    return Plan({layer: torch.tensor(keep)}, {layer: channels}, [[layer]])


# --------------------------------------------------------------------------------------------------
# exactness by hand
# --------------------------------------------------------------------------------------------------
def test_linear_consumer_bias_equals_mean_replacement():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.Sigmoid(), nn.Linear(5, 3)).double().eval()
    xs = torch.randn(40, 6, dtype=torch.float64)
    batches = [(xs[:7], None), (xs[7:25], None), (xs[25:], None)]  # uneven batches: a per-sample mean
    removed, keep = [1, 3], [0, 2, 4]
    with torch.no_grad():
        h = torch.sigmoid(net[0](xs))
    mean = h.mean(0)

    # the means surgery uses are the consumer's mean input over all samples
    means = consumer_input_means(net, ["2"], batches)
    assert torch.allclose(means["2"], mean, atol=1e-12)

    def replaced(x: torch.Tensor, value: torch.Tensor | None) -> torch.Tensor:
        """The original network with the removed units' outputs set to ``value`` (None: zero)."""
        with torch.no_grad():
            hh = torch.sigmoid(net[0](x))
            hh[:, removed] = 0.0 if value is None else value[removed]
            return net[2](hh)

    balanced = copy.deepcopy(net)
    report = lp.prune(balanced, single_layer_plan("0", 5, keep), xs[:1], bias_balancing=True, batches=batches, measure_latency=False)
    assert report.bias_balanced == ["2"]
    plain = copy.deepcopy(net)
    lp.prune(plain, single_layer_plan("0", 5, keep), xs[:1], measure_latency=False)

    # bias by hand: b' = b + W[:, removed] @ mean[removed]; weights: the kept columns
    expected_bias = net[2].bias.detach() + net[2].weight.detach()[:, removed] @ mean[removed]
    assert torch.allclose(balanced[2].bias.detach(), expected_bias, atol=1e-12)
    assert torch.equal(balanced[2].weight, net[2].weight[:, keep])
    assert torch.equal(plain[2].bias, net[2].bias)

    z = torch.randn(10, 6, dtype=torch.float64)
    for x in (xs, z, xs.mean(0, keepdim=True)):
        with torch.no_grad():
            assert torch.allclose(balanced(x), replaced(x, mean), atol=1e-6, rtol=0)
            assert torch.allclose(plain(x), replaced(x, None), atol=1e-6, rtol=0)
        assert not torch.allclose(replaced(x, mean), replaced(x, None), atol=1e-3)  # the test can tell them apart

    # precomputed means give the same network
    pre = copy.deepcopy(net)
    lp.prune(pre, single_layer_plan("0", 5, keep), xs[:1], bias_balancing=True, means=means, measure_latency=False)
    assert torch.equal(pre[2].bias, balanced[2].bias)


class ConvNet(nn.Module):
    """conv(2->4, pad 1) -> sigmoid -> conv(4->3, no padding) [-> BN] -> flatten -> linear."""

    def __init__(self, consumer_bias: bool, bn: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.act = nn.Sigmoid()
        self.conv2 = nn.Conv2d(4, 3, 3, padding=0, bias=consumer_bias)
        self.bn = nn.BatchNorm2d(3) if bn else nn.Identity()
        self.fc = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x, replace=None):
        h = self.act(self.conv1(x))
        if replace is not None:  # (channels, constant per channel)
            chans, value = replace
            h = h.clone()
            h[:, chans] = value[chans].view(1, -1, 1, 1).to(h.dtype)
        return self.fc(torch.flatten(self.bn(self.conv2(h)), 1))


@pytest.mark.parametrize("consumer_bias,bn", [(True, False), (False, True)], ids=["conv-bias", "bn-running-mean"])
def test_conv_consumer_equals_mean_map_replacement(consumer_bias, bn):
    """A removed channel replaced by its mean over images and positions: the balanced conv consumer
    (bias, or its BatchNorm's running mean when it has no bias) gives the same outputs; the
    consumer has no padding, so there is no border effect."""
    torch.manual_seed(1)
    net = ConvNet(consumer_bias, bn).double().eval()
    if bn:
        with torch.no_grad():
            net.bn.running_mean.uniform_(-0.5, 0.5)
            net.bn.running_var.uniform_(0.5, 1.5)
            net.bn.weight.uniform_(0.5, 1.5)
    xs = torch.randn(16, 2, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        mean = torch.sigmoid(net.conv1(xs)).mean(dim=(0, 2, 3))
    removed, keep = [0, 2], [1, 3]
    pruned = copy.deepcopy(net)
    report = lp.prune(pruned, single_layer_plan("conv1", 4, keep), xs[:1], bias_balancing=True, batches=[xs], measure_latency=False)
    assert report.bias_balanced == ["conv2"]
    w = net.conv2.weight.detach()
    delta = (w[:, removed].sum(dim=(2, 3)) * mean[removed]).sum(1)  # sum of kernel weights x channel mean
    if consumer_bias:
        assert torch.allclose(pruned.conv2.bias.detach(), net.conv2.bias.detach() + delta, atol=1e-12)
    else:
        assert pruned.conv2.bias is None
        assert torch.allclose(pruned.bn.running_mean, net.bn.running_mean - delta, atol=1e-12)
    z = torch.randn(5, 2, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(pruned(z), net(z, replace=(removed, mean)), atol=1e-6, rtol=0)
        assert not torch.allclose(pruned(z), net(z, replace=(removed, torch.zeros(4, dtype=torch.float64))), atol=1e-3)


# --------------------------------------------------------------------------------------------------
# digits MLP: sigmoid (asserted) and ReLU (reported)
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_flat():
    from lightprune.data import DigitsDataModule

    dm = DigitsDataModule(image_size=8, channels=1, seed=0)
    dm.setup("fit")
    xtr, ytr = dm.train_set.tensors
    xte, yte = dm.test_set.tensors
    return xtr.flatten(1), ytr, xte.flatten(1), yte


def train_mlp(activation: type[nn.Module], seed: int, xtr, ytr) -> nn.Module:
    """64 -> 64 -> 10, full-batch Adam (lr 1e-2, 300 steps, well under a second)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(64, 64), activation(), nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(net(xtr), ytr).backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def accuracy(net, x, y) -> float:
    return (net(x).argmax(1) == y).double().mean().item()


def pruned_accuracy(net, criterion, seed, balance, data) -> float:
    xtr, ytr, xte, yte = data
    pruned = copy.deepcopy(net)
    scores = lp.score(pruned, criterion, progress=False, **({"seed": seed} if criterion == "random" else {}))
    plan = lp.plan(pruned, scores, strategy="uniform", ratio=0.5, example_inputs=xtr[:1])
    assert [len(k) for k in plan.keep.values()] == [32]
    loader = DataLoader(TensorDataset(xtr, ytr), batch_size=256)  # the scoring set: the training split
    lp.prune(pruned, plan, xtr[:1], bias_balancing=balance, batches=loader, measure_latency=False)
    return accuracy(pruned, xte, yte)


SEEDS = (0, 1, 2)


def run_experiment(activation, data) -> dict:
    """One thread: these tensors are tiny, and two threads are several times slower on a busy machine
    (the numbers are deterministic for a given thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_experiment(activation, data)
    finally:
        torch.set_num_threads(threads)


def _run_experiment(activation, data) -> dict:
    xtr, ytr, xte, yte = data
    res = {"before": []}
    for seed in SEEDS:
        net = train_mlp(activation, seed, xtr, ytr)
        res["before"].append(accuracy(net, xte, yte))
        for crit in ("l1", "random"):
            for balance in (False, True):
                res.setdefault((crit, balance), []).append(pruned_accuracy(net, crit, seed, balance, data))
    name = activation.__name__
    print(f"\n{name} MLP, 50 % of 64 hidden units removed, no fine-tuning, test accuracy over seeds {SEEDS}:")
    print(f"  before pruning: {[f'{a:.3f}' for a in res['before']]}")
    for crit in ("l1", "random"):
        wo, w = res[(crit, False)], res[(crit, True)]
        print(
            f"  {crit:>6}: without {statistics.mean(wo):.4f} {[f'{a:.3f}' for a in wo]}  "
            f"with {statistics.mean(w):.4f} {[f'{a:.3f}' for a in w]}"
        )
    return res


def test_balancing_helps_sigmoid_mlp_on_digits(digits_flat):
    res = run_experiment(nn.Sigmoid, digits_flat)
    assert min(res["before"]) > 0.9
    for crit in ("l1", "random"):
        without, with_ = statistics.mean(res[(crit, False)]), statistics.mean(res[(crit, True)])
        assert with_ > without, (crit, without, with_)
        assert max(res[(crit, False)]) < max(res["before"])  # pruning without fine-tuning does cost accuracy


def test_balancing_relu_mlp_on_digits_reported(digits_flat):
    """ReLU hidden units: numbers printed (run with -s), no direction asserted."""
    res = run_experiment(nn.ReLU, digits_flat)
    assert min(res["before"]) > 0.9
    for key, accs in res.items():
        assert all(0.0 <= a <= 1.0 for a in accs), key
