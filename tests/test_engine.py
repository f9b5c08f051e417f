"""The one engine and its services: data resolution (dict batches), NaN activations, flat-score
fallback, strategy registry and targets, network discovery in Lightning modules, the module graph
(no import cycle, no private cross-module import)."""

import ast
import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

import lightprune as lp
from lightprune.data import DigitsDataModule, resolve_scoring_set, split_batch
from lightprune.engine import PruneSpec, fallback_layers, run_prune, score_for_spec
from lightprune.errors import ConfigError
from lightprune.lightning_glue import PrunedCheckpointMixin, resolve_model_attr
from lightprune.planner import StrategyContext, list_strategies, register_strategy

SRC = Path(__file__).resolve().parents[1] / "src" / "lightprune"
ROOT = Path(__file__).resolve().parents[1]
X32 = torch.zeros(1, 3, 32, 32)


def tiny():
    torch.manual_seed(0)
    return lp.create_model("cifar_vgg11", 10, width_mult=0.125)


def batches(n=2, bs=8):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(bs, 3, 32, 32, generator=g), torch.arange(bs) % 10) for _ in range(n)]


# ------------------------------------------------------------------------------ data resolution
def test_dict_batches_score_like_tuple_batches():
    net = tiny()
    tuples = batches()
    dicts = [{"image": x, "label": y} for x, y in tuples]
    custom = [{"pixels": x, "target": y} for x, y in tuples]
    a = lp.score(net, "apoz", tuples, progress=False)
    b = lp.score(net, "apoz", dicts, progress=False)
    c = lp.score(net, "apoz", custom, keys=("pixels", "target"), progress=False)
    for n in a:
        assert torch.equal(a[n], b[n]) and torch.equal(a[n], c[n])
    with pytest.raises(ConfigError, match=r"lacks \['image', 'label'\].*keys="):
        lp.score(net, "apoz", custom, progress=False)


def test_bad_data_is_a_clear_error():
    with pytest.raises(ConfigError, match="dataloader=str is not allowed"):
        resolve_scoring_set("digits")
    with pytest.raises(ConfigError, match="data is required"):
        resolve_scoring_set(None, argument="data")
    with pytest.raises(ConfigError, match="a batch must be"):
        split_batch(torch.zeros(3))
    with pytest.raises(ConfigError, match="scoring set is empty"):
        resolve_scoring_set([]).example_inputs()


def test_nan_activations_name_the_layer():
    net = tiny()
    with torch.no_grad():
        net.features[4].weight[0, 0, 0, 0] = float("nan")  # the second conv
    with pytest.raises(ConfigError, match=r"layer 'features\.4': its activations contain NaN or inf"):
        lp.score(net, "apoz", batches(), progress=False)


# ------------------------------------------------------------------------------ engine
def test_run_prune_scores_plans_prunes_and_reports():
    net = tiny()
    data = batches()
    widths = [m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)]
    res = run_prune(net, data, PruneSpec(criterion="l1", ratio=0.5), evaluate_on={"val": data}, latency_inputs=4)
    assert [m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)] == [w - round(w / 2) for w in widths]
    assert res.report.params_after < res.report.params_before
    assert set(res.metrics_before) >= {"val/acc", "val/balanced_acc", "val/loss"}
    assert res.report.latency_after["batch_size"] == 4 and res.report.latency_after["runs"] == 5
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_flat_layers_go_to_the_fallback():
    net = tiny()
    data = batches()
    plain = lp.score(net, "feature_entropy", data, progress=False)
    assert plain.flat  # the 2x2 maps and the hidden Linear layers cannot be ranked
    mixed = score_for_spec(net, PruneSpec(criterion="feature_entropy", fallback="l1"), resolve_scoring_set(data))
    assert fallback_layers(mixed) == plain.flat
    l1 = lp.score(net, "l1")
    for n in plain.flat:
        assert mixed[n].criterion == "l1" and torch.equal(mixed[n][n], l1[n])
    ranked = [n for n in plain if n not in plain.flat]
    assert ranked and all(mixed[n].criterion == "feature_entropy" for n in ranked)


def test_layer_scores_attached_when_the_strategy_needs_them():
    net = tiny()
    s = score_for_spec(net, PruneSpec(criterion="fpgm", strategy="afie", ratio=0.5), None)
    afie = lp.score(net, "afie")
    assert s.criterion == "fpgm" and s.layer_scores == afie.layer_scores


def test_spec_rejects_unknown_names():
    with pytest.raises(lp.UnknownNameError, match="Unknown criterion 'l3'"):
        PruneSpec(criterion="l3")
    with pytest.raises(ConfigError, match="strategy='greedy' is not allowed; choose one of: afie, flops, global"):
        PruneSpec(strategy="greedy")
    with pytest.raises(ConfigError, match="ratio=1.2"):
        PruneSpec(ratio=1.2)


