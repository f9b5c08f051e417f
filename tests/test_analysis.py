"""lightprune.analysis: cumulative ablation, rescaling / randomness audits, layer analysis and the
FeatureEntropyMonitor callback, on digits-trained networks, through the installed console script.

Two small networks are trained once per session (CIFAR VGG-11 at 1/8 width, 2 epochs, Adam):

- ``bn_net``: with BatchNorm (the usual recipe), trained with the FeatureEntropyMonitor attached;
- ``homogeneous_net``: without BatchNorm and with every conv / hidden Linear bias fixed at 0, so
  every feature map is a positively homogeneous function of the input and of each layer's
  weights: scaling by 0.5 scales every map exactly (bit-exact), which makes the rescaling checks
  meaningful (in a BN network the eval-mode BatchNorm would change the maps).

Every reference below is built independently of the analysis code (plain loops, BatchNorm
weight/bias zeroing, criteria called directly).
"""

from __future__ import annotations

import copy
import csv
import math
import os
import re
import subprocess
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

import lightprune as lp
from lightprune.analysis import (
    FeatureEntropyMonitor,
    ablate_channels,
    ablation_order,
    cumulative_ablation,
    main,
    randomness_audit,
    rescaling_audit,
    scaled_copy,
)
from lightprune.analysis._common import MaskedEval, metrics_from_confusion
from lightprune.collect import capture_activations, find_prunable_layers
from lightprune.data import DigitsDataModule
from lightprune.errors import ConfigError, UnknownNameError
from lightprune.topology import birth_times, feature_entropy

BIN = Path(sys.executable).parent
LIGHTPRUNE = str(BIN / "lightprune")
EPOCHS = 2
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------
# session fixtures: data, two trained networks (trained once)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def dm():
    d = DigitsDataModule(image_size=32, channels=3, batch_size=128)
    d.setup("fit")
    return d


def _train(module, tmp: Path, callbacks=(), logger=False):
    torch.manual_seed(0)
    data = DigitsDataModule(image_size=32, channels=3, batch_size=32)
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=list(callbacks),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=10,
        default_root_dir=str(tmp),
    )
    trainer.fit(module, datamodule=data)
    ckpt = tmp / "model.ckpt"
    trainer.save_checkpoint(str(ckpt))
    return trainer, ckpt


@pytest.fixture(scope="session")
def bn_net(tmp_path_factory):
    from lightning.pytorch.loggers import CSVLogger

    tmp = tmp_path_factory.mktemp("bn_net")
    torch.manual_seed(0)
    module = lp.ClassificationModule(
        "cifar_vgg11",
        num_classes=10,
        image_size=32,
        model_kwargs={"width_mult": 0.125},
        optimizer=partial(torch.optim.Adam, lr=2e-3),
    )
    monitor = FeatureEntropyMonitor(every_n_epochs=1, samples_per_class=5, output_dir=str(tmp / "monitor"))
    logger = CSVLogger(save_dir=str(tmp), name="logs")
    trainer, ckpt = _train(module, tmp, [monitor], logger)
    return SimpleNamespace(
        module=module.eval(), ckpt=ckpt, monitor=monitor, log_dir=Path(trainer.log_dir), tmp=tmp
    )


