"""Lightning integration: real Trainer runs on digits for each schedule, optimizer rebuilds,
checkpoints (load, resume, kill + resume), generic LightningModules, bad input."""

import inspect
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightprune as lp
from lightprune.callbacks import PruningCallback, ScoreCallback
from lightprune.data import DigitsDataModule
from lightprune.errors import ConfigError
from lightprune.lightning_glue import load_pruned_checkpoint

HERE = Path(__file__).resolve().parent


def small_module(**kw):
    return lp.ClassificationModule("cifar_vgg11", 10, in_channels=1, model_kwargs={"width_mult": 0.25}, **kw)


def dm():
    return DigitsDataModule(image_size=32, channels=1, batch_size=64)


def trainer(tmp_path, callbacks, max_epochs=3, **kw):
    args = dict(
        accelerator="cpu", devices=1, max_epochs=max_epochs, default_root_dir=str(tmp_path),
        logger=L.pytorch.loggers.CSVLogger(str(tmp_path), name="t"), enable_progress_bar=False,
        enable_model_summary=False, limit_train_batches=4, limit_val_batches=2, limit_test_batches=2,
        num_sanity_val_steps=0,
    )
    args.update(kw)
    return L.Trainer(callbacks=callbacks, **args)


def widths(net):
    return [m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)]


class OptimizerProbe(L.Callback):
    """After every batch: the optimizer holds exactly the live parameters; record per-layer weights."""

    def __init__(self):
        self.mismatches = 0
        self.snapshots = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        live = {id(p) for p in pl_module.parameters() if p.requires_grad}
        held = {id(p) for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]}
        self.mismatches += live != held
        if batch_idx == 0:
            self.snapshots[trainer.current_epoch] = {
                n: m.weight.detach().clone() for n, m in pl_module.named_modules() if isinstance(m, nn.Conv2d)
            }


# ------------------------------------------------------------------------------------ schedules
def test_one_shot_prunes_once_rebuilds_optimizer_and_keeps_training(tmp_path):
    module, probe = small_module(), OptimizerProbe()
    cb = PruningCallback(criterion="l1", ratio=0.5, at_epoch=1, samples_per_class=10)
    before = widths(module.model)
    t = trainer(tmp_path, [cb, probe], max_epochs=3)
    t.fit(module, datamodule=dm())
    assert widths(module.model) == [w - round(w * 0.5) for w in before]
    assert probe.mismatches == 0  # no stale parameter in any optimizer, at any batch
    # every pruned layer still trains: weights change between epoch 1 (right after the prune) and 2
    for name, w1 in probe.snapshots[1].items():
        assert w1.shape == probe.snapshots[2][name].shape
        assert not torch.equal(w1, probe.snapshots[2][name]), name
    assert len(cb.history) == 1 and cb.history[0]["epoch"] == 1
    assert cb.history[0]["params_after"] < cb.history[0]["params_before"]
    metrics = (Path(t.logger.log_dir) / "metrics.csv").read_text()
    assert "prune/params" in metrics and "prune/ratio/features.0" in metrics and "val/acc_before_ft" in metrics


def test_iterative_reaches_each_cumulative_ratio(tmp_path):
    module, probe = small_module(), OptimizerProbe()
    cb = PruningCallback(criterion="apoz", schedule="iterative", step_ratios=[0.25, 0.5], at_epoch=1, samples_per_class=5)
    before = widths(module.model)
    trainer(tmp_path, [cb, probe], max_epochs=4).fit(module, datamodule=dm())
    assert [h["epoch"] for h in cb.history] == [1, 2]
    after = widths(module.model)
    for b, a in zip(before, after, strict=True):
        assert abs(a - b * 0.5) <= 1, (b, a)  # 50 % of the original channels, within rounding
    assert probe.mismatches == 0


def test_progressive_prunes_shallow_to_deep(tmp_path):
    module = small_module()
    cb = PruningCallback(criterion="l1", schedule="progressive", layer_groups=3, finetune_epochs=1, at_epoch=1, samples_per_class=5)
    trainer(tmp_path, [cb, OptimizerProbe()], max_epochs=4).fit(module, datamodule=dm())
    assert [h["epoch"] for h in cb.history] == [1, 2, 3]
    order = list(cb.history[0]["channels_after"]) + list(cb.history[1]["channels_after"]) + list(cb.history[2]["channels_after"])
    layers = list(lp.collect.find_prunable_layers(module.model))
    assert order == layers  # every layer once, in depth order
    assert all(abs(m.out_channels - c / 2) <= 0.5 for m, c in zip(
        [m for m in module.model.modules() if isinstance(m, nn.Conv2d)], [16, 32, 64, 64, 128, 128, 128, 128], strict=True))


