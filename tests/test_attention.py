"""Whole attention heads (issue 16): timm ``Attention``, torchvision ``nn.MultiheadAttention`` and
torchvision Swin's shifted-window attention (V1 and V2).

Tiny transformers (2 blocks, 4 heads, 32 px): the exact heads removed, the output against the
unpruned network with those heads (and the removed MLP units) masked, parameter counts by hand,
plan replay through ``weights_only`` data."""

import copy
import io

import pytest
import torch
import torchvision
from torch import nn

import lightprune as lp
from lightprune.attention import (
    HeadPrunedMultiheadAttention,
    attention_types,
    find_attention,
    head_scores,
    head_unprunable,
    prune_heads,
)
from lightprune.errors import ConfigError
from lightprune.graph import count_macs_params
from lightprune.plan import Plan
from lightprune.planner import plan_heads

timm = pytest.importorskip("timm")

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
E_TIMM, E_TV, H = 64, 32, 4
# heads made weak on purpose (weights x 0.1): these and only these are removed at 50 %
WEAK = {0: [1, 3], 1: [0, 2]}


def _weaken(w_in: torch.Tensor, w_out: torch.Tensor, heads: list[int], d: int) -> None:
    with torch.no_grad():
        for h in heads:
            for c in range(3):  # the q, k and v rows of head h
                w_in[c * H * d + h * d: c * H * d + (h + 1) * d] *= 0.1
            w_out[:, h * d:(h + 1) * d] *= 0.1


def tiny_timm():
    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_heads=H,
                            embed_dim=E_TIMM, num_classes=10).eval()
    for b, heads in WEAK.items():
        a = net.blocks[b].attn
        _weaken(a.qkv.weight, a.proj.weight, heads, a.head_dim)
    return net


def tiny_torchvision():
    torch.manual_seed(0)
    net = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=H,
                                               hidden_dim=E_TV, mlp_dim=64, num_classes=10).eval()
    for b, heads in WEAK.items():
        a = net.encoder.layers[b].self_attention
        _weaken(a.in_proj_weight, a.out_proj.weight, heads, a.head_dim)
    return net


def _mask(proj_weight: torch.Tensor, heads: list[int], d: int, mlp_out: nn.Linear, units: list[int]) -> None:
    """The reference: a head's contribution zeroed = its output-projection columns zeroed; a removed MLP
    unit = its column of the next Linear zeroed."""
    with torch.no_grad():
        for h in heads:
            proj_weight[:, h * d:(h + 1) * d] = 0
        mlp_out.weight[:, units] = 0


def _n(net):
    return sum(p.numel() for p in net.parameters())


BUILD = {"timm": tiny_timm, "torchvision": tiny_torchvision}


@pytest.fixture(scope="module", params=list(BUILD))
def pruned(request):
    """(kind, unpruned copy, pruned network, plan, report): one plan + prune per kind for the module."""
    net = BUILD[request.param]()
    ref = copy.deepcopy(net)
    p = lp.plan(net, lp.score(net, "l1"), strategy="uniform", ratio=0.5, example_inputs=X)
    r = lp.prune(net, p, X, measure_latency=False)
    return request.param, ref, net, p, r


def test_head_score_is_the_l1_of_the_heads_weights():
    net = tiny_timm()
    a, d = net.blocks[0].attn, net.blocks[0].attn.head_dim
    by_hand = torch.stack([
        a.qkv.weight.detach().reshape(3, H, d, E_TIMM)[:, h].abs().sum() + a.proj.weight.detach()[:, h * d:(h + 1) * d].abs().sum()
        for h in range(H)]).double()
    assert torch.allclose(head_scores(find_attention(net)["blocks.0.attn"]), by_hand)


