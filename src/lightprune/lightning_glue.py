"""The few places where pruning touches Lightning's machinery, kept in one file.

- :func:`rebuild_optimizers`: new optimizers/schedulers for the current parameters (public API),
  carrying over each param group's learning rate and each scheduler's state.
- :func:`rewrap_ddp`: rebuild the ``DistributedDataParallel`` wrapper around the pruned module.
  This is the one private Lightning API we use (``Strategy._setup_model``); ``tests/test_callbacks.py
  ::test_private_lightning_api_is_still_there`` fails loudly if Lightning changes it.
- :func:`replay_plans` / :func:`load_pruned_checkpoint`: rebuild a pruned network from its
  definition plus the plans stored in a checkpoint (``checkpoint["lightprune"]["plans"]``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
from torch import nn

from .data import ScoringSet, resolve_scoring_set
from .errors import ConfigError

__all__ = [
    "quiet_lightning",
    "CHECKPOINT_KEY", "PrunedCheckpointMixin", "applied_plans", "eval_batches_for_trainer", "get_network",
    "load_pruned_checkpoint", "rebuild_optimizers", "replay_plans", "resolve_model_attr", "rewrap_ddp", "save_plans",
    "scoring_set_for_trainer",
]


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's info lines and the 'few workers' hints while we drive many short Trainers."""
    names = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning")
    old = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*The number of training batches.*")
        warnings.filterwarnings("ignore", message=".*Checkpoint directory.*exists and is not empty.*")
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")
        warnings.filterwarnings("ignore", message=".*tensorboardX.*")
        try:
            yield
        finally:
            for n, lvl in old.items():
                logging.getLogger(n).setLevel(lvl)

CHECKPOINT_KEY = "lightprune"
PLANS_ATTR = "lightprune_plans"


def resolve_model_attr(pl_module: L.LightningModule, model_attr: str | None = None) -> str:
    """The attribute holding the network the callbacks prune ("" = the LightningModule itself).

    ``model_attr`` given: it must name an ``nn.Module`` attribute. Default: ``model`` when present,
    else the module's single child network (children with parameters, metrics left out), else the
    LightningModule itself when it has parameters of its own only.

    Raises:
        ConfigError: the named attribute is missing, or several child networks could be meant (the
            message lists them: pass ``model_attr=``).
    """
    if model_attr is not None:
        if model_attr == "":
            return ""
        if not isinstance(getattr(pl_module, model_attr, None), nn.Module):
            raise ConfigError(
                f"model_attr={model_attr!r}: {type(pl_module).__name__} has no nn.Module attribute of that name; "
                f"its child modules are {_children(pl_module, with_params=False)}"
            )
        return model_attr
    if isinstance(getattr(pl_module, "model", None), nn.Module):
        return "model"
    nets = _children(pl_module, with_params=True)
    if len(nets) == 1:
        return nets[0]
    if not nets:
        return ""
    raise ConfigError(
        f"{type(pl_module).__name__} holds several child networks {nets}: pass model_attr= naming the one to prune"
    )


def _children(pl_module: nn.Module, with_params: bool) -> list[str]:
    out = []
    for n, m in pl_module.named_children():
        if type(m).__module__.startswith("torchmetrics"):
            continue
        if with_params and next(m.parameters(), None) is None:
            continue
        out.append(n)
    return out


def get_network(pl_module: L.LightningModule, model_attr: str | None = None) -> nn.Module:
    """The network the callbacks prune (see :func:`resolve_model_attr`)."""
    attr = resolve_model_attr(pl_module, model_attr)
    return getattr(pl_module, attr) if attr else pl_module


def applied_plans(pl_module: nn.Module) -> list[dict[str, Any]]:
    """The plans already applied to ``pl_module``'s network (a list kept on the module)."""
    plans = getattr(pl_module, PLANS_ATTR, None)
    if plans is None:
        plans = []
        object.__setattr__(pl_module, PLANS_ATTR, plans)  # plain attribute, not a submodule/buffer
    return plans


def rebuild_optimizers(trainer: L.Trainer) -> None:
    """Rebuild optimizers and LR schedulers for the current parameters (after a prune).

    Learning rates of the param groups and the schedulers' state (epoch counters) carry over;
    the optimizer state (momentum buffers) starts afresh for the new parameter tensors.
    """
    old_opts = list(trainer.optimizers)
    old_scheds = [cfg.scheduler.state_dict() for cfg in trainer.lr_scheduler_configs]
    trainer.strategy.setup_optimizers(trainer)
    for new, old in zip(trainer.optimizers, old_opts, strict=False):
        for g_new, g_old in zip(new.param_groups, old.param_groups, strict=False):
            for key in ("lr", "initial_lr"):
                if key in g_old:
                    g_new[key] = g_old[key]
    for cfg, state in zip(trainer.lr_scheduler_configs, old_scheds, strict=False):
        cfg.scheduler.load_state_dict(state)


def rewrap_ddp(trainer: L.Trainer) -> bool:
    """Rebuild the DDP wrapper after the module's parameters changed. Returns True if it did."""
    from torch.nn.parallel import DistributedDataParallel

    strategy = trainer.strategy
    if not isinstance(strategy.model, DistributedDataParallel):
        return False
    module = strategy.lightning_module
    strategy.model = strategy._setup_model(module)  # private API, pinned by a test
    return True


