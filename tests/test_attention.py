"""Whole attention heads (issue 16): timm ``Attention`` and torchvision ``nn.MultiheadAttention``.

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


def test_swin_attention_keeps_its_heads_and_says_why():
    net = torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2], num_heads=[2],
                                             window_size=[2, 2], num_classes=10).eval()
    x = torch.randn(1, 3, 16, 16)
    assert find_attention(net) == {}
    assert "ShiftedWindowAttention" in head_unprunable(net)["features.1.0.attn"]
    with pytest.raises(ConfigError, match="cannot remove heads of 'features.1.0.attn': a ShiftedWindowAttention"):
        prune_heads(net.features[1][0].attn, [0], "features.1.0.attn")
    # the plan: MLP hidden layers only (the residual stream reaches the attention), found by the graph
    # walk; deriving torch-pruning's pruning groups of Swin's residual stream ran for minutes
    p = lp.plan(net, lp.score(net, "l1"), strategy="uniform", ratio=0.5, example_inputs=x)
    assert list(p.keep) == ["features.1.0.mlp.0", "features.1.1.mlp.0"] and p.heads == {}
    assert set(p.meta["heads_not_planned"]) == {"features.1.0.attn", "features.1.1.attn"}
    assert "attention module 'features.1.0.attn'" in p.meta["not_planned"]["features.1.0.mlp.3"]
    lp.prune(net, p, x, measure_latency=False)
    assert net(x).shape == (1, 10) and net.features[1][0].mlp[0].out_features == 32
