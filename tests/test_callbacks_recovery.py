"""Recovery inside a Lightning fit: BatchNorm recalibration by default, optimizer state carried
through the prune (sliced by the kept indices), distillation from the pre-prune network (teacher not
in checkpoints, rebuilt on resume)."""

from pathlib import Path

import lightning as L
import pytest
import torch

import lightprune as lp
from lightprune.callbacks import PruningCallback
from lightprune.data import DigitsDataModule
from lightprune.errors import ConfigError


def dm():
    return DigitsDataModule(image_size=32, channels=1, batch_size=32)


def module(**kw):
    opt = kw.pop("opt", None)
    return lp.ClassificationModule("cifar_vgg11", 10, in_channels=1, model_kwargs={"width_mult": 0.125},
                                   optimizer=opt, **kw)


def trainer(tmp_path, callbacks, max_epochs=2, **kw):
    args = dict(accelerator="cpu", devices=1, max_epochs=max_epochs, default_root_dir=str(tmp_path), logger=False,
                enable_progress_bar=False, enable_model_summary=False, limit_train_batches=3, limit_val_batches=2,
                num_sanity_val_steps=0, enable_checkpointing=False)
    args.update(kw)
    return L.Trainer(callbacks=callbacks, **args)


class StateProbe(L.Callback):
    """Records the optimizer state and the parameters at the start of the prune epoch (before the
    PruningCallback acts: it comes first in the list) and right after the prune."""

    def __init__(self, epoch):
        self.epoch, self.before, self.after = epoch, None, None

    def _grab(self, trainer, pl_module):
        opt = trainer.optimizers[0]
        return {n: {k: v.clone() for k, v in opt.state[p].items() if isinstance(v, torch.Tensor)}
                for n, p in pl_module.named_parameters() if p in opt.state}

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch and self.before is None:
            self.before = self._grab(trainer, pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == 0:
            self.after = self._grab(trainer, pl_module)


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_optimizer_state_of_kept_channels_is_carried(tmp_path, kind):
    factory = (lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9)) if kind == "sgd" else (lambda p: torch.optim.AdamW(p, lr=1e-3))
    m = module(opt=factory)
    probe = StateProbe(1)
    cb = PruningCallback(criterion="l1", ratio=0.5, at_epoch=1, samples_per_class=3)
    trainer(tmp_path, [probe, cb]).fit(m, datamodule=dm())
    plan = lp.Plan.from_dict(lp.lightning_glue.applied_plans(m)[0])
    assert cb.history[0]["optimizer_state_carried"] == len(probe.after) > 0
    keys = ("momentum_buffer",) if kind == "sgd" else ("exp_avg", "exp_avg_sq")
    # a conv in the middle: outputs kept by its own plan, inputs by its producer's
    out_keep, in_keep = plan.keep["features.4"], plan.keep["features.0"]
    for key in keys:
        old, new = probe.before["model.features.4.weight"][key], probe.after["model.features.4.weight"][key]
        assert torch.equal(new, old[out_keep][:, in_keep])
        assert torch.equal(probe.after["model.features.5.weight"][key], probe.before["model.features.5.weight"][key][out_keep])  # its BN
    assert cb.history[0]["recovered"] == ["recalibrate_bn"]


def test_recalibration_can_be_turned_off_and_uses_training_batches(tmp_path):
    off = PruningCallback(criterion="l1", ratio=0.5, at_epoch=1, samples_per_class=3, recalibrate_bn=False)
    trainer(tmp_path, [off]).fit(module(), datamodule=dm())
    assert off.history[0]["recovered"] == []
    n = PruningCallback(criterion="l1", ratio=0.5, at_epoch=1, samples_per_class=3, recalibration_batches=2)
    trainer(tmp_path, [n]).fit(module(), datamodule=dm())
    assert n.history[0]["recovered"] == ["recalibrate_bn"]
    with pytest.raises(ConfigError, match="recalibration_batches=0 is not allowed"):
        PruningCallback(recalibration_batches=0)


def test_distillation_teacher_is_the_pre_prune_network_and_survives_resume(tmp_path):
    m = module(distillation={"alpha": 0.7, "temperature": 2.0})
    cb = PruningCallback(criterion="l1", ratio=0.5, at_epoch=1, samples_per_class=3)
    ck = L.pytorch.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ck"), save_top_k=-1, every_n_epochs=1)
    t = trainer(tmp_path, [cb, ck], max_epochs=2, enable_checkpointing=True,
                logger=L.pytorch.loggers.CSVLogger(str(tmp_path), name="t"))
    t.fit(m, datamodule=dm())
    assert cb.teacher is not None and m.teacher is cb.teacher
    # the teacher is the unpruned network: full widths, frozen
    assert cb.teacher.model.features[0].out_channels == 2 * m.model.features[0].out_channels
    assert not any(p.requires_grad for p in cb.teacher.model.parameters())
    assert "train/kd_loss" in (Path(t.logger.log_dir) / "metrics.csv").read_text()
    ckpt = torch.load(sorted((tmp_path / "ck").glob("*.ckpt"))[-1], weights_only=True)
    assert not any("teacher" in k for k in ckpt["state_dict"])  # never a second copy in checkpoints
    # resume from the checkpoint written after the prune: the teacher is rebuilt from the saved state
    m2 = module(distillation={"alpha": 0.7, "temperature": 2.0})
    cb2 = PruningCallback(criterion="l1", ratio=0.5, at_epoch=1, samples_per_class=3)
    t2 = trainer(tmp_path, [cb2], max_epochs=3)
    t2.fit(m2, datamodule=dm(), ckpt_path=str(sorted((tmp_path / "ck").glob("*.ckpt"))[-1]))
    assert cb2.teacher is not None and m2.teacher is cb2.teacher
    x = torch.randn(2, 1, 32, 32)
    assert torch.allclose(cb2.teacher(x), cb.teacher(x), atol=1e-6)


def test_bad_distillation_options():
    with pytest.raises(ConfigError, match=r"distillation.alpha=1.5 is not allowed"):
        module(distillation={"alpha": 1.5})
    with pytest.raises(ConfigError, match=r"unknown keys \['beta'\]"):
        module(distillation={"beta": 1})
