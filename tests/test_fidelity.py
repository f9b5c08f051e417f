"""Fidelity to the papers (issue 15): layer scope, AFIE per-layer ratios of Lu et al. on VGG-16,
the entropy quantiser of conv units, the information paper's hybrid split, dead-channel ties."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import lightprune as lp
from lightprune.callbacks import PruningCallback
from lightprune.collect import find_prunable_layers, select_layers
from lightprune.engine import PruneSpec, plan_for_spec, score_for_spec, spec_layers
from lightprune.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------
# item 2: layer scope
# ------------------------------------------------------------------------------------------------
def test_select_layers_names_patterns_exclude_types():
    net = lp.create_model("cifar_vgg11", 10, width_mult=0.25)
    found = find_prunable_layers(net)
    assert list(found)[-1] == "classifier.0"
    assert list(select_layers(found, layers=["features.0", "classifier.*"])) == ["features.0", "classifier.0"]
    convs = [n for n, f in found.items() if f.kind == "conv"]
    assert list(select_layers(found, layer_types="conv")) == convs
    assert list(select_layers(found, layer_types=["linear"])) == ["classifier.0"]
    assert list(select_layers(found, layers="features.*", exclude=["features.0", "features.?"])) == convs[3:]
    with pytest.raises(ConfigError, match=r"layers contains 'feat.*', which matches no prunable layer; prunable layers: \['features.0'"):
        select_layers(found, layers=["feat.*"])
    with pytest.raises(ConfigError, match=r"exclude contains 'nope'.*prunable layers: \['features.0'"):
        select_layers(found, exclude="nope")
    with pytest.raises(ConfigError, match=r"layer_types contains 'bn'; allowed: conv, linear"):
        select_layers(found, layer_types="bn")
    with pytest.raises(ConfigError, match="no layer left to prune"):
        select_layers(found, layers="features.*", layer_types="linear")
    with pytest.raises(ConfigError, match=r"'classifier.2', which is the final classifier"):
        lp.score(net, "l1", layers=["classifier.2"])


def test_scope_in_score_plan_spec_callback_compare():
    net = lp.create_model("cifar_vgg11", 10, width_mult=0.25)
    x = torch.zeros(1, 3, 32, 32)
    s = lp.score(net, "l1", layer_types="conv", exclude="features.0")
    assert "classifier.0" not in s and "features.0" not in s and len(s) == 7
    full = lp.score(net, "l1")
    p = lp.plan(net, full, ratio=0.5, example_inputs=x, layers=["features.*"], exclude=["features.4"])
    assert set(p.ratios) == set(s) - {"features.4"} | {"features.0"}
    spec = PruneSpec(criterion="l1", layers=["features.*", "classifier.0"], exclude=["features.0"], layer_types=["conv"])
    assert spec_layers(net, spec, x) == list(s)
    assert list(score_for_spec(net, spec, None)) == list(s)
    assert spec.to_dict()["layer_types"] == ["conv"]
    cb = PruningCallback(criterion="l1", layers=["features.*"], exclude="features.0", layer_types="conv")
    assert cb.spec.layers == ["features.*"] and cb.spec.exclude == ["features.0"] and cb.spec.layer_types == ["conv"]
    from lightprune.compare.config import CompareConfig
    assert {"exclude", "layer_types"} <= set(CompareConfig.__dataclass_fields__)


# ------------------------------------------------------------------------------------------------
# item 2: AFIE on VGG-16 (Lu et al.) through the shipped callback options
# ------------------------------------------------------------------------------------------------
#: Lu et al., VGG-16 on CIFAR-10 at an overall ratio of 0.65: conv1 loses 56.19 % of its filters.
PAPER_CONV1 = 56.19


def _afie_closed_form(net: nn.Module, ratio: float) -> np.ndarray:
    """lambda_l (in %) from the AFIE formula, written independently of lightprune: the kernel-averaged
    weight's singular values, min-max, softmax, entropy, / c_l; lambda_l = lambda_min AFIE_max / AFIE_l
    with sum lambda_l c_l = ratio sum c_l (no cap is active at 0.65)."""
    afie, c = [], []
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            s = np.linalg.svd(m.weight.detach().double().mean(dim=(2, 3)).numpy(), compute_uv=False)
            s = (s - s.min()) / (s.max() - s.min())
            p = np.exp(s) / np.exp(s).sum()
            afie.append(-(p * np.log(p)).sum() / m.out_channels)
            c.append(m.out_channels)
    afie_a, c_a = np.array(afie), np.array(c)
    w = afie_a.max() / afie_a
    return 100 * ratio * c_a.sum() / (w * c_a).sum() * w


@pytest.mark.parametrize("path", ["callbacks/prune_afie.yaml", "configs/prune_vgg16.yaml"])
def test_afie_vgg16_per_layer_ratios_match_the_paper(path):
    cfg = yaml.safe_load((ROOT / path).read_text())
    if "trainer" in cfg:
        cfg = next(c for c in cfg["trainer"]["callbacks"] if c["class_path"].endswith("PruningCallback"))
    a = cfg["init_args"]
    assert a.get("layer_types") == ["conv"]
    cb = PruningCallback(**a)
    torch.manual_seed(0)
    net = lp.create_model("cifar_vgg16", 10)  # random init: AFIE is stable from the start (the paper's claim)
    scores = score_for_spec(net, cb.spec, None)
    plan = plan_for_spec(net, scores, cb.spec, torch.zeros(1, 3, 32, 32))
    convs = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    assert list(plan.ratios) == convs  # the hidden Linear is not planned
    got = np.array([100 * plan.ratios[n] for n in convs])
    ref = _afie_closed_form(net, a["ratio"])
    assert abs(got[0] - PAPER_CONV1) < 0.5, (got[0], PAPER_CONV1)
    assert abs(ref[0] - PAPER_CONV1) < 0.5
    idx = [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12]  # conv1-conv7, conv9-conv13
    assert np.abs(got[idx] - ref[idx]).max() < 0.5, np.round(np.c_[got, ref], 2)
    assert abs(plan.global_ratio - a["ratio"]) < 0.005


# ------------------------------------------------------------------------------------------------
# item 1: entropy ranks conv units by default
# ------------------------------------------------------------------------------------------------
def _digits_batches(per_class: int, size: int):
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = np.concatenate([np.flatnonzero(d.target == c)[:per_class] for c in range(10)])
    x = torch.tensor(d.images[idx], dtype=torch.float32).unsqueeze(1) / 16.0
    x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    return [(x, torch.tensor(d.target[idx]))]


@pytest.mark.parametrize("model", ["cifar_vgg16", "resnet18"])
def test_entropy_default_ranks_every_conv_layer(model):
    """Random-init networks (seed 0), digits upsampled to 32x32, 5 images per class: with the old default
    (1 bit at each unit's own median) conv layers are flat; with 8 equal-width bins over the layer's
    range none is."""
    torch.manual_seed(0)
    if model == "cifar_vgg16":
        net = lp.create_model("cifar_vgg16", 10, width_mult=0.25)
    else:
        import torchvision

        net = torchvision.models.resnet18(num_classes=10)
    net.eval()
    batches = _digits_batches(5, 32)
    s = lp.score(net, "entropy", batches, layer_types="conv", progress=False)
    assert s.flat == [], s.flat
    old = lp.score(net, "entropy", batches, layer_types="conv", quantizer="median", progress=False)
    assert len(old.flat) >= 1


# ------------------------------------------------------------------------------------------------
# item 3: the information paper's hybrid (MI shallow, KL selectivity deep), mlp and alexnet
# ------------------------------------------------------------------------------------------------
def test_model_zoo_mlp_and_alexnet():
    mlp = lp.create_model("mlp", 10, in_channels=1)
    assert mlp(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert mlp(torch.zeros(2, 1, 32, 32)).shape == (2, 10)  # pooled to 8x8 first
    assert list(find_prunable_layers(mlp, torch.zeros(1, 1, 8, 8))) == ["layers.2", "layers.4", "layers.6"]
    sig = lp.create_model("mlp", 10, in_channels=1, activation="sigmoid", hidden=[20, 10])
    assert [type(m).__name__ for m in sig.layers] == ["AdaptiveAvgPool2d", "Flatten", "Linear", "Sigmoid", "Linear", "Sigmoid", "Linear"]
    alex = lp.create_model("alexnet", 10, width_mult=0.125).eval()
    assert alex(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    found = find_prunable_layers(alex, torch.zeros(1, 3, 32, 32))
    assert [f.kind for f in found.values()] == ["conv"] * 5 + ["linear"] * 2
    assert [f.out_channels for f in found.values()][:5] == [8, 24, 48, 32, 32]
    full = lp.create_model("alexnet", 10)
    assert [m.out_channels for m in full.features if isinstance(m, nn.Conv2d)] == [64, 192, 384, 256, 256]
    with pytest.raises(ConfigError, match="activation='tanh' is not allowed"):
        lp.create_model("mlp", 10, activation="tanh")
    # one prune through the engine on each
    from lightprune.engine import run_prune

    x, y = torch.randn(20, 1, 8, 8), torch.arange(20) % 10
    res = run_prune(mlp, [(x, y)], PruneSpec(criterion="entropy", ratio=0.5), latency_inputs=None)
    assert mlp.layers[2].out_features == 64 and res.plan.strategy == "uniform"
    res = run_prune(alex, [(torch.randn(20, 3, 32, 32), y)], PruneSpec(criterion="l1", ratio=0.5, layer_types="conv"),
                    latency_inputs=None)
    assert alex.features[0].out_channels == 4 and alex.classifier[1].out_features == 512


def test_hybrid_criteria_by_depth_information_paper():
    from lightprune.data import resolve_scoring_set

    a = yaml.safe_load((ROOT / "callbacks/prune_info_hybrid.yaml").read_text())["init_args"]
    cb = PruningCallback(**a)
    assert cb.spec.criteria == ["mutual_information", "kl_selectivity"] and cb.criterion_name == "mutual_information+kl_selectivity"
    torch.manual_seed(0)
    net = lp.create_model("mlp", 10, in_channels=1, hidden=[16, 16, 16, 16, 16, 16]).eval()
    batches = _digits_batches(10, 8)
    batches = [(x[:, :1], y) for x, y in batches]
    scoring = resolve_scoring_set(batches)
    per = score_for_spec(net, PruneSpec(criterion=a["criterion"], depth_split=a["depth_split"]), scoring)
    names = list(find_prunable_layers(net, batches[0][0][:1]))
    assert [per[n].criterion for n in names] == ["mutual_information"] * 2 + ["kl_selectivity"] * 4  # 1:2
    mi = lp.score(net, "mutual_information", batches, progress=False)
    kl = lp.score(net, "kl_selectivity", batches, progress=False)
    for n in names[:2]:
        assert torch.equal(per[n][n], mi[n])
    for n in names[2:]:
        assert torch.equal(per[n][n], kl[n])
    from lightprune.engine import fallback_layers

    assert fallback_layers(per) == []
    p = plan_for_spec(net, per, cb.spec, batches[0][0][:1])
    assert p.criterion == "kl_selectivity+mutual_information"
    # the same through the "+" spelling, with per-criterion hyperparameters
    spec = PruneSpec(criterion="mutual_information+kl_selectivity", criterion_kwargs={"kl_selectivity": {"quantizer": "width", "bins": 4}})
    assert spec.split_points() == [0.5] and spec.kwargs_for("kl_selectivity") == {"quantizer": "width", "bins": 4}
    with pytest.raises(ConfigError, match="depth_split=\\[0.5, 0.2\\] is not allowed"):
        PruneSpec(criterion=["l1", "fpgm"], depth_split=[0.5, 0.2])
    with pytest.raises(ConfigError, match="depth_split is only used with several criteria"):
        PruneSpec(criterion="l1", depth_split=[0.5])


def test_compare_accepts_the_hybrid(tmp_path):
    from lightprune.compare import Comparison, parse_config
    from lightprune.engine import merge_per_layer

    cfg = parse_config([
        "--config", str(ROOT / "configs" / "compare_criteria.yaml"), "--run_dir", str(tmp_path),
        "--criteria", '["l1", "mutual_information+kl_selectivity"]', "--depth_split", "[0.3333]",
        "--criterion_hparams", '{"mutual_information+kl_selectivity": {"kl_selectivity": {"quantizer": "width", "bins": 4}}}',
        "--layer_types", "[conv]", "--exclude", '["features.0"]', "--wandb", "false",
    ])
    assert cfg.criteria == ["l1", "mutual_information+kl_selectivity"] and cfg.depth_split == [0.3333]
    assert cfg.layer_types == ["conv"] and cfg.exclude == ["features.0"]
    cmp = Comparison(cfg, echo=lambda *a: None)
    cmp.layers = ["a", "b", "c"]
    spec = cmp._spec("mutual_information+kl_selectivity", 0.5)
    assert spec.criteria == ["mutual_information", "kl_selectivity"] and spec.split_points() == [0.3333]
    assert spec.kwargs_for("kl_selectivity") == {"quantizer": "width", "bins": 4}
    assert cmp._spec("l1", 0.5).depth_split is None
    with pytest.raises(ConfigError, match="criteria contains 'mutual_information\\+nope'"):
        parse_config(["--config", str(ROOT / "configs" / "compare_criteria.yaml"), "--run_dir", str(tmp_path),
                      "--criteria", '["mutual_information+nope"]'])
    # the per-layer result is stored as one Scores (compare caches and correlates one per criterion)
    net = lp.create_model("mlp", 10, in_channels=1, hidden=[8, 8, 8])
    batches = [(torch.randn(20, 1, 8, 8), torch.arange(20) % 10)]
    from lightprune.data import resolve_scoring_set

    per = score_for_spec(net, PruneSpec(criterion=["entropy", "l1"], depth_split=[1 / 3]), resolve_scoring_set(batches))
    one = merge_per_layer(per, "entropy+l1")
    assert one.meta["criterion_by_layer"] == {"layers.2": "entropy", "layers.4": "l1", "layers.6": "l1"}
    assert torch.equal(one["layers.4"], per["layers.4"]["layers.4"])
