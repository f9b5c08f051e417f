"""Networks a user brings: grouped convolutions, output layers that are not a Linear, several heads,
attention (timm / torchvision), timm models in the zoo and inside a Lightning fit. Small inputs."""

import lightning as L
import pytest
import torch
import torchvision
from torch import nn

import lightprune as lp
from lightprune.callbacks import PruningCallback
from lightprune.collect import find_prunable_layers
from lightprune.criteria.base import Scores
from lightprune.data import DigitsDataModule
from lightprune.errors import ConfigError
from lightprune.graph import output_layers
from lightprune.plan import Plan

timm = pytest.importorskip("timm")


class GroupedNet(nn.Module):
    """conv1 (8 channels) feeds a grouped conv with 2 groups of 4."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


class ConvHeadNet(nn.Module):
    """SqueezeNet-style: the classifier is a 1x1 conv, then pooling and flatten."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 10, 1)

    def forward(self, x):
        return torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(self.head(torch.relu(self.conv(x)))), 1), 1)


class AuxHeadNet(nn.Module):
    """GoogLeNet-style: an auxiliary classifier on conv1's output that runs only in training mode."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.aux_conv = nn.Conv2d(8, 4, 1)
        self.aux_fc = nn.Linear(4, 10)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        h = torch.relu(self.conv1(x))
        out = self.fc(torch.relu(self.conv2(h)).mean((2, 3)))
        if self.training:
            return out, self.aux_fc(torch.relu(self.aux_conv(h)).mean((2, 3)))
        return out


class SplitNet(nn.Module):
    """CSPNet-style: conv1's channels are split in halves; the second half runs a residual block
    (conv2, conv3, + the half itself) and both halves are concatenated again."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 4, 3, padding=1)
        self.conv4 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        a, b = torch.relu(self.conv1(x)).chunk(2, 1)
        b = self.conv3(torch.relu(self.conv2(b))) + b
        x = torch.relu(self.conv4(torch.cat([a, b], 1)))
        return self.fc(x.mean((2, 3)))


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.hidden = nn.Linear(8, 16)
        self.cls = nn.Linear(16, 10)
        self.box = nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.hidden(torch.relu(self.conv(x)).mean((2, 3))))
        return self.cls(h), self.box(h)


X = torch.randn(2, 3, 16, 16)


# ------------------------------------------------------------------------------ grouped convolutions
@pytest.mark.parametrize("ratio, kept", [(0.5, [1, 3, 5, 7]), (0.3, [0, 1, 3, 4, 5, 7])])
def test_grouped_conv_keeps_the_same_positions_in_every_group(ratio, kept):
    torch.manual_seed(0)
    net = GroupedNet().eval()
    # blocks [4, 9, 1, 7] and [4, 1, 1, 7]: mean per position [4, 5, 1, 7]
    s = Scores({"conv1": torch.tensor([4.0, 9, 1, 7, 4, 1, 1, 7])}, criterion="manual")
    p = lp.plan(net, s, strategy="uniform", ratio=ratio, example_inputs=X)
    assert p.keep["conv1"].tolist() == kept
    w1, w2 = net.conv1.weight.detach().clone(), net.conv2.weight.detach().clone()
    lp.prune(net, p, X, measure_latency=False)
    per = len(kept) // 2
    assert net.conv1.weight.shape[0] == len(kept) and torch.equal(net.conv1.weight, w1[kept])
    assert net.conv2.in_channels == len(kept) and net.conv2.groups == 2
    assert torch.equal(net.conv2.weight, w2[:, kept[:per]])  # the same positions inside each group
    assert net(X).shape == (2, 10)


def test_regnet_with_grouped_convs_prunes_and_runs():
    x = torch.randn(1, 3, 32, 32)
    for build in (torchvision.models.regnet_x_400mf,):
        net = build(num_classes=10).eval()
        p = lp.plan(net, lp.score(net, "l1"), strategy="uniform", ratio=0.3, example_inputs=x)
        r = lp.prune(net, p, x, measure_latency=False)
        assert net(x).shape == (1, 10) and r.params_after < r.params_before


# ------------------------------------------------------------------------------ output layers
def test_a_conv_classifier_is_an_output_layer_and_never_planned():
    net = ConvHeadNet().eval()
    assert output_layers(net, X) == ["head"]
    assert list(find_prunable_layers(net, X)) == ["conv"]
    with pytest.raises(ConfigError, match="'head', which is an output layer of the network"):
        find_prunable_layers(net, X, ["head"])
    p = lp.plan(net, lp.score(net, "l1"), strategy="uniform", ratio=0.5, example_inputs=X)
    assert list(p.keep) == ["conv"]
    lp.prune(net, p, X, measure_latency=False)
    assert net(X).shape == (2, 10)