# ------------------------------------------------------------------------------ strategies and targets
def test_registered_strategy_is_used_by_plan():
    @register_strategy("_test_first_half")
    def first_half(ctx: StrategyContext):
        return [g.channels if i else math.ceil(g.channels / 2) for i, g in enumerate(ctx.groups)]

    net = tiny()
    p = lp.plan(net, lp.score(net, "l1"), strategy="_test_first_half", ratio=0.0, example_inputs=X32)
    assert p.ratios["features.0"] == 0.5 and all(r == 0 for n, r in p.ratios.items() if n != "features.0")
    assert "_test_first_half" not in list_strategies()  # private names hidden, usable by name


def test_params_target_is_met():
    net = tiny()
    p = lp.plan(net, lp.score(net, "l1"), strategy="params", ratio=0.5, example_inputs=X32)
    assert p.meta["params_after"] <= 0.5 * p.meta["params_before"]
    assert p.meta["params_after"] >= 0.5 * p.meta["params_before"] * 0.97
    with pytest.raises(ConfigError, match=r"a reduction of 0.99999 cannot be reached with 'uniform'; the most it reaches is 0\.99"):
        lp.plan(net, lp.score(net, "l1"), strategy="params", ratio=0.99999, example_inputs=X32)


# ------------------------------------------------------------------------------ Lightning modules
class BackboneNet(PrunedCheckpointMixin, L.LightningModule):
    """A plain LightningModule (not ClassificationModule) keeping its network in `self.backbone`."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.save_hyperparameters()
        self.backbone = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 10),
        )
        self.loss_fn = nn.CrossEntropyLoss()  # no parameters: not a candidate network

    def forward(self, x):
        return self.backbone(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.loss_fn(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def _callback_from_yaml(path: Path):
    import importlib

    cfg = yaml.safe_load(path.read_text())
    mod, _, cls = cfg["class_path"].rpartition(".")
    return getattr(importlib.import_module(mod), cls)(**cfg.get("init_args", {}))


def test_backbone_module_pruned_by_the_shipped_yaml_and_reloaded(tmp_path):
    module = BackboneNet()
    cb = _callback_from_yaml(ROOT / "callbacks" / "prune_l1.yaml")  # no model_attr given
    t = L.Trainer(accelerator="cpu", devices=1, max_epochs=3, callbacks=[cb], default_root_dir=str(tmp_path),
                  logger=False, enable_progress_bar=False, enable_model_summary=False, limit_train_batches=3,
                  limit_val_batches=1, num_sanity_val_steps=0)
    t.fit(module, datamodule=DigitsDataModule(image_size=16, channels=1, batch_size=32))
    assert cb.model_attr == "backbone" and cb.history[0]["epoch"] == 2
    assert [module.backbone[0].out_channels, module.backbone[4].out_channels] == [4, 8]
    path = tmp_path / "pruned.ckpt"
    t.save_checkpoint(path)
    fresh = BackboneNet.load_from_checkpoint(path, weights_only=True)  # its own load_from_checkpoint
    assert [fresh.backbone[0].out_channels, fresh.backbone[4].out_channels] == [4, 8]
    x = torch.randn(3, 1, 16, 16)
    module.eval(), fresh.eval()
    assert torch.equal(module(x), fresh(x))


def test_model_attr_discovery():
    class Two(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.encoder, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

    class Bare(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(3))

    assert resolve_model_attr(BackboneNet()) == "backbone"
    assert resolve_model_attr(lp.ClassificationModule("cifar_vgg11", 10, model_kwargs={"width_mult": 0.125})) == "model"
    assert resolve_model_attr(Bare()) == ""
    with pytest.raises(ConfigError, match=r"holds several child networks \['encoder', 'head'\]: pass model_attr="):
        resolve_model_attr(Two())


# ------------------------------------------------------------------------------ the module graph
def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(absolute lightprune module, imported names) of every import in ``path`` (top level and lazy)."""
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("lightprune"):
                out.append((mod, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("lightprune")]
    return out


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_cycle_and_no_private_cross_module_import():
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    private = []
    for m, path in files.items():
        for target, names in _imports(path):
            resolved = [f"{target}.{n}" for n in names if f"{target}.{n}" in files] or [target]
            for r in resolved:
                if r in files and r != m and not m.startswith(r + "."):  # a package's __init__ is not a cycle
                    graph[m].add(r)
            if target in files and target != m:
                private += [f"{m} imports {target}.{n}" for n in names if n.startswith("_") and f"{target}.{n}" not in files]
    assert not private, private
    # cycles among modules (packages' __init__ re-exports excluded: they only gather names)
    inits = {m for m, p in files.items() if p.name == "__init__.py"}
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for n in sorted(graph[m] - inits):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n] if n in stack else [m, n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(set(files) - inits):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles
