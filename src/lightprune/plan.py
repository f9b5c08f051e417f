"""The :class:`Plan`: which channels every prunable layer keeps, as plain data.

A Plan is what the planner produces, what surgery applies, and what travels inside every
checkpoint (``to_dict()`` is YAML/JSON-safe and ``torch.load(weights_only=True)``-safe).

Example::

    >>> import torch
    >>> p = Plan({"conv": torch.tensor([0, 2])}, {"conv": 4}, [["conv"]])
    >>> p.ratios, p.removed("conv")
    ({'conv': 0.5}, [1, 3])
    >>> Plan.from_dict(p.to_dict()).keep["conv"].tolist()
    [0, 2]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import ConfigError

__all__ = ["Plan"]


@dataclass
class Plan:
    """Which channels every prunable layer keeps.

    Attributes:
        keep: ``{layer: LongTensor of kept channel indices, ascending}`` for every planned layer.
        channels: ``{layer: channels before pruning}``.
        groups: member lists of the coupled groups (root first).
        strategy, target_ratio, criterion: how the plan was made.
        meta: plain-data extras.
        heads: ``{attention module: LongTensor of kept head indices, ascending}`` (whole heads removed,
            :mod:`lightprune.attention`); empty when no head is planned.
        num_heads: ``{attention module: heads before pruning}`` for every module in ``heads``.
    """

    keep: dict[str, torch.Tensor]
    channels: dict[str, int]
    groups: list[list[str]]
    strategy: str = "manual"
    target_ratio: float | None = None
    criterion: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    heads: dict[str, torch.Tensor] = field(default_factory=dict)
    num_heads: dict[str, int] = field(default_factory=dict)

    @property
    def ratios(self) -> dict[str, float]:
        """``{layer: fraction of its channels removed}``."""
        return {n: 1 - len(k) / self.channels[n] for n, k in self.keep.items()}

    @property
    def global_ratio(self) -> float:
        """Fraction of all planned channels removed."""
        total = sum(self.channels.values())
        return 1 - sum(len(k) for k in self.keep.values()) / total if total else 0.0

    def removed(self, layer: str) -> list[int]:
        """Indices removed from ``layer``."""
        kept = set(self.keep[layer].tolist())
        return [i for i in range(self.channels[layer]) if i not in kept]

    def to_dict(self) -> dict[str, Any]:
        """Plain data (ints, floats, strings, lists): YAML/JSON-safe and weights_only-safe."""
        return {
            "keep": {n: [int(i) for i in k.tolist()] for n, k in self.keep.items()},
            "channels": {n: int(c) for n, c in self.channels.items()},
            "groups": [list(g) for g in self.groups],
            "strategy": self.strategy,
            "target_ratio": self.target_ratio,
            "criterion": self.criterion,
            "meta": self.meta,
            "heads": {n: [int(i) for i in k.tolist()] for n, k in self.heads.items()},
            "num_heads": {n: int(h) for n, h in self.num_heads.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        """Inverse of :meth:`to_dict`; validates the indices."""
        try:
            keep = {n: torch.tensor(sorted(int(i) for i in k), dtype=torch.long) for n, k in data["keep"].items()}
            channels = {n: int(c) for n, c in data["channels"].items()}
        except KeyError as err:
            raise ConfigError(f"Plan.from_dict: missing key {err}; expected 'keep' and 'channels'") from None
        for n, k in keep.items():
            if n not in channels:
                raise ConfigError(f"Plan.from_dict: layer {n!r} has kept indices but no channel count")
            if len(k) == 0 or k.min() < 0 or k.max() >= channels[n] or len(set(k.tolist())) != len(k):
                raise ConfigError(f"Plan.from_dict: kept indices of {n!r} must be distinct, in [0, {channels[n]}) and not empty")
        heads = {n: torch.tensor(sorted(int(i) for i in k), dtype=torch.long) for n, k in (data.get("heads") or {}).items()}
        num_heads = {n: int(h) for n, h in (data.get("num_heads") or {}).items()}
        for n, k in heads.items():
            if n not in num_heads:
                raise ConfigError(f"Plan.from_dict: attention module {n!r} has kept heads but no 'num_heads' entry")
            if len(k) == 0 or k.min() < 0 or k.max() >= num_heads[n] or len(set(k.tolist())) != len(k):
                raise ConfigError(f"Plan.from_dict: kept heads of {n!r} must be distinct, in [0, {num_heads[n]}) and not empty")
        return cls(
            keep, channels, [list(g) for g in data.get("groups", [[n] for n in keep])],
            data.get("strategy", "manual"), data.get("target_ratio"), data.get("criterion"), dict(data.get("meta") or {}),
            heads, num_heads,
        )

    def __str__(self) -> str:
        head = f"Plan(strategy={self.strategy!r}, criterion={self.criterion!r}, target={self.target_ratio}, removed={self.global_ratio:.3f})"
        rows = [head, f"  {'layer':<34}{'before':>7}{'after':>7}{'ratio':>8}  group"]
        root_of = {m: g[0] for g in self.groups for m in g}
        for n, k in self.keep.items():
            grp = "" if root_of.get(n, n) == n and len(next((g for g in self.groups if g[0] == n), [n])) == 1 else f"<- {root_of.get(n, n)}" if root_of.get(n, n) != n else "root"
            rows.append(f"  {n:<34}{self.channels[n]:>7}{len(k):>7}{self.ratios[n]:>8.3f}  {grp}")
        for n, k in self.heads.items():
            rows.append(f"  {n + ' (heads)':<34}{self.num_heads[n]:>7}{len(k):>7}{1 - len(k) / self.num_heads[n]:>8.3f}")
        return "\n".join(rows)

    __repr__ = __str__
