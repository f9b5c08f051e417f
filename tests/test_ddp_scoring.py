"""Real multi-process scoring: 2 CPU processes (gloo, torchrun), each seeing half of the data,
must end with identical scores, equal to the single-process scores on all the data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lightprune as lp
from ddp_score_worker import NUM_CLASSES, batches_of, make_data, make_model

HERE = Path(__file__).resolve().parent


def data_criteria():
    return [n for n in lp.list_criteria() if lp.create_criterion(n).needs_data]


@pytest.mark.slow
def test_two_process_scores_equal_single_process(tmp_path):
    names = data_criteria()
    assert {"apoz", "class_selectivity", "entropy", "mutual_information"} <= set(names), names
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(HERE / "ddp_score_worker.py"), str(tmp_path), *names,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-4000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0 == r1, "ranks disagree"  # bit-identical: the same reduced states on every rank
    model = make_model()
    x, y = make_data()
    full = batches_of(x, y, size=7)
    for name in names:
        single = lp.score(model, name, full, num_classes=NUM_CLASSES, progress=False)
        for layer, values in single.items():
            torch.testing.assert_close(
                torch.tensor(r0[name][layer], dtype=torch.float64), values, rtol=1e-9, atol=1e-12,
                msg=lambda m, n=name, k=layer: f"{n} / {k}: {m}",
            )
