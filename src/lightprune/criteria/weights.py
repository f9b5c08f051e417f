"""Weight-only criteria (no data): L1, FPGM, AFIE, random. Definitions: CRITERIA.md."""

from __future__ import annotations

import math

import torch

from ..collect import PrunableLayer
from ..errors import check_choice, check_positive_int
from .base import WeightCriterion, register_criterion

__all__ = ["L1", "FPGM", "AFIE", "RandomCriterion", "afie_value"]


def _filters(layer: PrunableLayer) -> torch.Tensor:
    """(C_out, everything else) float64 view of the layer's weight."""
    w = layer.module.weight.detach().double()
    return w.reshape(w.shape[0], -1)


@register_criterion("l1")
class L1(WeightCriterion):
    """L1 norm of each filter (Li et al. 2017): ``sum |W_i|`` over input channels and kernel positions.

    Example::

        >>> import torch, lightprune as lp
        >>> conv = torch.nn.Conv2d(1, 2, 1, bias=False)
        >>> with torch.no_grad(): conv.weight[:] = torch.tensor([-3.0, 1.0]).view(2, 1, 1, 1)
        >>> lp.score(torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(2, 2)), "l1")["0"].tolist()
        [3.0, 1.0]
    """

    def layer_importance(self, layer: PrunableLayer) -> torch.Tensor:
        return _filters(layer).abs().sum(dim=1)


@register_criterion("fpgm")
class FPGM(WeightCriterion):
    """Filter pruning via geometric median (He et al. 2019): ``g(F_i) = sum_j ||F_i - F_j||_2``.

    Filters close to the geometric median of their layer (small g) are redundant: importance = g.
    """

    def layer_importance(self, layer: PrunableLayer) -> torch.Tensor:
        f = _filters(layer)
        return torch.cdist(f, f, p=2).sum(dim=1)


def afie_value(weight: torch.Tensor) -> float:
    """AFIE of one layer (CRITERIA.md): ``K_l / c_l`` from the singular values of the kernel-averaged weight.

    Steps: M = weight averaged over the kernel's H x W (shape out x in; a Linear weight as is);
    s = singular values of M (p = min(out, in)); min-max normalise s to [0, 1] (all equal -> all 0);
    p = softmax(s_norm); K = -sum p log p; AFIE = K / c, c = number of output channels.
    """
    w = weight.detach().double()
    m = w.mean(dim=(2, 3)) if w.ndim == 4 else w
    s = torch.linalg.svdvals(m)
    rng = s.max() - s.min()
    s_norm = (s - s.min()) / rng if rng > 0 else torch.zeros_like(s)
    p = torch.softmax(s_norm, dim=0)
    k = -(p * torch.log(p)).sum()
    return float(k) / w.shape[0]


_INTRA = ("l1", "random")


@register_criterion("afie")
class AFIE(WeightCriterion):
    """AFIE (Lu et al.): a layer-level score, ``Scores.layer_scores[layer] = K_l / c_l``.

    The planner's ``afie`` strategy uses the layer scores to allocate per-layer ratios. Inside a
    layer AFIE gives every filter the same value, so the channel importance comes from a second
    criterion: ``intra="l1"`` (default) or ``intra="random"`` (as in the paper).

    Args:
        intra: ``"l1"`` or ``"random"``, default ``"l1"``.
        seed: seed of ``intra="random"``, default 0.

    Raises:
        ConfigError: ``intra`` not in ``("l1", "random")``.
    """

    layer_scores = True
    seeded = True

    def __init__(self, intra: str = "l1", seed: int = 0) -> None:
        check_choice("intra", intra, _INTRA)
        self.intra, self.seed = intra, seed
        self._inner = L1() if intra == "l1" else RandomCriterion(seed=seed)

    def layer_importance(self, layer: PrunableLayer) -> torch.Tensor:
        return self._inner.layer_importance(layer)

    def layer_score(self, layer: PrunableLayer) -> float:
        return afie_value(layer.module.weight)


@register_criterion("random")
class RandomCriterion(WeightCriterion):
    """Uniform random importance, seeded per layer (a layer's values depend only on ``seed``, its name
    and its width, so they are the same on every process and for every layer subset).

    Args:
        seed: default 0.
    """

    seeded = True

    def __init__(self, seed: int = 0) -> None:
        check_positive_int("seed", seed, minimum=0)
        self.seed = seed

    def layer_importance(self, layer: PrunableLayer) -> torch.Tensor:
        # a stable per-layer seed (Python's hash() of str is salted per process)
        offset = sum((i + 1) * ord(ch) for i, ch in enumerate(layer.name)) % (2**31)
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + offset) % (2**63 - 1))
        return torch.rand(layer.out_channels, generator=g, dtype=torch.float64)


# used by docs/tests: the AFIE upper bound log(p_l) / c_l
def afie_upper_bound(weight: torch.Tensor) -> float:
    """``log(min(out, in)) / out`` — AFIE cannot exceed it (the entropy of p values is at most log p)."""
    out_c, in_c = weight.shape[0], weight.shape[1]
    return math.log(min(out_c, in_c)) / out_c
