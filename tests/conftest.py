import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


@pytest.fixture(scope="session")
def digits_dm():
    from lightprune.data import DigitsDataModule

    dm = DigitsDataModule(image_size=32, channels=3, batch_size=64)
    dm.setup("fit")
    return dm