def test_squeezenet_keeps_its_10_outputs():
    net = torchvision.models.squeezenet1_1(num_classes=10).eval()
    x = torch.randn(1, 3, 48, 48)
    p = lp.plan(net, lp.score(net, "l1"), strategy="uniform", ratio=0.3, example_inputs=x)
    assert "classifier.1" not in p.keep
    lp.prune(net, p, x, measure_latency=False)
    assert net(x).shape == (1, 10) and net.classifier[1].out_channels == 10


def test_an_auxiliary_head_follows_the_prune_and_still_runs_in_training_mode():
    torch.manual_seed(0)
    net = AuxHeadNet().eval()
    x = torch.randn(1, 3, 8, 8)
    aux_w = net.aux_conv.weight.detach().clone()
    plan = lp.plan(net, lp.score(net, "l1"), strategy="uniform", ratio=0.5, example_inputs=x)
    assert set(plan.keep) == {"conv1", "conv2"}  # the training-only layers are never planned
    assert "not called by the forward pass" in plan.meta["not_planned"]["aux_conv"]
    stats = [b.clone() for b in net.buffers()]
    lp.prune(net, plan, x, measure_latency=False)
    kept = plan.keep["conv1"]
    assert net.conv1.out_channels == 4 and net.aux_conv.in_channels == 4  # the aux head's inputs follow
    assert torch.equal(net.aux_conv.weight, aux_w[:, kept])  # exactly the kept input channels
    assert net.aux_conv.out_channels == 4 and net.aux_fc.out_features == 10
    assert not net.training and all(torch.equal(a, b) for a, b in zip(stats, net.buffers(), strict=True))
    out, aux = net.train()(torch.randn(2, 3, 8, 8))
    assert out.shape == aux.shape == (2, 10)


def test_googlenet_with_its_auxiliary_heads_prunes_and_trains():
    import torchvision

    net = torchvision.models.googlenet(weights=None, num_classes=10, init_weights=False).eval()
    x = torch.randn(1, 3, 64, 64)
    report = lp.prune(net, lp.plan(net, lp.score(net, "l1"), strategy="uniform", ratio=0.3, example_inputs=x), x,
                      measure_latency=False)
    assert report.params_after < 0.8 * report.params_before
    assert net(x).shape == (1, 10)
    assert [o.shape for o in net.train()(torch.randn(2, 3, 64, 64))] == [(2, 10)] * 3


def test_maxvit_plans_its_mbconv_and_mlp_layers_quickly_and_keeps_its_attention_whole():
    # MaxViT's attention has `n_heads`; its MBConv expansion conv sits in a squeeze-excitation loop
    # (conv_a -> depthwise -> x * SE(x)) that the reach walk once followed back into the residual stream
    torch.manual_seed(0)
    net = torchvision.models.MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[16],
                                    block_layers=[1], head_dim=8, stochastic_depth_prob=0.0, num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    p = lp.plan(net, lp.score(net, "l1"), strategy="uniform", ratio=0.5, example_inputs=x)
    mb = "blocks.0.layers.0.layers.MBconv.layers."
    assert {mb + "conv_a.0", mb + "squeeze_excitation.fc1", "blocks.0.layers.0.layers.window_attention.mlp_layer.1",
            "blocks.0.layers.0.layers.grid_attention.mlp_layer.1"} <= set(p.keep)
    assert "attention module" in p.meta["not_planned"][mb + "conv_c"]  # the residual stream stays whole
    assert "RelativePositionalMultiHeadAttention" in p.meta["heads_not_planned"]["blocks.0.layers.0.layers.window_attention.attn_layer.1"]
    width = net.get_submodule(mb + "conv_a.0").out_channels
    lp.prune(net, p, x, measure_latency=False)
    assert net.get_submodule(mb + "conv_a.0").out_channels == width // 2 and net(x).shape == (1, 10)


def test_a_network_torch_pruning_cannot_graph_gets_a_clear_error():
    net = torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ConfigError, match=r"ShuffleNetV2 cannot be pruned: torch-pruning could not build its "
                                          r"dependency graph: ZeroDivisionError .*channel shuffle"):
        lp.plan(net, lp.score(net, "l1"), strategy="uniform", ratio=0.3, example_inputs=x)


def test_layers_coupled_through_a_split_are_left_whole_and_the_rest_is_pruned():
    # conv3's channel j is conv1's channel 4 + j (a residual on the second half): no single kept-index
    # set fits both; timm's cspresnet50 has this shape (it raised before)
    torch.manual_seed(0)
    net = SplitNet().eval()
    x = torch.randn(1, 3, 8, 8)
    p = lp.plan(net, lp.score(net, "l1"), strategy="uniform", ratio=0.5, example_inputs=x)
    assert set(p.keep) == {"conv2", "conv4"}
    assert "channel permutation or a split" in p.meta["not_planned"]["conv1"]
    assert "conv1" in p.meta["not_planned"]["conv3"]
    lp.prune(net, p, x, measure_latency=False)
    assert (net.conv1.out_channels, net.conv2.out_channels, net.conv3.out_channels, net.conv4.out_channels) == (8, 3, 4, 4)
    assert net(x).shape == (1, 10)


