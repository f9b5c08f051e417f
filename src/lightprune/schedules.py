"""Prune schedules: when to prune and how much, as immutable :class:`PruneEvent` lists.

- :class:`OneShot` — prune to ``ratio`` after ``at_epoch`` training epochs.
- :class:`Iterative` — ``len(step_ratios)`` prunes, ``every_n_epochs`` apart, step i reaching the
  cumulative ratio ``step_ratios[i]`` of the original channels.
- :class:`Progressive` — layer by layer, shallow to deep: the coupled groups split into
  ``layer_groups`` consecutive parts, part j pruned at ``ratio`` at epoch ``at_epoch + j * finetune_epochs``.

Example::

    >>> [(e.epoch, round(e.ratio, 2)) for e in Iterative(1, [0.2, 0.4], every_n_epochs=2).events()]
    [(1, 0.2), (3, 0.4)]
    >>> round(Iterative(1, [0.2, 0.4]).step_ratio(Iterative(1, [0.2, 0.4]).events()[1], previous=0.2), 6)
    0.25
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import ConfigError, check_choice, check_fraction, check_positive_int

__all__ = ["PruneEvent", "OneShot", "Iterative", "Progressive", "make_schedule", "SCHEDULES"]

SCHEDULES = ("one_shot", "iterative", "progressive")


@dataclass(frozen=True)
class PruneEvent:
    """One prune: at the start of ``epoch`` (completed epochs), reach ``ratio`` (cumulative for
    iterative schedules) in ``layers`` (None: every planned layer)."""

    index: int
    epoch: int
    ratio: float
    layers: tuple[str, ...] | None = None


class OneShot:
    """Prune once, to ``ratio``, after ``at_epoch`` epochs."""

    needs_groups = False

    def __init__(self, at_epoch: int, ratio: float) -> None:
        self.at_epoch = check_positive_int("at_epoch", at_epoch, minimum=0)
        self.ratio = check_fraction("ratio", ratio)

    def events(self, groups: Sequence[Sequence[str]] | None = None) -> list[PruneEvent]:
        return [PruneEvent(0, self.at_epoch, self.ratio)]

    def step_ratio(self, event: PruneEvent, previous: float = 0.0) -> float:
        """The ratio to apply to the current network at ``event``."""
        return event.ratio


class Iterative(OneShot):
    """Several prunes reaching increasing cumulative ratios of the original channels."""

    def __init__(self, at_epoch: int, step_ratios: Sequence[float], every_n_epochs: int = 1) -> None:
        self.at_epoch = check_positive_int("at_epoch", at_epoch, minimum=0)
        self.every_n_epochs = check_positive_int("every_n_epochs", every_n_epochs)
        if not step_ratios:
            raise ConfigError("step_ratios=[] is not allowed; give at least one ratio")
        for i, r in enumerate(step_ratios):
            check_fraction(f"step_ratios[{i}]", r)
        if any(b <= a for a, b in zip(step_ratios, step_ratios[1:], strict=False)):
            raise ConfigError(f"step_ratios={list(step_ratios)} is not allowed; the ratios must increase strictly")
        self.step_ratios = [float(r) for r in step_ratios]
        self.ratio = self.step_ratios[-1]

    @classmethod
    def linear(cls, at_epoch: int, ratio: float, steps: int, every_n_epochs: int = 1) -> Iterative:
        check_positive_int("steps", steps)
        return cls(at_epoch, [ratio * (i + 1) / steps for i in range(steps)], every_n_epochs)

    def events(self, groups: Sequence[Sequence[str]] | None = None) -> list[PruneEvent]:
        return [PruneEvent(i, self.at_epoch + i * self.every_n_epochs, r) for i, r in enumerate(self.step_ratios)]

    def step_ratio(self, event: PruneEvent, previous: float = 0.0) -> float:
        """Ratio relative to the current widths that reaches the event's cumulative ratio."""
        return 1 - (1 - event.ratio) / (1 - previous)


class Progressive(OneShot):
    """Coupled groups pruned part by part, shallow to deep."""

    needs_groups = True

    def __init__(self, at_epoch: int, ratio: float, layer_groups: int | None = None, finetune_epochs: int = 1) -> None:
        super().__init__(at_epoch, ratio)
        self.layer_groups = None if layer_groups is None else check_positive_int("layer_groups", layer_groups)
        self.finetune_epochs = check_positive_int("finetune_epochs", finetune_epochs)

    def events(self, groups: Sequence[Sequence[str]] | None = None) -> list[PruneEvent]:
        if groups is None:
            raise ConfigError("the progressive schedule needs the network's coupled groups")
        members = [list(g) for g in groups]
        parts = min(self.layer_groups or len(members), len(members))
        size = math.ceil(len(members) / parts)
        chunks = [sum(members[i : i + size], []) for i in range(0, len(members), size)]
        return [
            PruneEvent(j, self.at_epoch + j * self.finetune_epochs, self.ratio, tuple(chunk))
            for j, chunk in enumerate(chunks)
        ]


def make_schedule(
    schedule: str,
    *,
    ratio: float,
    at_epoch: int,
    steps: int = 3,
    step_ratios: Sequence[float] | None = None,
    every_n_epochs: int = 1,
    layer_groups: int | None = None,
    finetune_epochs: int = 1,
) -> OneShot:
    """The schedule named ``schedule`` (``one_shot``, ``iterative``, ``progressive``) from the callback's options."""
    check_choice("schedule", schedule, SCHEDULES)
    if schedule == "one_shot":
        return OneShot(at_epoch, ratio)
    if schedule == "iterative":
        if step_ratios is None:
            return Iterative.linear(at_epoch, ratio, steps, every_n_epochs)
        return Iterative(at_epoch, step_ratios, every_n_epochs)
    return Progressive(at_epoch, ratio, layer_groups, finetune_epochs)