def test_the_lowest_scored_heads_go_and_the_output_matches_the_masked_network(pruned):
    kind, ref, net, p, r = pruned
    ref = copy.deepcopy(ref)
    if kind == "timm":
        e, d = E_TIMM, E_TIMM // H  # 16
        names = [f"blocks.{b}.attn" for b in range(2)]
        attn = [net.blocks[b].attn for b in range(2)]
        mlp_units = [p.removed(f"blocks.{b}.mlp.fc1") for b in range(2)]
        ref_proj = [ref.blocks[b].attn.proj.weight for b in range(2)]
        ref_mlp_out = [ref.blocks[b].mlp.fc2 for b in range(2)]
        hidden_removed = 128  # of 256
    else:
        e, d = E_TV, E_TV // H  # 8
        names = [f"encoder.layers.encoder_layer_{b}.self_attention" for b in range(2)]
        attn = [net.encoder.layers[b].self_attention for b in range(2)]
        mlp_units = [p.removed(f"encoder.layers.encoder_layer_{b}.mlp.0") for b in range(2)]
        ref_proj = [ref.encoder.layers[b].self_attention.out_proj.weight for b in range(2)]
        ref_mlp_out = [ref.encoder.layers[b].mlp[3] for b in range(2)]
        hidden_removed = 32  # of 64
    assert {n: k.tolist() for n, k in p.heads.items()} == {names[0]: [0, 2], names[1]: [1, 3]}
    assert p.num_heads == {n: 4 for n in names}
    for b, at in enumerate(attn):
        assert (at.num_heads, at.head_dim) == (2, d)
        if kind == "timm":
            assert at.attn_dim == 2 * d and at.qkv.weight.shape == (6 * d, e) and at.proj.weight.shape == (e, 2 * d)
        else:
            assert isinstance(at, HeadPrunedMultiheadAttention) and at.embed_dim == e
            assert at.in_proj_weight.shape == (6 * d, e) and at.out_proj.weight.shape == (e, 2 * d)
        _mask(ref_proj[b], [h for h in range(H) if h not in p.heads[names[b]]], d, ref_mlp_out[b], mlp_units[b])
    with torch.no_grad():
        out, want = net(X), ref(X)
    assert out.shape == (2, 10) and torch.allclose(out, want, atol=1e-5)
    # per block: the q/k/v projection loses 2 heads x 3 x d rows (weight + bias), the output projection
    # 2 x d input columns, the MLP's hidden layer its removed units (rows + bias) and the next Linear their columns
    per_block = 6 * d * (e + 1) + 2 * d * e + hidden_removed * (e + 1) + hidden_removed * e
    assert r.params_after == _n(net) == _n(ref) - 2 * per_block == r.params_before - 2 * per_block
    assert r.macs_after < r.macs_before


def test_pruned_multihead_attention_takes_masks_sequence_first_and_returns_weights():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4).eval()  # sequence first (L, B, E)
    ref = copy.deepcopy(mha)
    prune_heads(mha, [1, 2], "mha")
    with torch.no_grad():
        ref.out_proj.weight[:, 0:4] = 0
        ref.out_proj.weight[:, 12:16] = 0
    q = torch.randn(5, 2, 16)
    pad = torch.tensor([[False] * 4 + [True], [False] * 5])
    causal = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    for kw in ({}, {"key_padding_mask": pad}, {"attn_mask": causal}, {"need_weights": False, "key_padding_mask": pad}):
        with torch.no_grad():
            out, w = mha(q, q, q, **kw)
            want, _ = ref(q, q, q, **kw)
        assert out.shape == (5, 2, 16) and torch.allclose(out, want, atol=1e-5), kw
        assert (w is None) == (kw.get("need_weights") is False)
        if w is not None:
            assert w.shape == (2, 5, 5) and torch.allclose(w.sum(-1), torch.ones(2, 5))


