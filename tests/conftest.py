import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


# under pytest-xdist (`make test` runs `-n auto`), the workers share the cores: each gets its share of
# torch threads, so that OpenMP pools do not oversubscribe the machine
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))
# the same share for the subprocesses the tests start (console scripts, DDP and kill/resume workers):
# two workers that each start a 2-thread process on 2 cores made those runs 5-7x slower
os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(_THREADS)
    yield


@pytest.fixture(scope="session")
def digits_dm():
    from lightprune.data import DigitsDataModule

    dm = DigitsDataModule(image_size=32, channels=3, batch_size=64)
    dm.setup("fit")
    return dm