@pytest.fixture(scope="session")
def homogeneous_net(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("homogeneous_net")
    torch.manual_seed(0)
    module = lp.ClassificationModule(
        "cifar_vgg11",
        num_classes=10,
        image_size=32,
        model_kwargs={"width_mult": 0.125, "batch_norm": False},
        optimizer=partial(torch.optim.Adam, lr=2e-3),
    )
    final = module.model.classifier[-1]
    for m in module.model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m is not final:
            nn.init.zeros_(m.bias)
            m.bias.requires_grad_(False)  # stays exactly 0: the maps are homogeneous in inputs and weights
    _, ckpt = _train(module, tmp)
    return SimpleNamespace(module=module.eval(), ckpt=ckpt, tmp=tmp)


# --------------------------------------------------------------------------------------------
# independent references
# --------------------------------------------------------------------------------------------
def plain_eval(net: nn.Module, dm) -> dict:
    """Accuracy, per-class recall and one-vs-rest balanced accuracy by a plain loop."""
    net.eval()
    preds, labels = [], []
    with torch.no_grad():
        for x, y in dm.test_dataloader():
            preds.append(net(x).argmax(1))
            labels.append(y)
    p, y = torch.cat(preds), torch.cat(labels)
    recall = [int(((p == c) & (y == c)).sum()) / int((y == c).sum()) for c in range(10)]
    spec = [int(((p != c) & (y != c)).sum()) / int((y != c).sum()) for c in range(10)]
    return {
        "acc": int((p == y).sum()) / len(y),
        "recall": recall,
        "class_bacc": [(r + s) / 2 for r, s in zip(recall, spec, strict=True)],
    }


def bn_of(net: nn.Module, layer: str) -> nn.BatchNorm2d:
    """The BatchNorm right after ``layer`` in a CIFAR VGG (features.<i> -> features.<i+1>)."""
    prefix, idx = layer.rsplit(".", 1)
    bn = net.get_submodule(f"{prefix}.{int(idx) + 1}")
    assert isinstance(bn, nn.BatchNorm2d)
    return bn


def zero_channels_via_bn(net: nn.Module, layer: str, channels) -> nn.Module:
    """A copy whose BatchNorm after ``layer`` outputs 0 on ``channels`` (weight = bias = 0): ReLU(0) = 0."""
    ref = copy.deepcopy(net)
    bn = bn_of(ref, layer)
    with torch.no_grad():
        idx = torch.as_tensor(list(channels), dtype=torch.long)
        bn.weight[idx] = 0
        bn.bias[idx] = 0
    return ref


def run_cli(*args, cwd=None, timeout=600):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.run(
        [LIGHTPRUNE, "analyze", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )


def read_csv(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def assert_png(path: Path) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000, path


# --------------------------------------------------------------------------------------------
# cheap unit tests
# --------------------------------------------------------------------------------------------
def test_ablation_order_is_stable_and_oriented():
    imp = torch.tensor([0.5, 0.1, 0.5, 0.9, 0.1])
    assert ablation_order(imp, "least_important_first").tolist() == [1, 4, 0, 2, 3]
    assert ablation_order(imp, "most_important_first").tolist() == [3, 0, 2, 1, 4]
    # the old names are aliases: ascending / descending order of importance
    assert ablation_order(imp, "ascending").tolist() == [1, 4, 0, 2, 3]
    assert ablation_order(imp, "descending").tolist() == [3, 0, 2, 1, 4]
    # feature entropy's importance is minus the entropy: the paper's "ascending order of feature
    # entropy" (lowest entropy first) is our most_important_first
    entropy = torch.tensor([0.3, 1.2, 0.1, 0.8])
    by_entropy = torch.argsort(entropy, stable=True).tolist()
    assert ablation_order(-entropy, "most_important_first").tolist() == by_entropy == [2, 0, 3, 1]
    with pytest.raises(
        ConfigError,
        match=r"order='up' is not allowed; choose one of: least_important_first, most_important_first "
        r"\(aliases: ascending = least_important_first, descending = most_important_first\)",
    ):
        ablation_order(imp, "up")


def test_metrics_from_confusion_by_hand():
    # 3 classes; rows = true class. class 0: 2 of 3 right; class 1: 1 of 1; class 2: 0 of 2 (both called 0)
    conf = torch.tensor([[[2, 1, 0], [0, 1, 0], [2, 0, 0]]])
    m = metrics_from_confusion(conf, torch.tensor([6.0], dtype=torch.float64), 6)
    assert m["acc"].item() == pytest.approx(3 / 6)
    assert m["loss"].item() == pytest.approx(1.0)
    assert m["recall"][0].tolist() == pytest.approx([2 / 3, 1.0, 0.0])
    assert m["balanced_acc"].item() == pytest.approx((2 / 3 + 1 + 0) / 3)
    # class 0: specificity = 1 - 2/3 (two of three non-0 images were called 0)
    assert m["class_bacc"][0].tolist() == pytest.approx([(2 / 3 + 1 / 3) / 2, (1 + 4 / 5) / 2, (0 + 1) / 2])


class _Residual(nn.Module):
    """conv-bn-relu, then a residual block: expanding a hooked tensor inside the block breaks the add."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x):
        h = self.stem(x)
        return self.head(self.relu(self.conv(h)) + h)


@pytest.mark.parametrize("kind", ["sequential", "residual"])
def test_masked_eval_batched_configurations_match_one_by_one(kind):
    torch.manual_seed(0)
    if kind == "sequential":
        net = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 6, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(6, 3),
        ).eval()
        layer = "2"
    else:
        net, layer = _Residual().eval(), "conv"
    x, y = torch.randn(40, 1, 6, 6), torch.arange(40) % 3
    batches = [(x[:25], y[:25]), (x[25:], y[25:])]
    layers = find_prunable_layers(net, x[:2], [layer])
    c = layers[layer].out_channels
    masks = (torch.rand(7, c) > 0.5).float()
    fill = torch.rand(c)
    ev = MaskedEval(
        net, layers, {layer: masks}, mode="mean", fill={layer: fill}, num_classes=3, max_images=100
    )
    res = ev.run(batches)
    assert ev.expand == ("hook-checked" if kind == "sequential" else "input")
    for k in range(7):  # reference: one configuration at a time with a hook written here
        cap = dict(net.named_modules())[layers[layer].capture]
        h = cap.register_forward_hook(
            lambda m, a, out, k=k: (
                out * masks[k].view(1, -1, 1, 1) + (1 - masks[k].view(1, -1, 1, 1)) * fill.view(1, -1, 1, 1)
            )
        )
        try:
            with torch.no_grad():
                logits = torch.cat([net(xb) for xb, _ in batches])
        finally:
            h.remove()
        pred = logits.argmax(1)
        conf = torch.zeros(3, 3, dtype=torch.int64)
        for t, p in zip(y.tolist(), pred.tolist(), strict=True):
            conf[t, p] += 1
        assert torch.equal(res["confusion"][k], conf)
        assert res["loss_sum"][k].item() == pytest.approx(
            F.cross_entropy(logits.double(), y, reduction="sum").item(), rel=1e-5
        )


def test_errors_name_argument_value_and_allowed(dm):
    net = lp.create_model("cifar_vgg11", 10, width_mult=0.125).eval()
    tiny = [(torch.randn(4, 3, 32, 32), torch.arange(4))]
    with pytest.raises(ConfigError, match=r"mode='bogus' is not allowed; choose one of: zero, mean"):
        cumulative_ablation(net, tiny, tiny, mode="bogus", num_classes=10)
    with pytest.raises(ConfigError, match=r"scope='all' is not allowed; choose one of: layer, network"):
        cumulative_ablation(net, tiny, tiny, scope="all", num_classes=10)
    with pytest.raises(
        ConfigError, match=r"orders='sideways' is not allowed; choose one of: least_important_first, most_important"
    ):
        cumulative_ablation(net, tiny, tiny, orders=["sideways"], num_classes=10)
    with pytest.raises(ConfigError, match=r"max_fraction=1.5 is not allowed"):
        cumulative_ablation(net, tiny, tiny, max_fraction=1.5, num_classes=10)
    with pytest.raises(UnknownNameError, match=r"Unknown criterion 'nope'.*feature_entropy.*l1"):
        cumulative_ablation(net, tiny, tiny, criteria=["nope"], num_classes=10)
    with pytest.raises(
        ConfigError,
        match=r"'features.1', which is a BatchNorm2d, not a prunable layer; prunable layers: \['features.0'",
    ):
        cumulative_ablation(net, tiny, tiny, layers="features.1", num_classes=10)
    with pytest.raises(ConfigError, match=r"scoring= is required"):
        cumulative_ablation(net, tiny, None, criteria=["apoz"], num_classes=10)
    with pytest.raises(ConfigError, match=r"bn='x' is not allowed; choose one of: auto, fold, keep"):
        rescaling_audit(net, tiny, layer="features.0", bn="x")
    with pytest.raises(ConfigError, match=r"scale=-1 is not allowed"):
        rescaling_audit(net, tiny, layer="features.0", scale=-1)
    with pytest.raises(ConfigError, match=r"repeats=0 is not allowed"):
        randomness_audit(net, tiny, layer="features.0", repeats=0)
    with pytest.raises(ConfigError, match=r"reinit='all' is not allowed; choose one of: model, layer"):
        randomness_audit(net, tiny, layer="features.0", reinit="all")
    with pytest.raises(ConfigError, match=r"random_rescale=\(1.5, 0.5\) is not allowed; give \(lo, hi\) with 0 < lo <= hi"):
        cumulative_ablation(net, tiny, tiny, random_rescale=(1.5, 0.5), num_classes=10)
    with pytest.raises(ConfigError, match=r"every_n_epochs=0 is not allowed"):
        FeatureEntropyMonitor(every_n_epochs=0)
    with pytest.raises(ConfigError, match=r"p=2 is not allowed"):
        FeatureEntropyMonitor(p=2)


def test_cli_help_print_config_yaml_and_errors_in_process(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: lightprune analyze" in out and all(s in out for s in ("ablation", "rescale", "randomness", "layers"))
    for sub in ("ablation", "rescale", "randomness", "layers"):
        with pytest.raises(SystemExit) as exc:
            main([sub, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert f"lightprune analyze [options] {sub}" in out and "--ckpt" in out and "--print_config" in out
    # --print_config: a complete YAML config of the subcommand, the command-line values in it
    with pytest.raises(SystemExit) as exc:
        main(["ablation", "--ckpt", "m.ckpt", "--criteria", "[l1, apoz]", "--print_config"])
    assert exc.value.code == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["ckpt"] == "m.ckpt" and cfg["criteria"] == ["l1", "apoz"] and cfg["mode"] == "zero"
    # that config, as a YAML file, runs (here up to the missing checkpoint); the command line overrides it
    cfg["ckpt"] = str(tmp_path / "missing.ckpt")
    (tmp_path / "ablation.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as exc:
        main(["ablation", "--config", str(tmp_path / "ablation.yaml"), "--progress", "false"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "lightprune analyze ablation: error: ckpt=" in err and "missing.ckpt" in err and "no such file" in err
    with pytest.raises(SystemExit) as exc:
        main(["rescale", "--ckpt", str(tmp_path / "missing.ckpt")])
    assert exc.value.code == 2
    assert "error: layer=None" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


def test_ablate_channels_context_manager_is_temporary():
    torch.manual_seed(0)
    net = lp.create_model("cifar_vgg11", 10, width_mult=0.125).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        before = net(x)
        with ablate_channels(net, {"features.0": range(8)}, x):
            dead = net(x)
        after = net(x)
        ref = zero_channels_via_bn(net, "features.0", range(8))(x)
    assert torch.equal(before, after)  # hooks removed, weights untouched
    assert torch.equal(dead, ref)
    assert torch.allclose(dead[0], dead[1])


def test_ablation_of_layers_sharing_a_capture_module_resnet18():
    """A ResNet BasicBlock's ReLU serves conv1 (call 0) and the block output (call 1): listing conv1
    with nothing to remove must not shift conv2's replacement to the wrong call."""
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        with ablate_channels(net, {"layer1.0.conv1": [], "layer1.0.conv2": range(64)}, x):
            both = net(x)
        with ablate_channels(net, {"layer1.0.conv2": range(64)}, x):
            alone = net(x)
        plain = net(x)
    assert torch.allclose(both, alone, atol=1e-6, rtol=0)
    assert not torch.allclose(alone, plain, atol=1e-3)  # the ablation did something


class _Block(nn.Module):
    """A BasicBlock in miniature: one ReLU module called twice (conv1 at call 0, the block output at call 1)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.conv1, self.conv2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x):
        h = self.stem(x)
        out = self.conv2(self.relu(self.conv1(h)))
        out += h  # in place, as torchvision's BasicBlock: the ReLU receives conv2's output tensor itself
        return self.head(self.relu(out))


def test_masked_eval_routes_layers_sharing_a_capture_module():
    torch.manual_seed(0)
    net = _Block().eval()
    x, y = torch.randn(12, 1, 6, 6), torch.arange(12) % 3
    layers = find_prunable_layers(net, x[:2], ["conv1", "conv2"])
    assert (layers["conv1"].capture, layers["conv1"].capture_call) == ("relu", 0)
    assert (layers["conv2"].capture, layers["conv2"].capture_call) == ("relu", 1)
    masks = {"conv1": torch.tensor([[1.0, 0, 1, 1], [1, 1, 1, 1]]), "conv2": torch.tensor([[1.0, 1, 1, 1], [0, 0, 1, 0]])}
    res = MaskedEval(net, layers, masks, num_classes=3).run([(x, y)])
    for k, remove in enumerate(({"conv1": [1], "conv2": []}, {"conv1": [], "conv2": [0, 1, 3]})):
        with torch.no_grad(), ablate_channels(net, remove, x[:2]):
            logits = net(x).double()
        assert res["loss_sum"][k].item() == pytest.approx(F.cross_entropy(logits, y, reduction="sum").item(), rel=1e-6)


class _PoolNet(nn.Module):
    """Max pooling between the layers and padding-free consumers: bias balancing and mean ablation must agree."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv1 = nn.Conv2d(6, 8, 3, bias=False)  # no bias: surgery folds into its BatchNorm
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 2)
        self.fc = nn.Linear(8, 6)
        self.out = nn.Linear(6, 3)
        self.r0, self.r1, self.r2, self.r3 = nn.ReLU(), nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):  # 12x12 -> 6x6 -> 4x4 -> 2x2 -> 1x1
        h = self.pool(self.r0(self.conv0(x)))
        h = self.pool(self.r1(self.bn1(self.conv1(h))))
        h = torch.flatten(self.r2(self.conv2(h)), 1)
        return self.out(self.r3(self.fc(h)))


def test_prune_with_bias_balancing_equals_mean_ablation():
    from lightprune.plan import Plan
    from lightprune.surgery import removed_channel_fill

    torch.manual_seed(0)
    net = _PoolNet()
    with torch.no_grad():
        net.bn1.running_mean.uniform_(-0.5, 0.5)
        net.bn1.running_var.uniform_(0.5, 2.0)
        for m in (net.conv0, net.conv2, net.fc):
            m.bias.uniform_(-0.3, 0.3)  # channels with clearly non-zero means
    net.eval()
    x = torch.randn(24, 3, 12, 12)
    batches = [(x[:12], torch.zeros(12)), (x[12:], torch.zeros(12))]
    remove = {"conv0": [1, 4], "conv1": [0, 3, 5], "conv2": [2, 7], "fc": [0, 5]}
    fill = removed_channel_fill(net, list(remove), batches, x[:2])
    # the fill is what the consumer receives (after max pooling), not the mean of the map before it
    pre_pool = []
    h = net.r0.register_forward_hook(lambda m, a, out: pre_pool.append(out.double().mean(dim=(0, 2, 3))))
    with torch.no_grad():
        pooled = F.max_pool2d(net.r0(net.conv0(x)), 2).double().mean(dim=(0, 2, 3))
        net(x)
    h.remove()
    assert torch.allclose(fill["conv0"], pooled) and not torch.allclose(fill["conv0"], pre_pool[0], atol=1e-3)
    test = torch.randn(8, 3, 12, 12)
    with torch.no_grad(), ablate_channels(net, remove, x[:2], mode="mean", means=fill):
        ablated = net(test)
    pruned = copy.deepcopy(net)
    widths = {"conv0": 6, "conv1": 8, "conv2": 8, "fc": 6}
    keep = {n: torch.tensor([c for c in range(w) if c not in remove[n]]) for n, w in widths.items()}
    report = lp.prune(pruned, Plan(keep, widths, [[n] for n in widths]), x[:2], bias_balancing=True, batches=batches,
                      measure_latency=False)
    assert set(report.bias_balanced) == {"conv1", "conv2", "fc", "out"}
    assert pruned.conv1.in_channels == 4 and pruned.out.in_features == 4
    with torch.no_grad():
        assert torch.allclose(pruned(test), ablated, atol=1e-5, rtol=0)
        with ablate_channels(net, remove, x[:2]):  # zero mode differs: the balancing matters here
            assert not torch.allclose(net(test), ablated, atol=1e-3)


def test_removed_channel_fill_takes_the_consumer_that_reads_the_layer():
    """In a residual group the consumers that read another member's output are left out."""
    from lightprune.surgery import removed_channel_fill

    torch.manual_seed(0)
    net = _Residual().eval()
    x = torch.randn(10, 1, 6, 6)
    fill = removed_channel_fill(net, None, [x], x[:2])
    with torch.no_grad():
        h = net.stem(x)
        joined = net.relu(net.conv(h)) + h
    # stem.0's first consumer is conv (it reads h); conv's output reaches only the head's Linear, after the sum
    assert torch.allclose(fill["stem.0"], h.double().mean(dim=(0, 2, 3)))
    assert torch.allclose(fill["conv"], joined.double().mean(dim=(0, 2, 3)))


def test_analyses_take_dict_batches():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    ).eval()
    x, y = torch.randn(30, 1, 6, 6), torch.arange(30) % 3
    tuples = [(x[:15], y[:15]), (x[15:], y[15:])]
    dicts = [{"image": a, "label": b} for a, b in tuples]
    kw = dict(layers="2", criteria=["l1", "apoz"], random_orders=1, mode="mean", progress=False)
    a = cumulative_ablation(net, tuples, tuples, **kw)
    b = cumulative_ablation(net, dicts, dicts, **kw)
    assert a.curves == b.curves and a.meta["num_classes"] == 3
    from lightprune.analysis import feature_entropy_stats

    assert feature_entropy_stats(net, dicts) == feature_entropy_stats(net, tuples)


