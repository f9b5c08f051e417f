"""Worker of test_ddp_two_processes_prune_mid_fit: Lightning launches 2 CPU processes (gloo) with
strategy="ddp"; the PruningCallback prunes at epoch 1; each rank saves what it saw."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import lightprune as lp
from lightprune.callbacks import PruningCallback
from lightprune.data import DigitsDataModule


class Probe(L.Callback):
    def __init__(self):
        self.mismatches = 0
        self.wrapped_after_prune = 0
        self.epoch_losses: list[float] = []
        self._sum = 0.0
        self._n = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        live = {id(p) for p in pl_module.parameters()}
        held = {id(p) for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]}
        self.mismatches += live != held
        ddp = trainer.strategy.model
        if isinstance(ddp, DistributedDataParallel):  # the wrapper must hold the current parameters
            self.mismatches += {id(p) for p in ddp.parameters()} != live
            self.wrapped_after_prune += trainer.current_epoch >= 1 and ddp.module is pl_module
        else:
            self.mismatches += 1  # during fit, the model must be wrapped

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._sum += float(outputs["loss"])
        self._n += 1

    def on_train_epoch_end(self, trainer, pl_module):
        self.epoch_losses.append(self._sum / max(1, self._n))
        self._sum, self._n = 0.0, 0


def main(out: Path) -> None:
    L.seed_everything(0)
    module = lp.ClassificationModule("cifar_vgg11", 10, in_channels=1, model_kwargs={"width_mult": 0.25})
    before = [m.out_channels for m in module.model.modules() if isinstance(m, nn.Conv2d)]
    pruner = PruningCallback(criterion="mutual_information", ratio=0.5, at_epoch=1, samples_per_class=10)
    probe = Probe()
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=5, limit_train_batches=6, limit_val_batches=2,
        num_sanity_val_steps=0, enable_progress_bar=False, enable_model_summary=False, logger=False,
        enable_checkpointing=False, callbacks=[pruner, probe], default_root_dir=str(out),
    )
    trainer.fit(module, datamodule=DigitsDataModule(image_size=32, channels=1, batch_size=32))
    torch.save(
        {
            "plans": list(module.lightprune_plans),
            "widths_before": before,
            "widths": [m.out_channels for m in module.model.modules() if isinstance(m, nn.Conv2d)],
            "ddp_rewrapped": probe.wrapped_after_prune > 0,
            "optimizer_mismatches": probe.mismatches,
            "epoch_losses": probe.epoch_losses,
            "weights": [m.weight.detach().clone() for m in module.model.modules() if isinstance(m, nn.Conv2d)],
        },
        out / f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
