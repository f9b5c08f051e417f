"""Command line: ``lightprune`` (and its ``lightning`` alias) = LightningCLI with our defaults.

    lightprune fit --config configs/quickstart.yaml
    lightning fit --config configs/prune_vgg16.yaml      # the same entry point

The data module's ``num_classes``, ``in_channels`` and ``image_size`` are linked into the model, so
a config names them once. W&B runs offline unless ``WANDB_MODE`` is set otherwise.
"""

from __future__ import annotations

import os
import sys
import time

from lightning.pytorch.cli import LightningCLI

__all__ = ["LightpruneCLI", "main"]


class LightpruneCLI(LightningCLI):
    """LightningCLI with data->model links and an optional test run right after ``fit``."""

    def add_arguments_to_parser(self, parser) -> None:
        for key in ("num_classes", "in_channels", "image_size"):
            parser.link_arguments(f"data.{key}", f"model.init_args.{key}", apply_on="instantiate")
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="after `fit`, evaluate the best checkpoint on the test split and print a summary",
        )

    def before_fit(self) -> None:
        self._fit_started = time.perf_counter()

    def after_fit(self) -> None:
        if not self.config[self.subcommand].get("test_after_fit"):
            return
        from .callbacks import PruningCallback

        elapsed = time.perf_counter() - self._fit_started
        pruned = any(isinstance(cb, PruningCallback) and cb.history for cb in self.trainer.callbacks)
        # after a prune, "best" may be an unpruned checkpoint: test the final (pruned, fine-tuned) weights
        has_best = self.trainer.checkpoint_callback and self.trainer.checkpoint_callback.best_model_path
        ckpt = "best" if has_best and not pruned else None
        results = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt, verbose=False)
        if self.trainer.is_global_zero and results:
            n_params = sum(p.numel() for p in self.model.parameters())
            lines = [f"fit took {elapsed:.1f} s; parameters: {n_params:,}; checkpoint tested: {ckpt or 'last weights'}"]
            lines += [f"  {k:<20} {v:.4f}" for k, v in sorted(results[0].items())]
            for cb in self.trainer.callbacks:
                if isinstance(cb, PruningCallback) and cb.history:
                    lines += ["", "before / after pruning:", cb.summary(results[0])]
            print("\n".join(lines), flush=True)


#: Subcommands of our own, beside LightningCLI's fit / validate / test / predict.
EXTRA_SUBCOMMANDS = {
    "compare": ("lightprune.compare", "compare pruning criteria side by side (report + W&B)"),
    "analyze": ("lightprune.analysis", "ablation curves, rescaling/randomness audits, layer analysis"),
    "export": ("lightprune.export", "export a checkpoint's (pruned) network to ONNX / TorchScript, verified"),
}


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lightprune`` and ``lightning`` console scripts."""
    os.environ.setdefault("WANDB_MODE", "offline")
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in EXTRA_SUBCOMMANDS:
        import importlib

        module = importlib.import_module(EXTRA_SUBCOMMANDS[argv[0]][0])
        module.main(argv[1:])
        return
    # imported here, not at the top: `analyze` and `compare` load only what they use
    from .data import ClassificationDataModule
    from .module import ClassificationModule

    LightpruneCLI(
        ClassificationModule,
        ClassificationDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=argv,
        auto_configure_optimizers=False,
    )


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