def _tiny_net(batch_norm: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(1, 4, 3, padding=1)]
    layers += [nn.BatchNorm2d(4)] if batch_norm else []
    layers += [nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)]
    return nn.Sequential(*layers).eval()


def test_randomness_audit_draws_whole_random_networks():
    """reinit='model': random network i = every layer drawn in order from Generator(seed + i), the
    library's init (Kaiming normal fan-out convs, N(0, 0.01) Linear); built here by hand."""
    net = _tiny_net()
    x, y = torch.randn(12, 1, 6, 6), torch.arange(12) % 3
    data = [(x, y)]
    res = randomness_audit(net, data, layer="2", criteria=["l1", "apoz"], repeats=2, seed=5, progress=False)
    by = {(r["criterion"], r["network"]): r["mean"] for r in res.rows}
    assert set(by) == {(c, n) for c in ("l1", "apoz") for n in ("trained", "random_5", "random_6")}
    for i in (5, 6):
        g = torch.Generator().manual_seed(i)
        ref = copy.deepcopy(net)
        with torch.no_grad():
            for conv in (ref[0], ref[2]):
                fan_out = conv.out_channels * 9
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * math.sqrt(2.0 / fan_out))
                conv.bias.zero_()
            ref[6].weight.copy_(torch.randn(ref[6].weight.shape, generator=g) * 0.01)
            ref[6].bias.zero_()
        assert by[("l1", f"random_{i}")] == pytest.approx(float(ref[2].weight.detach().abs().sum(dim=(1, 2, 3)).double().mean()))
        # APoZ of layer 2 depends on layer 0: equal only if layer 0 is random too
        apoz = lp.score(ref, "apoz", data, layers=["2"], progress=False)["2"]
        assert by[("apoz", f"random_{i}")] == pytest.approx(float(apoz.double().mean()), abs=1e-12)
    assert res.meta["reinit"] == "model" and res.meta["repeats"] == 2
    # reinit="layer": the trained layer 0 stays, so APoZ of layer 2 differs from the whole random network's
    single = randomness_audit(net, data, layer="2", criteria=["l1", "apoz"], repeats=1, seed=5, reinit="layer",
                              progress=False)
    one = {(r["criterion"], r["network"]): r["mean"] for r in single.rows}
    g = torch.Generator().manual_seed(5)
    w = torch.randn(net[2].weight.shape, generator=g) * math.sqrt(2.0 / (6 * 9))
    assert one[("l1", "random_5")] == pytest.approx(float(w.abs().sum(dim=(1, 2, 3)).double().mean()))
    assert one[("apoz", "random_5")] != pytest.approx(by[("apoz", "random_5")], abs=1e-6)