class PlainModule(L.LightningModule):
    """A LightningModule written here, holding its network in `.net` (not ClassificationModule)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
            nn.Flatten(), nn.Linear(12, 10),
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def test_generic_module_and_checkpoint_reload(tmp_path):
    module, probe = PlainModule(), OptimizerProbe()
    cb = PruningCallback(criterion="class_selectivity", ratio=0.5, at_epoch=1, model_attr="net", samples_per_class=5)
    t = trainer(tmp_path, [cb, probe], max_epochs=2, limit_val_batches=0)
    t.fit(module, datamodule=dm())
    assert [module.net[0].out_channels, module.net[4].out_channels] == [4, 6]
    assert probe.mismatches == 0
    path = tmp_path / "plain.ckpt"
    t.save_checkpoint(path)
    fresh = load_pruned_checkpoint(PlainModule(), str(path), model_attr="net")
    x = torch.randn(3, 1, 32, 32)
    module.eval(), fresh.eval()
    assert torch.equal(module.net(x), fresh.net(x))


def test_score_callback_keeps_and_saves_scores(tmp_path):
    cb = ScoreCallback(criterion="entropy", at_epochs=[0, 1], samples_per_class=5)
    t = trainer(tmp_path, [cb], max_epochs=2)
    t.fit(small_module(), datamodule=dm())
    assert sorted(cb.scores) == [0, 1]
    assert cb.scores[1].criterion == "entropy" and cb.scores[1].meta["num_images"] == 50
    saved = sorted(p.name for p in (Path(t.logger.log_dir) / "scores").iterdir())
    assert saved == ["epoch0_entropy.json", "epoch1_entropy.json"]


# ----------------------------------------------------------------------------------- checkpoints
def test_checkpoints_carry_the_plan_and_rebuild_with_weights_only(tmp_path):
    module = small_module()
    ckpt_cb = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True, every_n_epochs=1, save_top_k=-1)
    cb = PruningCallback(criterion="l1", ratio=0.5, at_epoch=1, samples_per_class=5)
    trainer(tmp_path, [cb, ckpt_cb], max_epochs=3).fit(module, datamodule=dm())
    files = sorted((tmp_path / "ck").glob("epoch=*.ckpt"))
    assert len(files) == 3
    plans = [torch.load(f, weights_only=True).get("lightprune", {}).get("plans", []) for f in files]
    assert [len(p) for p in plans] == [0, 1, 1]  # epoch 0's checkpoint predates the prune (start of epoch 1)
    restored = lp.ClassificationModule.load_from_checkpoint(files[-1])
    assert widths(restored.model) == widths(module.model)
    x = torch.randn(4, 1, 32, 32)
    restored.eval()
    last = lp.ClassificationModule.load_from_checkpoint(tmp_path / "ck" / "last.ckpt").eval()
    module.eval()
    assert torch.equal(last(x), module(x))


def test_resume_after_prune_does_not_prune_again(tmp_path):
    ck = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    cb = PruningCallback(criterion="l1", ratio=0.5, at_epoch=1, samples_per_class=5)
    module = small_module()
    trainer(tmp_path, [cb, ck], max_epochs=2).fit(module, datamodule=dm())
    pruned = widths(module.model)
    cb2 = PruningCallback(criterion="l1", ratio=0.5, at_epoch=1, samples_per_class=5)
    module2 = small_module()
    trainer(tmp_path, [cb2, L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck2")], max_epochs=4).fit(
        module2, datamodule=dm(), ckpt_path=str(tmp_path / "ck" / "last.ckpt")
    )
    assert widths(module2.model) == pruned  # rebuilt from the plan, not pruned a second time
    assert cb2.done == [0] and len(cb2.history) == 1


def test_killed_mid_finetuning_resumes_with_nothing_lost(tmp_path):
    """A real process is killed (os._exit) during epoch 3, after the prune at epoch 1; resuming from
    last.ckpt ends at the same global step, with the same plan, without a second prune."""
    worker = HERE / "kill_resume_worker.py"
    env = {**os.environ, "PYTHONPATH": str(HERE)}  # OMP_NUM_THREADS: the worker's share (conftest)

    def run(*args):
        return subprocess.run([sys.executable, str(worker), str(tmp_path), *args], capture_output=True, text=True, env=env, timeout=600)

    full = run("full")
    assert full.returncode == 0, full.stderr[-3000:]
    killed = run("kill")
    assert killed.returncode == 17, killed.stderr[-3000:]  # died in the middle of epoch 3
    resumed = run("resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    full_res = torch.load(tmp_path / "full.pt", weights_only=True)
    res = torch.load(tmp_path / "resume.pt", weights_only=True)
    assert res["global_step"] == full_res["global_step"]
    assert res["epoch"] == full_res["epoch"]
    assert res["plans"] == full_res["plans"] and len(res["plans"]) == 1
    assert res["prunes_in_resumed_run"] == 0
    assert res["widths"] == full_res["widths"]
    assert res["momentum_buffers"] > 0  # the optimizer state was restored, with the pruned shapes


# -------------------------------------------------------------------------------------- DDP
def test_private_lightning_api_is_still_there():
    """rewrap_ddp relies on Strategy._setup_model(module) returning the DDP-wrapped module."""
    from lightning.pytorch.strategies import DDPStrategy

    assert hasattr(DDPStrategy, "_setup_model"), "Lightning removed DDPStrategy._setup_model: update lightning_glue.rewrap_ddp"
    params = list(inspect.signature(DDPStrategy._setup_model).parameters)
    assert params == ["self", "model"], params
    assert "DistributedDataParallel" in inspect.getsource(DDPStrategy._setup_model)


@pytest.mark.slow
def test_ddp_two_processes_prune_mid_fit(tmp_path):
    script = HERE / "ddp_prune_worker.py"
    env = {**os.environ, "PYTHONPATH": str(HERE), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-5000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["plans"] == r1["plans"] and len(r0["plans"]) == 1  # the same channels removed on both ranks
    assert r0["widths"] == r1["widths"] and r0["widths"] != r0["widths_before"]
    assert r0["ddp_rewrapped"] and r0["optimizer_mismatches"] == 0 and r1["optimizer_mismatches"] == 0
    losses = r0["epoch_losses"]
    assert losses[-1] < losses[1], losses  # training continues after the prune (epoch 1) with the loss falling
    for a, b in zip(r0["weights"], r1["weights"], strict=True):
        assert torch.equal(a, b)  # DDP kept the replicas identical after re-wrapping


# ---------------------------------------------------------------------------------- bad input
def test_at_epoch_beyond_max_epochs(tmp_path):
    t = trainer(tmp_path, [PruningCallback(at_epoch=5)], max_epochs=3)
    with pytest.raises(ConfigError, match="at_epoch=5 is beyond the training: with max_epochs=3 the last epoch that can start is 2"):
        t.fit(small_module(), datamodule=dm())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"schedule": "iterative", "step_ratios": [0.5, 0.3]}, r"step_ratios=\[0.5, 0.3\] is not allowed; the ratios must increase strictly"),
        ({"schedule": "iterative", "step_ratios": [0.5, 1.0]}, r"step_ratios\[1\]=1.0 is not allowed; it must lie in \[0, 1\)"),
        ({"ratio": 1.0}, r"ratio=1.0 is not allowed"),
        ({"schedule": "cyclic"}, "schedule='cyclic' is not allowed; choose one of: one_shot, iterative, progressive"),
        ({"strategy": "best"}, "strategy='best' is not allowed"),
        ({"criterion": "l3"}, "Unknown criterion 'l3'"),
    ],
)
def test_bad_callback_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PruningCallback(**kwargs)


def test_data_criterion_without_train_data_loader(tmp_path):
    cb = ScoreCallback(criterion="apoz")
    t = trainer(tmp_path, [cb])
    with pytest.raises(ConfigError, match="needs data, but the trainer has no train data loader"):
        cb.compute(t, small_module())


def test_checkpoint_of_another_architecture(tmp_path):
    module = small_module()
    ck = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    trainer(tmp_path, [PruningCallback(ratio=0.5, at_epoch=1, samples_per_class=5), ck], max_epochs=2).fit(module, datamodule=dm())
    other = lp.ClassificationModule("cifar_resnet18", 10, in_channels=1)
    with pytest.raises(ConfigError, match="does not fit this model \\(another architecture\\?\\)"):
        load_pruned_checkpoint(other, str(tmp_path / "ck" / "last.ckpt"))


def test_module_without_prunable_layer(tmp_path):
    class OnlyHead(PlainModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 10))

    t = trainer(tmp_path, [PruningCallback(model_attr="net")])
    with pytest.raises(ConfigError, match="OnlyHead.net has no prunable layer"):
        t.fit(OnlyHead(), datamodule=dm())
    with pytest.raises(ConfigError, match="model_attr='network': PlainModule has no nn.Module attribute of that name; its child modules are \\['net'\\]"):
        trainer(tmp_path, [PruningCallback(model_attr="network")]).fit(PlainModule(), datamodule=dm())
