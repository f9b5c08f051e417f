import os
import subprocess
import sys

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


# The compiled birth kernel is JIT-compiled once per key dtype (int32 keys for float16/32 maps, int64
# for float64; about 50 s each on 2 cores) and cached on disk. Without a warm cache every xdist worker
# and every console-script subprocess that met the kernel first compiled it again (5-6 compiles in a
# suite run on a fresh clone). The controller therefore fills the cache once, both dtypes in parallel,
# before the workers start; with a warm cache this takes about 2 s.
_WARM = (
    "import torch; from lightprune.topology import birth_times; "
    "birth_times(torch.rand(2, 5, 5, dtype=torch.float{bits}), method='numba')"
)


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER") or os.environ.get("LIGHTPRUNE_TEST_NO_WARMUP"):
        return  # a worker: the controller warmed the cache
    procs = [
        subprocess.Popen([sys.executable, "-c", _WARM.format(bits=bits)], env={**os.environ, "OMP_NUM_THREADS": "1"})
        for bits in (32, 64)
    ]
    for proc in procs:
        if proc.wait() != 0:  # the tests of the kernel then fail with the real error
            print(f"conftest: warming the numba cache failed (exit {proc.returncode})", file=sys.stderr)


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
