"""Worker of tests/test_recovery.py, started by torchrun with 2 processes (gloo).

Each rank recalibrates the BatchNorm statistics of the same network on its own shard of the data
(shards of different sizes and batch sizes; one norm is a SyncBatchNorm), and refits a pruned copy with ``reconstruct`` on that
shard; it writes ``rank<r>.pt`` with the resulting BatchNorm buffers and refit weights.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch import nn

from lightprune.planner import Plan
from lightprune.recovery import recalibrate_bn, reconstruct


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 5, 3, padding=1, bias=False),
        nn.BatchNorm2d(5),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(20, 8),
        nn.SyncBatchNorm(8),  # eval-mode forward on CPU: no per-batch collective during recalibration
        nn.ReLU(),
        nn.Linear(8, 3),
    ).double()  # float64: the comparison with one process is then close to 1e-10


def make_data(n: int = 40) -> torch.Tensor:
    return torch.randn(n, 3, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


# rank 0 gets images 0..24 in batches of 5, rank 1 images 25..39 in batches of 4 (unequal shards)
SHARDS = {0: (0, 25, 5), 1: (25, 40, 4)}

PLAN = Plan(
    {"0": torch.tensor([0, 2, 3, 5]), "3": torch.tensor([1, 2, 4])},
    {"0": 6, "3": 5},
    [["0"], ["3"]],
)


def shard(x: torch.Tensor, rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    lo, hi, size = SHARDS[rank]
    return [(x[i : min(i + size, hi)], torch.zeros(min(i + size, hi) - i)) for i in range(lo, hi, size)]


def pruned_pair() -> tuple[nn.Module, nn.Module]:
    """(pruned, original): the model pruned by PLAN (surgery with lightprune.prune)."""
    import lightprune as lp

    original = make_model()
    pruned = make_model()
    lp.prune(pruned, PLAN, make_data(2), measure_latency=False)
    return pruned, original


def run(batches) -> dict[str, torch.Tensor]:
    model = make_model()
    n = recalibrate_bn(model, batches)
    out = {f"bn.{k}": v for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    out["images"] = torch.tensor(n)
    pruned, original = pruned_pair()
    reconstruct(pruned, original, batches, plan=PLAN, positions=None, ridge=1e-3)
    out.update({f"fit.{k}": v for k, v in pruned.state_dict().items()})
    return out


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    result = run(shard(make_data(), rank))
    torch.save(result, f"{out_dir}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