def test_rescaling_audit_folds_batchnorm_only_where_there_is_one():
    data = [(torch.randn(12, 1, 6, 6), torch.arange(12) % 3)]
    plain = rescaling_audit(_tiny_net(), data, layer="0", criteria=["l1"], progress=False)
    assert plain.meta["bn"] == "none" and plain.meta["bn_requested"] == "auto" and "bn=none" in plain.note
    bn_net = _tiny_net(batch_norm=True)
    with torch.no_grad():
        bn_net[1].running_mean.fill_(0.3)
        bn_net[1].running_var.fill_(2.0)
    folded = rescaling_audit(bn_net, data, layer="0", criteria=["l1"], progress=False)
    assert folded.meta["bn"] == "fold"
    kept = rescaling_audit(bn_net, data, layer="0", criteria=["l1"], bn="keep", progress=False)
    assert kept.meta["bn"] == "keep"
    fold_copy = scaled_copy(bn_net, "0", 0.5, bn="fold", example_inputs=data[0][0][:2])
    assert torch.allclose(fold_copy[1].running_mean, torch.full((4,), 0.15))
    assert torch.allclose(fold_copy[1].running_var, torch.full((4,), 0.5))


def test_ablation_with_random_per_image_rescaling():
    """random_rescale=(0.5, 1.5): image i of batch b times 0.5 + u_i, u = rand(B, Generator(seed + b)),
    for the scoring and the test images; curves checked against a plain loop."""
    net = _tiny_net()
    x, y = torch.randn(20, 1, 6, 6), torch.arange(20) % 3
    test = [(x[:12], y[:12]), (x[12:], y[12:])]
    scoring = [(x[5:15], y[5:15])]
    res = cumulative_ablation(net, test, scoring, layers="2", criteria=["apoz"], orders=["least_important_first"],
                              random_orders=0, random_rescale=(0.5, 1.5), seed=3, progress=False)

    def rescaled(batches):
        out = []
        for b, (xb, yb) in enumerate(batches):
            u = torch.rand(len(xb), generator=torch.Generator().manual_seed(3 + b), dtype=torch.float64)
            out.append(((xb * (0.5 + u).float().view(-1, 1, 1, 1)), yb))
        return out

    apoz = lp.score(net, "apoz", rescaled(scoring), layers=["2"], progress=False)["2"]
    order = ablation_order(apoz, "least_important_first")
    curve = res.curve("apoz", "least_important_first", "2")
    for k in (0, 2, 5):
        with torch.no_grad(), ablate_channels(net, {"2": order[:k]}, x[:2]):
            logits = torch.cat([net(xb) for xb, _ in rescaled(test)])
        acc = float((logits.argmax(1) == y[:20]).double().mean())
        loss = float(F.cross_entropy(logits.double(), y, reduction="mean"))
        assert curve["acc"][k] == pytest.approx(acc, abs=1e-12) and curve["loss"][k] == pytest.approx(loss, rel=1e-6)
    assert res.meta["random_rescale"] == [0.5, 1.5]
    plain = cumulative_ablation(net, test, scoring, layers="2", criteria=["apoz"], orders=["ascending"],
                                random_orders=0, progress=False)
    assert plain.curve("apoz", "ascending", "2")["loss"][0] != pytest.approx(curve["loss"][0], rel=1e-6)


