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

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torch import nn

from .errors import ConfigError

__all__ = ["CHECKPOINT_KEY", "get_network", "rebuild_optimizers", "rewrap_ddp", "replay_plans", "load_pruned_checkpoint"]

CHECKPOINT_KEY = "lightprune"
PLANS_ATTR = "lightprune_plans"


def get_network(pl_module: L.LightningModule, model_attr: str) -> nn.Module:
    """The network the callbacks prune: ``getattr(pl_module, model_attr)``."""
    net = getattr(pl_module, model_attr, None)
    if not isinstance(net, nn.Module):
        children = [n for n, m in pl_module.named_children() if not type(m).__module__.startswith("torchmetrics")]
        raise ConfigError(
            f"model_attr={model_attr!r}: {type(pl_module).__name__} has no nn.Module attribute of that name; "
            f"its child modules are {children}"
        )
    return net


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


def replay_plans(pl_module: nn.Module, checkpoint: Mapping[str, Any], model_attr: str = "model") -> int:
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
    net = get_network(pl_module, model_attr)  # type: ignore[arg-type]
    for plan_dict in stored[len(done):]:
        try:
            restore(net, plan_dict)
        except ConfigError as err:
            raise ConfigError(f"the checkpoint's pruning plan does not fit this model (another architecture?): {err}") from None
        done.append(plan_dict)
    return len(stored)


def load_pruned_checkpoint(pl_module: nn.Module, path: str, model_attr: str = "model", strict: bool = True) -> nn.Module:
    """Load a checkpoint written after pruning into a freshly built module of any class.

    ``torch.load(path, weights_only=True)``, replay the stored plans on ``getattr(pl_module,
    model_attr)``, then ``load_state_dict``. (``ClassificationModule.load_from_checkpoint`` does this
    by itself.)
    """
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    replay_plans(pl_module, ckpt, model_attr)
    pl_module.load_state_dict(ckpt["state_dict"], strict=strict)
    return pl_module
