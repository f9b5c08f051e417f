"""docs/adding-a-criterion.md runs: its package is installed with pip into a temporary folder (entry
point group ``lightprune.criteria``) and its YAML config prunes with the new criterion in a real
``lightprune fit`` subprocess."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "adding-a-criterion.md"


def doc_files() -> dict[str, str]:
    text = DOC.read_text()
    blocks = re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", text, flags=re.S)
    return dict(blocks)


@pytest.mark.slow
def test_the_documented_criterion_installs_and_prunes_from_yaml(tmp_path):
    files = doc_files()
    assert set(files) == {"mycrit_pkg/src/mycrit/__init__.py", "mycrit_pkg/pyproject.toml", "prune_mean_abs.yaml"}
    for rel, body in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(body)
    site = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(site), str(tmp_path / "mycrit_pkg")],
        capture_output=True, text=True, timeout=300,
    )
    assert pip.returncode == 0, pip.stderr
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])]),
               WANDB_MODE="offline")
    listed = subprocess.run([sys.executable, "-c", "import lightprune as lp; print(lp.list_criteria())"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert "'mean_abs'" in listed.stdout, listed.stderr
    cli = Path(sys.executable).with_name("lightprune")
    run = subprocess.run([str(cli), "fit", "--config", "prune_mean_abs.yaml"], cwd=tmp_path, capture_output=True,
                         text=True, env=env, timeout=600)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]
    assert "lightprune: pruned at epoch 1" in out
    assert "criterion='mean_abs'" in out  # the printed plan names the criterion