def test_head_plans_replay_from_weights_only_data(pruned):
    kind, _, net, p, _ = pruned
    buf = io.BytesIO()
    torch.save({"plan": p.to_dict(), "state": net.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    fresh = lp.restore(BUILD[kind](), saved["plan"])
    fresh.load_state_dict(saved["state"])
    with torch.no_grad():
        assert torch.equal(fresh.eval()(X), net(X))


def test_head_ratio_option_and_bad_inputs():
    net = tiny_timm()
    s = lp.score(net, "l1")
    assert plan_heads(net, 0.0) == ({}, {}, {})
    p = lp.plan(net, s, strategy="uniform", ratio=0.5, example_inputs=X, head_ratio=0.3)  # round(1.2) = 1 head
    assert [len(k) for k in p.heads.values()] == [3, 3]
    assert lp.plan(net, s, strategy="manual", ratios={"blocks.0.mlp.fc1": 0.5}, example_inputs=X).heads == {}
    with pytest.raises(ConfigError, match="head_ratio='many' is not allowed"):
        lp.plan(net, s, strategy="uniform", ratio=0.5, example_inputs=X, head_ratio="many")
    with pytest.raises(ConfigError, match="head_ratio"):
        lp.plan(net, s, strategy="uniform", ratio=0.5, example_inputs=X, head_ratio=1.5)
    bad = p.to_dict()
    bad["heads"]["blocks.0.attn"] = [0, 7]
    with pytest.raises(ConfigError, match=r"kept heads of 'blocks.0.attn' must be distinct, in \[0, 4\)"):
        Plan.from_dict(bad)
    other = tiny_timm()
    prune_heads(other.blocks[0].attn, [0, 1, 2], "blocks.0.attn")
    with pytest.raises(ConfigError, match="the plan expects 4 heads in 'blocks.0.attn' but the model has 3"):
        lp.prune(other, p, X, measure_latency=False)


def test_macs_of_unpruned_attention_equal_torch_pruning_count():
    import torch_pruning as tp

    for build in BUILD.values():
        net = build()
        assert count_macs_params(net, X)[0] == tp.utils.count_ops_and_params(net, X[:1])[0]


def tiny_swin(v2: bool):
    """One stage of 2 blocks (the second shifted), 4 heads of 4 channels, windows of 2 x 2 on a 5 x 5
    token map (padded to 6 x 6); heads 1 and 3 of both blocks made weak."""
    from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformerBlockV2

    torch.manual_seed(0)
    extra = {"block": SwinTransformerBlockV2, "downsample_layer": PatchMergingV2} if v2 else {}
    net = torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2], num_heads=[H],
                                             window_size=[2, 2], num_classes=10, **extra).eval()
    for blk in net.features[1]:
        _weaken(blk.attn.qkv.weight, blk.attn.proj.weight, [1, 3], 4)
    return net