# --------------------------------------------------------------------------------------------
# on the digits-trained networks
# --------------------------------------------------------------------------------------------
def test_trained_networks_learned(bn_net, homogeneous_net, dm):
    acc_bn = plain_eval(bn_net.module.model, dm)["acc"]
    acc_hom = plain_eval(homogeneous_net.module.model, dm)["acc"]
    assert acc_bn > 0.6 and acc_hom > 0.5, (acc_bn, acc_hom)
    print(f"digits test accuracy: bn {acc_bn:.4f}, homogeneous {acc_hom:.4f}")
    for m in homogeneous_net.module.model.modules():
        if isinstance(m, nn.Conv2d):
            assert m.bias is not None and not m.bias.any()


@pytest.mark.slow
def test_cli_ablation_curves(bn_net, dm, tmp_path):
    out = tmp_path / "ablation"
    res = run_cli(
        "ablation",
        "--ckpt",
        bn_net.ckpt,
        "--layers",
        "features.0",
        "--criteria",
        "[l1, apoz]",
        "--random_orders",
        "2",
        "--samples_per_class",
        "5",
        "--out",
        out,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    # tqdm progress bars on stderr for the long loops (scoring, the ablation passes); which frame is
    # drawn last depends on timing (bars are cleared on close), so check that a bar with a rate was shown
    assert "ablation features.0" in res.stderr and re.search(r"\d+%\|.*it/s", res.stderr), res.stderr[-2000:]
    assert "| features.0 | l1 | least_important_first |" in res.stdout
    assert_png(out / "ablation_features.0.png")
    rows = read_csv(out / "ablation_curves.csv")
    net = bn_net.module.model
    base = plain_eval(net, dm)
    dead = plain_eval(zero_channels_via_bn(net, "features.0", range(8)), dm)
    curves = {}
    for r in rows:
        curves.setdefault((r["criterion"], r["order"], r["repeat"]), []).append(r)
    assert set(curves) == {
        ("l1", "least_important_first", "0"),
        ("l1", "most_important_first", "0"),
        ("apoz", "least_important_first", "0"),
        ("apoz", "most_important_first", "0"),
        ("random", "random", "0"),
        ("random", "random", "1"),
    }
    l1 = lp.score(net, "l1", layers=["features.0"], progress=False)["features.0"]
    for key, rr in curves.items():
        removed = [int(r["removed"]) for r in rr]
        assert removed == list(range(9)), key  # the x-axis: one more channel removed at every step
        assert [int(r["step"]) for r in rr] == list(range(9))
        for r in rr:
            for col, v in r.items():
                if col.startswith(("acc", "balanced_acc", "recall_", "class_bacc_")):
                    assert 0.0 <= float(v) <= 1.0, (key, col, v)
            assert float(r["loss"]) >= 0
        assert float(rr[0]["acc"]) == pytest.approx(base["acc"], abs=1e-12)  # nothing removed
        assert [float(rr[0][f"class_bacc_{c}"]) for c in range(10)] == pytest.approx(
            base["class_bacc"], abs=1e-12
        )
        # every channel removed == the layer zeroed by another mechanism (BatchNorm weight = bias = 0)
        assert float(rr[-1]["acc"]) == pytest.approx(dead["acc"], abs=1e-12)
    # a partial step of the l1 least-important-first curve against the same channels zeroed through BatchNorm
    first3 = ablation_order(l1, "least_important_first")[:3].tolist()
    ref = plain_eval(zero_channels_via_bn(net, "features.0", first3), dm)
    assert float(curves[("l1", "least_important_first", "0")][3]["acc"]) == pytest.approx(ref["acc"], abs=1e-12)
    # per-class gain = mean over classes of max over steps of class_bacc_c minus its unablated value
    summary = {(r["criterion"], r["order"]): r for r in read_csv(out / "ablation_summary.csv")}
    rr = curves[("apoz", "most_important_first", "0")]
    gain = (
        sum(max(float(r[f"class_bacc_{c}"]) for r in rr) - float(rr[0][f"class_bacc_{c}"]) for c in range(10))
        / 10
    )
    assert float(summary[("apoz", "most_important_first")]["per_class_gain"]) == pytest.approx(gain, abs=1e-12)
    assert float(summary[("l1", "least_important_first")]["acc_0"]) == pytest.approx(base["acc"], abs=1e-12)
    assert (out / "ablation_summary.md").read_text().count("| features.0 |") == 5


@pytest.mark.slow
def test_ablation_mean_mode_matches_bias_balanced_bn(bn_net, dm):
    net = bn_net.module.model
    layer = "features.8"
    res = cumulative_ablation(
        bn_net.module,
        dm,
        dm,
        layers=layer,
        criteria=["l1"],
        orders=["ascending"],
        random_orders=0,
        mode="mean",
        step=8,
        samples_per_class=10,
        progress=False,
    )
    removed = [r["removed"] for r in res.curves]
    assert removed == [0, 8, 16, 24, 32]
    # reference: the post-ReLU channel means by a plain hook, then BatchNorm weight 0 and bias = mean
    # (features.8's consumer, features.11, reads that ReLU output directly: its input mean is the map's)
    relu = net.get_submodule("features.10")
    acts = []
    h = relu.register_forward_hook(
        lambda m, a, out: acts.append(out.detach().double().sum(dim=(0, 2, 3))) or None
    )
    n_pos = 0
    with torch.no_grad():
        for x, _ in dm.scoring_dataloader(10):
            net(x)
            n_pos += x.shape[0] * 8 * 8
    h.remove()
    sums = torch.stack(acts).sum(0)
    means = (sums / n_pos).float()
    order = ablation_order(lp.score(net, "l1", layers=[layer], progress=False)[layer], "ascending")
    for j, k in enumerate(removed):
        ref = copy.deepcopy(net)
        bn = bn_of(ref, layer)
        with torch.no_grad():
            idx = order[:k]
            bn.weight[idx] = 0
            bn.bias[idx] = means[idx]  # ReLU(mean) = mean: the channel outputs its mean everywhere
        assert res.curves[j]["acc"] == pytest.approx(plain_eval(ref, dm)["acc"], abs=1e-12), k
    assert res.meta["mode"] == "mean"


@pytest.mark.slow
def test_whole_network_ablation_ranks_layers_together(bn_net, dm):
    net = bn_net.module.model
    layers = ["features.0", "features.4"]
    res = cumulative_ablation(
        bn_net.module,
        dm,
        layers=layers,
        criteria=["l1"],
        scope="network",
        orders=["ascending"],
        random_orders=1,
        step=4,
        max_fraction=0.5,
        normalize="minmax",
        progress=False,
    )
    assert {r["unit"] for r in res.curves} == {"network"}
    curve = res.curve("l1", "ascending", "network")
    assert curve["removed"] == [0, 4, 8, 12]  # 24 channels, half of them, 4 per step
    # reference ranking: min-max normalised L1 within each layer, then all channels together
    s = lp.score(net, "l1", layers=layers, progress=False)
    keys = []
    for li, n in enumerate(layers):
        v = s[n]
        v = (v - v.min()) / (v.max() - v.min())
        keys += [(float(v[c]), li, c) for c in range(v.numel())]
    keys.sort()
    removed = keys[:8]
    ref = copy.deepcopy(net)
    for li, n in enumerate(layers):
        ref = zero_channels_via_bn(ref, n, [c for _, lj, c in removed if lj == li])
    assert curve["acc"][2] == pytest.approx(plain_eval(ref, dm)["acc"], abs=1e-12)


@pytest.mark.slow
def test_cli_rescale_exact_on_homogeneous_network(homogeneous_net, tmp_path):
    out = tmp_path / "rescale"
    layer = "features.3"
    res = run_cli(
        "rescale",
        "--ckpt",
        homogeneous_net.ckpt,
        "--layer",
        layer,
        "--criteria",
        "[l1, feature_entropy, apoz]",
        "--layers",
        f"[features.0, {layer}, features.6, features.8]",
        "--samples_per_class",
        "5",
        "--test",
        "false",
        "--out",
        out,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Rescaling audit" in res.stdout
    assert "bn=none" in res.stdout  # bn=auto (default): a BatchNorm-free network has nothing to fold
    assert_png(out / "rescaling_audit.png")
    rows = read_csv(out / "rescaling_audit.csv")
    assert {r["condition"] for r in rows} == {"original", "input", "filters", "both"}
    by = {(r["criterion"], r["condition"], r["layer"]): r for r in rows}
    net = homogeneous_net.module.model
    l1 = lp.score(net, "l1", progress=False)
    for cond in ("original", "input", "filters", "both"):
        for n in ("features.0", layer, "features.6", "features.8"):
            fe = by[("feature_entropy", cond, n)]
            assert fe["identical"] == "True" and float(fe["max_abs_diff"]) == 0.0, (cond, n)  # bit-exact
            assert by[("apoz", cond, n)]["identical"] == "True"
            r = by[("l1", cond, n)]
            expected = float(l1[n].double().mean()) * (
                0.5 if (n == layer and cond in ("filters", "both")) else 1.0
            )
            assert float(r["mean"]) == expected, (cond, n)  # exactly halved for the scaled layer only
            assert r["same_ranking"] == "True"
    assert float(by[("l1", "filters", layer)]["ratio"]) == 0.5
    assert by[("l1", "filters", layer)]["identical"] == "False"
    table = read_csv(out / "rescaling_audit_table.csv")
    fe_row = next(r for r in table if r["criterion"] == "feature_entropy")
    assert fe_row["identical input/filters/both"] == "yes/yes/yes"


def test_rescaled_maps_are_exact_in_homogeneous_network(homogeneous_net, dm):
    """The premise of the audit: in the bias-free, BN-free network every captured map scales exactly."""
    net = homogeneous_net.module.model
    x, _ = next(iter(dm.test_dataloader()))
    layers = find_prunable_layers(net, x[:2])
    maps = {}
    with torch.no_grad(), capture_activations(net, layers, lambda n, a: maps.__setitem__(n, a.clone())):
        net(x)
    base = dict(maps)
    with torch.no_grad(), capture_activations(net, layers, lambda n, a: maps.__setitem__(n, a.clone())):
        net(x * 0.5)
    for n in layers:
        assert torch.equal(maps[n], base[n] * 0.5), n
        if maps[n].ndim == 4 and maps[n].shape[-1] >= 3:
            assert torch.equal(birth_times(maps[n]), birth_times(base[n])), n


@pytest.mark.slow
def test_rescale_bn_fold_vs_keep(bn_net, dm):
    layer = "features.4"
    kw = dict(
        layer=layer,
        criteria=["l1", "feature_entropy"],
        layers=[layer, "features.8"],
        samples_per_class=5,
        progress=False,
        test_data=dm,
    )
    fold = rescaling_audit(bn_net.module, dm, bn="fold", **kw)
    keep = rescaling_audit(bn_net.module, dm, bn="keep", **kw)
    f = {(r["criterion"], r["condition"], r["layer"]): r for r in fold.rows}
    k = {(r["criterion"], r["condition"], r["layer"]): r for r in keep.rows}
    for res in (f, k):  # L1 is a weight statistic: exactly halved either way
        assert res[("l1", "filters", layer)]["ratio"] == 0.5
        assert res[("l1", "input", layer)]["identical"]
    # eval-mode BatchNorm does not re-normalise: with the statistics kept, the downstream maps change
    assert not k[("feature_entropy", "filters", "features.8")]["identical"]
    assert abs(keep.meta["test_acc"]["filters"] - keep.meta["test_acc"]["original"]) > 0.01
    # folding the scale into the BatchNorm statistics (what re-normalisation learns) undoes it up to eps
    assert (
        f[("feature_entropy", "filters", "features.8")]["max_abs_diff"]
        < k[("feature_entropy", "filters", "features.8")]["max_abs_diff"]
    )
    assert abs(fold.meta["test_acc"]["filters"] - fold.meta["test_acc"]["original"]) <= 2 / 360


@pytest.mark.slow
def test_cli_randomness(bn_net, tmp_path):
    out = tmp_path / "randomness"
    layer = "features.4"
    res = run_cli(
        "randomness",
        "--ckpt",
        bn_net.ckpt,
        "--layer",
        layer,
        "--criteria",
        "[l1, feature_entropy]",
        "--repeats",
        "3",
        "--reinit",
        "layer",
        "--samples_per_class",
        "5",
        "--out",
        out,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Randomness audit (features.4, layer re-initialised)" in res.stdout
    assert_png(out / "randomness_audit.png")
    rows = read_csv(out / "randomness_audit.csv")
    assert {r["network"] for r in rows} == {"trained", "random_0", "random_1", "random_2"}
    by = {(r["criterion"], r["network"]): r for r in rows}
    net = bn_net.module.model
    assert float(by[("l1", "trained")]["mean"]) == pytest.approx(
        float(lp.score(net, "l1", layers=[layer], progress=False)[layer].mean()), rel=1e-12
    )
    # re-initialisation i: Kaiming normal (fan-out) drawn from a generator seeded with i
    w = net.get_submodule(layer).weight
    for i in range(3):
        g = torch.Generator().manual_seed(i)
        fresh = torch.randn(w.shape, generator=g) * math.sqrt(2.0 / (w.shape[0] * 9))
        assert float(by[("l1", f"random_{i}")]["mean"]) == pytest.approx(
            float(fresh.abs().sum(dim=(1, 2, 3)).double().mean()), rel=1e-6
        )
    trained_acc = float(by[("l1", "trained")]["test_acc"])
    random_acc = sum(float(by[("l1", f"random_{i}")]["test_acc"]) for i in range(3)) / 3
    assert random_acc < trained_acc - 0.2  # a random layer in the middle ruins the network
    table = read_csv(out / "randomness_audit_table.csv")
    assert [r["criterion"] for r in table] == ["l1", "feature_entropy"]
    fe = table[1]
    vals = [float(by[("feature_entropy", f"random_{i}")]["mean"]) for i in range(3)]
    mean = sum(vals) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / 2)
    assert float(fe["random mean"]) == pytest.approx(mean) and float(fe["random std"]) == pytest.approx(std)


@pytest.mark.slow
def test_cli_layers(bn_net, dm, tmp_path):
    out = tmp_path / "layers"
    res = run_cli("layers", "--ckpt", bn_net.ckpt, "--samples_per_class", "5", "--out", out)
    assert res.returncode == 0, res.stderr[-3000:]
    assert_png(out / "layer_analysis.png")
    rows = read_csv(out / "layer_analysis.csv")
    net = bn_net.module.model
    names = list(find_prunable_layers(net, torch.zeros(1, 3, 32, 32)))
    assert [r["layer"] for r in rows if r["model"] == "trained"] == names
    assert [r["layer"] for r in rows if r["model"] == "random"] == names
    for r in rows:
        if int(r["map_size"]) >= 3:
            assert 0 <= float(r["selective_rate"]) <= 1 and float(r["feature_entropy"]) >= 0
        else:  # 2x2 maps and the hidden Linear cannot hold a cycle
            assert math.isnan(float(r["feature_entropy"]))
    # reference for one layer: births by hand, entropy per class, mean over units and classes
    maps, labels = [], []
    layers = find_prunable_layers(net, torch.zeros(1, 3, 32, 32), ["features.4"])
    with torch.no_grad(), capture_activations(net, layers, lambda n, a: maps.append(birth_times(a))):
        for x, y in dm.scoring_dataloader(5):
            net(x)
            labels.append(y)
    b, y = torch.cat(maps), torch.cat(labels)
    hs = [feature_entropy(b[y == c])[0] for c in range(10)]
    es = [feature_entropy(b[y == c])[1] for c in range(10)]
    row = next(r for r in rows if r["model"] == "trained" and r["layer"] == "features.4")
    assert float(row["feature_entropy"]) == pytest.approx(float(torch.stack(hs).mean()), rel=1e-9)
    assert float(row["selective_rate"]) == pytest.approx(float(torch.stack(es).mean()), rel=1e-9)
    assert "FE trained" in (out / "layer_analysis_table.md").read_text()


def test_feature_entropy_monitor_records_logs_and_plots(bn_net):
    hist = bn_net.monitor.history
    assert [h["epoch"] for h in hist] == list(range(EPOCHS + 1))  # before training, then every epoch
    assert math.isnan(hist[0]["train_loss"]) and all(h["train_loss"] > 0 for h in hist[1:])
    assert hist[-1]["train_loss"] < hist[1]["train_loss"]
    for h in hist:
        assert 0 <= h["selective_rate/features.0"] <= 1 and h["feature_entropy/features.0"] >= 0
        assert "feature_entropy/features.22" not in h  # 2x2 maps: no entropy
    rows = read_csv(bn_net.log_dir / "metrics.csv")  # through the trainer's logger
    logged = [r for r in rows if r.get("feature_entropy/mean")]
    assert len(logged) == EPOCHS + 1
    assert float(logged[-1]["feature_entropy/features.4"]) == pytest.approx(
        hist[-1]["feature_entropy/features.4"]
    )
    assert len(read_csv(bn_net.tmp / "monitor" / "feature_entropy_monitor.csv")) == EPOCHS + 1
    assert_png(bn_net.tmp / "monitor" / "feature_entropy_monitor.png")


@pytest.mark.slow
def test_class_specific_gain(bn_net, dm):
    net = bn_net.module.model
    layer = "features.8"
    x, y = next(iter(dm.test_dataloader()))  # 128 test images keep it quick
    test = [(x, y)]
    with pytest.warns(UserWarning, match="criterion 'class_selectivity' left out"):
        res = cumulative_ablation(
            bn_net.module,
            test,
            dm,
            layers=layer,
            criteria=["l1", "apoz", "class_selectivity"],
            orders=["ascending"],
            random_orders=0,
            step=4,
            class_specific=True,
            samples_per_class=5,
            num_classes=10,
            progress=False,
        )
    gains = {r["criterion"]: r for r in res.class_gain}
    assert set(gains) == {"l1", "apoz"}
    # a weight criterion ranks every class the same way: class-specific gain = the shared curve's gain
    assert gains["l1"]["class_specific_gain"] == pytest.approx(
        gains["l1"]["shared_gain"], abs=1e-12
    )
    # reference for class 0: APoZ on class-0 scoring images only, least important first, ablated with the public hook
    x0, y0 = [], []
    for xb, yb in dm.scoring_dataloader(5):
        x0.append(xb[yb == 0])
        y0.append(yb[yb == 0])
    apoz0 = lp.score(net, "apoz", [(torch.cat(x0), torch.cat(y0))], layers=[layer], progress=False)[layer]
    order = ablation_order(apoz0, "ascending")
    values = []
    for k in range(0, 33, 4):
        with torch.no_grad(), ablate_channels(net, {layer: order[:k]}, x[:2]):
            pred = net(x).argmax(1)
        recall = int(((pred == 0) & (y == 0)).sum()) / int((y == 0).sum())
        spec = int(((pred != 0) & (y != 0)).sum()) / int((y != 0).sum())
        values.append((recall + spec) / 2)
    assert gains["apoz"]["gain_0"] == pytest.approx(max(values) - values[0], abs=1e-12)
    assert all(gains["apoz"][f"gain_{c}"] >= 0 for c in range(10))
