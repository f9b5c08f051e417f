"""Worker of tests/test_ddp_scoring.py, started by torchrun with 2 processes (gloo).

Each rank scores the same network on its half of the data (interleaved shard) with every
registered data criterion and writes ``rank<r>.json`` with the resulting Scores.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from torch import nn

import lightprune as lp

NUM_CLASSES = 4


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 12),
        nn.ReLU(),
        nn.Linear(12, NUM_CLASSES),
    ).double().eval()  # float64: the comparison with one process is then exact to 1e-9


def make_data(n: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.arange(n) % NUM_CLASSES
    return x, y


def batches_of(x, y, size=5):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def main(out_dir: str, names: list[str]) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = make_model()
    x, y = make_data()
    shard = batches_of(x[rank::world], y[rank::world])
    result = {}
    for name in names:
        scores = lp.score(model, name, shard, num_classes=NUM_CLASSES, progress=False)
        result[name] = scores.to_dict()["scores"]
    with open(f"{out_dir}/rank{rank}.json", "w") as fh:
        json.dump(result, fh)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
