import lightning as L
import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score
from torch import nn

import lightprune as lp
from lightprune.data import DigitsDataModule
from lightprune.errors import ConfigError


def _trainer(tmp_path, **kw):
    defaults = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        default_root_dir=str(tmp_path),
        logger=L.pytorch.loggers.CSVLogger(str(tmp_path), name="t"),
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    defaults.update(kw)
    return L.Trainer(**defaults)


def test_one_epoch_fit_logs_metrics_and_checkpoint_rebuilds(tmp_path):
    dm = DigitsDataModule(image_size=32, channels=1, batch_size=64)
    module = lp.ClassificationModule(
        "cifar_vgg11", num_classes=10, in_channels=1, image_size=32, model_kwargs={"width_mult": 0.25}
    )
    trainer = _trainer(tmp_path)
    trainer.fit(module, datamodule=dm)
    m = trainer.callback_metrics
    for key in ("train/loss_epoch", "train/acc", "val/loss", "val/acc", "val/acc_top5", "val/balanced_acc"):
        assert key in m, key
    assert 0.0 <= float(m["val/acc"]) <= 1.0
    assert float(m["val/acc_top5"]) >= float(m["val/acc"])
    ckpt = trainer.checkpoint_callback.best_model_path
    restored = lp.ClassificationModule.load_from_checkpoint(ckpt)
    assert restored.hparams.model == "cifar_vgg11"
    for a, b in zip(module.state_dict().values(), restored.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_test_metrics_match_sklearn_balanced_accuracy(tmp_path):
    """The logged balanced accuracy equals sklearn's on the same predictions."""
    dm = DigitsDataModule(image_size=32, channels=1, batch_size=50)
    module = lp.ClassificationModule("cifar_vgg11", 10, in_channels=1, model_kwargs={"width_mult": 0.25})
    trainer = _trainer(tmp_path, max_epochs=1, limit_train_batches=5)
    trainer.fit(module, datamodule=dm)
    res = trainer.test(module, datamodule=dm, verbose=False)[0]
    module.eval()
    xs, ys = dm.test_set.tensors
    with torch.no_grad():
        logits = module(xs)
    pred = logits.argmax(1).numpy()
    assert res["test/acc"] == pytest.approx(float(np.mean(pred == ys.numpy())), abs=1e-6)
    assert res["test/balanced_acc"] == pytest.approx(balanced_accuracy_score(ys.numpy(), pred), abs=1e-6)
    top5 = (logits.topk(5, dim=1).indices == ys[:, None]).any(1).float().mean().item()
    assert res["test/acc_top5"] == pytest.approx(top5, abs=1e-6)


def test_no_top5_below_five_classes():
    module = lp.ClassificationModule(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), num_classes=3)
    assert "acc_top5" not in set(module.val_metrics.keys(keep_base=True))
    assert "acc" in set(module.val_metrics.keys(keep_base=True))


def test_optimizer_is_rebuilt_for_replaced_parameters():
    module = lp.ClassificationModule("cifar_vgg11", 10, model_kwargs={"width_mult": 0.25})
    module.model.classifier[2] = nn.Linear(128, 10)  # what surgery does: new Parameter objects
    opt = module.configure_optimizers()
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in module.parameters()}


def test_scheduler_configuration():
    def sched(opt):
        return torch.optim.lr_scheduler.StepLR(opt, step_size=1)

    module = lp.ClassificationModule("cifar_vgg11", 10, lr_scheduler=sched, model_kwargs={"width_mult": 0.25})
    cfg = module.configure_optimizers()
    assert isinstance(cfg["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)
    assert cfg["lr_scheduler"]["scheduler"].optimizer is cfg["optimizer"]


def test_bad_module_arguments():
    with pytest.raises(ConfigError, match="num_classes=1 is not allowed"):
        lp.ClassificationModule("cifar_vgg11", num_classes=1)
    with pytest.raises(ConfigError, match="model=42 is not allowed; give a model name or an nn.Module"):
        lp.ClassificationModule(42)
    with pytest.raises(lp.UnknownNameError, match="Unknown model 'nope'"):
        lp.ClassificationModule("nope")
    module = lp.ClassificationModule(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), num_classes=5)
    with pytest.raises(ConfigError, match=r"logits of shape \(2, 3\), but num_classes=5"):
        module.training_step((torch.zeros(2, 4), torch.zeros(2, dtype=torch.long)), 0)