def replay_plans(pl_module: nn.Module, checkpoint: Mapping[str, Any], model_attr: str | None = None) -> int:
    """Replay the checkpoint's plans that ``pl_module`` has not applied yet; return the number of
    plans applied in total."""
    from .surgery import restore

    stored = (checkpoint.get(CHECKPOINT_KEY) or {}).get("plans") or []
    done = applied_plans(pl_module)
    if len(done) > len(stored) or any(a != b for a, b in zip(done, stored, strict=False)):
        raise ConfigError(
            f"the checkpoint holds {len(stored)} pruning plan(s) that do not extend the {len(done)} already "
            "applied to this module: load it into a freshly built (unpruned) module"
        )
    if model_attr is None:
        model_attr = (checkpoint.get(CHECKPOINT_KEY) or {}).get("model_attr")
    net = get_network(pl_module, model_attr)  # type: ignore[arg-type]
    for plan_dict in stored[len(done):]:
        try:
            restore(net, plan_dict)
        except ConfigError as err:
            raise ConfigError(f"the checkpoint's pruning plan does not fit this model (another architecture?): {err}") from None
        done.append(plan_dict)
    return len(stored)


def load_pruned_checkpoint(pl_module: nn.Module, path: str, model_attr: str | None = None, strict: bool = True) -> nn.Module:
    """Load a checkpoint written after pruning into a freshly built module of any class.

    ``torch.load(path, weights_only=True)``, replay the stored plans on ``getattr(pl_module,
    model_attr)``, then ``load_state_dict``. (``ClassificationModule.load_from_checkpoint`` does this
    by itself.)
    """
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    replay_plans(pl_module, ckpt, model_attr)
    pl_module.load_state_dict(ckpt["state_dict"], strict=strict)
    return pl_module


def save_plans(pl_module: nn.Module, checkpoint: dict[str, Any], model_attr: str | None = None) -> None:
    """Store the applied plans (plain data) and the network's attribute in ``checkpoint``."""
    plans = applied_plans(pl_module)
    if plans:
        checkpoint.setdefault(CHECKPOINT_KEY, {})["plans"] = list(plans)
        checkpoint[CHECKPOINT_KEY]["model_attr"] = resolve_model_attr(pl_module, model_attr)  # type: ignore[arg-type]


class PrunedCheckpointMixin:
    """Mix into a LightningModule so that its checkpoints carry the pruning plans and
    ``MyModule.load_from_checkpoint(path)`` / ``trainer.fit(ckpt_path=...)`` rebuild the pruned network
    (plans replayed, then the weights load). Put it before ``L.LightningModule`` in the bases::

        class MyModule(PrunedCheckpointMixin, L.LightningModule): ...

    ``lightprune_model_attr`` (class attribute, default None = found automatically, see
    :func:`resolve_model_attr`) names the network attribute.
    """

    lightprune_model_attr: str | None = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save_plans(self, checkpoint, self.lightprune_model_attr)  # type: ignore[arg-type]
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        replay_plans(self, checkpoint, self.lightprune_model_attr)  # type: ignore[arg-type]
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]


def scoring_set_for_trainer(trainer: L.Trainer, samples_per_class: int, classes: list[int] | None,
                            batch_size: int) -> ScoringSet:
    """The scoring set of a running fit: a lightprune data module's class-balanced draw, split
    across ranks (each rank a disjoint shard; the criteria's states reduce); otherwise the first
    training batches (with a warning: not class-balanced)."""
    dm = trainer.datamodule
    if dm is not None and hasattr(dm, "balanced_subset"):
        return resolve_scoring_set(dm, samples_per_class=samples_per_class, classes=classes, batch_size=batch_size,
                                   rank=trainer.global_rank, world_size=trainer.world_size)
    loader = trainer.train_dataloader if dm is None else dm.train_dataloader()
    if loader is None:
        raise ConfigError(
            "this criterion needs data, but the trainer has no train data loader: give the trainer a "
            "datamodule (a lightprune ClassificationDataModule draws a class-balanced scoring set)"
        )
    warnings.warn(
        "the datamodule has no balanced_subset(): scoring on the first training batches (not class-balanced)",
        stacklevel=3,
    )
    return resolve_scoring_set(loader, max_batches=10)


def eval_batches_for_trainer(trainer: L.Trainer, splits: list[str]) -> dict[str, Any]:
    """``{split: this rank's shard of the datamodule's split loader}`` (every rank a disjoint part;
    :func:`lightprune.evaluation.evaluate` reduces the counts)."""
    from torch.utils.data import DataLoader, Subset

    dm = trainer.datamodule
    out: dict[str, Any] = {}
    for split in splits:
        try:
            loader = getattr(dm, f"{split}_dataloader")() if dm is not None else None
        except Exception:  # noqa: BLE001 - a split the datamodule does not provide
            loader = None
        if not isinstance(loader, DataLoader):
            continue
        if trainer.world_size > 1:
            ds = loader.dataset
            loader = DataLoader(Subset(ds, range(trainer.global_rank, len(ds), trainer.world_size)),
                                batch_size=loader.batch_size, shuffle=False)
        out[split] = loader
    return out
