"""Worker of test_killed_mid_finetuning_resumes_with_nothing_lost (one mode per process).

full   : train 4 epochs, prune at epoch 1, checkpoint every epoch; save the outcome to full.pt
kill   : the same run, killed with os._exit(17) in the middle of epoch 3 (fine-tuning)
resume : a fresh process resumes the killed run from its last.ckpt; save the outcome to resume.pt
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import lightning as L
import torch
from torch import nn

import lightprune as lp
from lightprune.callbacks import PruningCallback
from lightprune.data import DigitsDataModule


class CountingPruner(PruningCallback):
    prunes_this_process = 0

    def _prune(self, *args, **kwargs):
        CountingPruner.prunes_this_process += 1
        return super()._prune(*args, **kwargs)


class Kill(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 3 and batch_idx == 1:
            os._exit(17)


def main(out: Path, mode: str) -> None:
    L.seed_everything(0)
    folder = out / ("full_ck" if mode == "full" else "kill_ck")
    module = lp.ClassificationModule("cifar_vgg11", 10, in_channels=1, model_kwargs={"width_mult": 0.25})
    pruner = CountingPruner(criterion="l1", ratio=0.5, at_epoch=1, samples_per_class=5)
    callbacks = [pruner, L.pytorch.callbacks.ModelCheckpoint(dirpath=folder, save_last=True, save_top_k=-1)]
    if mode == "kill":
        callbacks.append(Kill())
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=5, limit_train_batches=4, limit_val_batches=2,
        num_sanity_val_steps=0, enable_progress_bar=False, enable_model_summary=False, logger=False,
        callbacks=callbacks, default_root_dir=str(out),
    )
    dm = DigitsDataModule(image_size=32, channels=1, batch_size=64)
    ckpt = str(folder / "last.ckpt") if mode == "resume" else None
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
    opt = trainer.optimizers[0]
    torch.save(
        {
            "global_step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "plans": list(module.lightprune_plans),
            "widths": [m.out_channels for m in module.model.modules() if isinstance(m, nn.Conv2d)],
            "prunes_in_resumed_run": CountingPruner.prunes_this_process,
            "momentum_buffers": sum(1 for s in opt.state.values() if "momentum_buffer" in s),
        },
        out / f"{mode}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