def test_every_head_of_a_two_headed_network_is_protected():
    net = TwoHeads().eval()
    assert sorted(output_layers(net, X)) == ["box", "cls"]
    s = lp.score(net, "l1")  # scored without inputs: only the last registered head is known
    assert "cls" in s
    p = lp.plan(net, s, strategy="uniform", ratio=0.5, example_inputs=X)
    assert set(p.keep) == {"conv", "hidden"} and "cls" in p.meta["not_planned"]
    lp.prune(net, p, X, measure_latency=False)
    cls, box = net(X)
    assert cls.shape == (2, 10) and box.shape == (2, 4) and net.hidden.out_features == 8


def test_a_plan_that_changes_the_output_is_undone():
    net = ConvHeadNet().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    bad = Plan({"head": torch.arange(7)}, {"head": 10}, [["head"]])
    with pytest.raises(ConfigError, match="the prune was undone: the network's output shape changed"):
        lp.prune(net, bad, X, measure_latency=False)
    assert net.head.out_channels == 10 and all(torch.equal(before[k], v) for k, v in net.state_dict().items())


# ------------------------------------------------------------------------------ attention
def test_timm_vit_prunes_heads_and_mlps_and_leaves_the_residual_stream_whole():
    net = lp.create_model("timm:deit_tiny_patch16_224", 10, image_size=32, depth=2).eval()
    x = torch.randn(1, 3, 32, 32)
    names = find_prunable_layers(net, x)
    assert "blocks.0.attn.qkv" not in names and "head" not in names and "blocks.0.mlp.fc1" in names
    p = lp.plan(net, lp.score(net, "l1"), strategy="uniform", ratio=0.3, example_inputs=x)
    assert "attention module 'blocks.0.attn'" in p.meta["not_planned"]["patch_embed.proj"]
    r = lp.prune(net, p, x, measure_latency=False)
    assert net(x).shape == (1, 10)
    assert net.blocks[0].mlp.fc1.out_features == round(0.7 * 768)
    # 3 heads at 30 %: round(0.9) = 1 head removed in each of the 2 blocks (qkv 64 x 3 rows, proj 64 columns)
    assert len(p.heads) == 2 and all(len(k) == 2 for k in p.heads.values())
    assert (net.blocks[0].attn.num_heads, net.blocks[0].attn.qkv.out_features, net.blocks[0].attn.proj.in_features) == (2, 384, 128)
    assert r.params_after < r.params_before and r.macs_after < r.macs_before


def test_create_model_timm_names():
    net = lp.create_model("timm:resnet18", 10, in_channels=1).eval()
    assert net(torch.randn(1, 1, 32, 32)).shape == (1, 10)
    with pytest.raises(ConfigError, match="'nope' is not a timm model"):
        lp.create_model("timm:nope", 10)


# ------------------------------------------------------------------------------ Lightning
def test_callback_prunes_a_timm_model_in_a_fit_and_the_checkpoint_reloads(tmp_path):
    module = lp.ClassificationModule("timm:deit_tiny_patch16_224", 10, in_channels=1, image_size=32,
                                     model_kwargs={"depth": 2})
    ck = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    cb = PruningCallback(criterion="l1", ratio=0.3, at_epoch=1, samples_per_class=2)
    t = L.Trainer(accelerator="cpu", devices=1, max_epochs=2, default_root_dir=str(tmp_path), logger=False,
                  enable_progress_bar=False, enable_model_summary=False, limit_train_batches=2, limit_val_batches=1,
                  num_sanity_val_steps=0, callbacks=[cb, ck])
    t.fit(module, datamodule=DigitsDataModule(image_size=32, channels=1, batch_size=16))
    assert module.model.blocks[0].mlp.fc1.out_features < 768
    assert [b.attn.num_heads for b in module.model.blocks] == [2, 2]  # 3 heads, 30 %: one removed per block
    state = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True)
    assert len(state["lightprune"]["plans"]) == 1
    assert state["lightprune"]["plans"][0]["num_heads"] == {"blocks.0.attn": 3, "blocks.1.attn": 3}
    restored = lp.ClassificationModule.load_from_checkpoint(tmp_path / "ck" / "last.ckpt").eval()
    assert [b.attn.num_heads for b in restored.model.blocks] == [2, 2]
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(restored(x), module.eval()(x))


def test_activation_criteria_see_token_outputs_as_the_mean_over_tokens():
    net = lp.create_model("timm:deit_tiny_patch16_224", 10, image_size=32, depth=1).eval()
    batches = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))]
    s = lp.score(net, "apoz", dataloader=batches, progress=False)
    assert s["blocks.0.mlp.fc1"].shape == (768,) and torch.isfinite(s["blocks.0.mlp.fc1"]).all()
