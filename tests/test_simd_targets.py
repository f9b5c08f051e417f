"""tests/test_simd.py compiled for CPUs without AVX-512, each in a process of its own (a file of
its own, so that `pytest -n auto --dist loadfile` runs these processes beside test_simd.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numba")


def _host_has(feature):
    from llvmlite import binding

    return bool(binding.get_host_cpu_features().get(feature, False))


@pytest.mark.parametrize(
    ("cpu", "features", "path"),
    [
        ("generic", "", "portable"),
        pytest.param(
            "haswell",
            "+avx2",
            "avx2",
            marks=pytest.mark.skipif(
                not _host_has("avx2") or not _host_has("avx512f"),
                reason="this host runs no AVX2 code, or its own tests/test_simd.py compiles the AVX2 path",
            ),
        ),
    ],
)
def test_intrinsics_compiled_for_cpus_without_avx512(tmp_path, cpu, features, path):
    """tests/test_simd.py again, in a process whose numba compiles for a CPU without AVX-512, as it
    does on such a host (AVX-512 intrinsics would abort LLVM there): the AVX2 or the portable
    compress-store, against the same plain loops."""
    env = dict(
        os.environ,
        NUMBA_CPU_NAME=cpu,
        NUMBA_CPU_FEATURES=features,
        NUMBA_CACHE_DIR=str(tmp_path),
        LIGHTPRUNE_SIMD_CPU=path,
    )
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", str(Path(__file__).with_name("test_simd.py"))]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " failed" not in run.stdout and " passed" in run.stdout