XS = torch.randn(2, 3, 20, 20, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("v2", [False, True], ids=["swin", "swin_v2"])
def test_swin_loses_the_weak_heads_and_matches_the_masked_network(v2):
    net = tiny_swin(v2)
    ref = copy.deepcopy(net)
    assert [i.kind for i in find_attention(net).values()] == ["swin", "swin"]
    assert net.features[1][1].attn.shift_size == [1, 1]  # the second block's windows are shifted
    p = lp.plan(net, lp.score(net, "l1"), strategy="uniform", ratio=0.5, example_inputs=XS)
    assert {n: k.tolist() for n, k in p.heads.items()} == {f"features.1.{b}.attn": [0, 2] for b in (0, 1)}
    assert list(p.keep) == ["features.1.0.mlp.0", "features.1.1.mlp.0"]
    r = lp.prune(net, p, XS, measure_latency=False)
    cls = "HeadPrunedShiftedWindowAttentionV2" if v2 else "HeadPrunedShiftedWindowAttention"
    for b in (0, 1):
        a, blk = net.features[1][b].attn, ref.features[1][b]
        assert type(a).__name__ == cls and a.num_heads == 2 and a.head_dim == 4
        assert type(a) in attention_types()  # its MACs are counted by the formula (an exact-type table)
        assert tuple(a.qkv.weight.shape) == (24, 16) and tuple(a.proj.weight.shape) == (16, 8)
        rows = torch.cat([torch.arange(4) + h * 4 + c * 16 for c in range(3) for h in (0, 2)])
        assert torch.equal(a.qkv.weight, blk.attn.qkv.weight[rows])
        if v2:
            assert a.cpb_mlp[-1].out_features == 2 and a.logit_scale.shape == (2, 1, 1)
        else:
            assert torch.equal(a.relative_position_bias_table, blk.attn.relative_position_bias_table[:, [0, 2]])
        removed = sorted(set(range(64)) - set(p.keep[f"features.1.{b}.mlp.0"].tolist()))
        _mask(blk.attn.proj.weight, [1, 3], 4, blk.mlp[3], removed)
    with torch.no_grad():
        assert torch.allclose(net(XS), ref(XS), atol=1e-5)
    # MACs: each block's attention loses the formula's difference (a 5 x 5 token map padded to 6 x 6)
    # and its MLP 32 of 64 hidden units on 25 tokens (torch-pruning's terms: fc1 25 * 16 * 32 and its
    # bias once, 32; fc2 25 * 32 * 16; the GELU 25 * 32)
    from lightprune.attention import swin_attention_macs

    lost_attn = 0
    for b in (0, 1):
        lost_attn += swin_attention_macs(ref.features[1][b].attn, 5, 5, 16) - swin_attention_macs(
            net.features[1][b].attn, 5, 5, 16)
    assert r.macs_before - r.macs_after == lost_attn + 2 * (25 * 16 * 32 + 32 + 25 * 32 * 16 + 25 * 32)


def test_swin_attention_macs_by_hand():
    from lightprune.attention import swin_attention_macs

    net = tiny_swin(False)
    a = net.features[1][0].attn  # 4 heads of 4, qkv and proj biases, windows of 2 x 2
    # a 5 x 5 map of 16 channels, padded to 6 x 6: 36 tokens, 9 windows of 4 tokens; A = 16
    # query scaling 36*16 + q/k/v 3*36*16*16 + their bias 3*36*16 + per window and head (2*4*4*4 + 4*4)
    # + output projection 36*16*(16+1)
    assert swin_attention_macs(a, 5, 5, 16) == 576 + 27648 + 1728 + 9 * 4 * 144 + 9792
    prune_heads(a, [0, 2], "a")  # A = 8: every term with A or the head count halves, the rest stays
    assert swin_attention_macs(a, 5, 5, 16) == 288 + 13824 + 864 + 9 * 2 * 144 + 36 * 16 * 9


def test_swin_head_plans_replay_from_weights_only_data():
    net = tiny_swin(True)
    p = lp.plan(net, lp.score(net, "l1"), strategy="uniform", ratio=0.5, example_inputs=XS)
    lp.prune(net, p, XS, measure_latency=False)
    buf = io.BytesIO()
    torch.save({"plan": p.to_dict(), "state": net.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    fresh = lp.restore(tiny_swin(True), saved["plan"])
    fresh.load_state_dict(saved["state"])
    with torch.no_grad():
        assert torch.equal(fresh.eval()(XS), net(XS))


def test_a_swin_subclass_keeps_its_heads_and_says_why():
    from torchvision.models.swin_transformer import ShiftedWindowAttention

    class Custom(ShiftedWindowAttention):
        pass

    net = tiny_swin(False)
    old = net.features[1][0].attn
    new = Custom(16, [2, 2], [0, 0], H)
    new.load_state_dict(old.state_dict())
    net.features[1][0].attn = new
    assert list(find_attention(net)) == ["features.1.1.attn"]
    assert "subclass Custom" in head_unprunable(net)["features.1.0.attn"]
    with pytest.raises(ConfigError, match="cannot remove heads of 'features.1.0.attn': a subclass Custom"):
        prune_heads(new, [0], "features.1.0.attn")


@pytest.mark.parametrize("build", ["torchvision", "swin"])
def test_head_pruned_attention_exports_to_onnx_and_runs_in_onnxruntime(build, tmp_path):
    pytest.importorskip("onnxruntime")
    net, x = (tiny_torchvision(), X) if build == "torchvision" else (tiny_swin(False), XS)
    p = lp.plan(net, lp.score(net, "l1"), strategy="uniform", ratio=0.5, example_inputs=x)
    lp.prune(net, p, x, measure_latency=False)
    assert all(len(k) == 2 for k in p.heads.values()) and p.heads
    # torchvision's Swin does not export with a symbolic batch axis, pruned or not (torch.export guards
    # the batch size in its window reshapes): a fixed batch there
    dynamic = build != "swin"
    report = lp.export(net, x[:1], tmp_path / f"{build}.onnx", latency_runs=0, dynamic_batch=dynamic)
    assert report.verified and max(report.max_abs_diff.values()) <= 1e-4  # onnxruntime vs torch
    assert sorted(report.max_abs_diff) == ([1, 7] if dynamic else [1])
