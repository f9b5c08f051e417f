"""lp.export and `lightprune export`: ONNX / TorchScript files of pruned networks run back (onnxruntime,
torch.jit.load, and a fresh process with nothing but numpy + onnxruntime) and give the torch outputs."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision
from torch import nn

import lightprune as lp
from lightprune.callbacks import PruningCallback
from lightprune.cli import main as cli_main
from lightprune.data import DigitsDataModule
from lightprune.errors import ConfigError
from lightprune.evaluation import inference
from lightprune.export import ExportDependencyError, ExportError, ExportReport

SRC = Path(lp.__file__).resolve().parents[1]  # this checkout's src/, for the subprocesses


def _calibrate(net, shape, batches=2):
    """Give the random network O(1) logits (default Linear init, BatchNorm statistics of random
    batches): near-zero logits would let any absolute tolerance pass."""
    for m in net.modules():
        if isinstance(m, nn.Linear):
            m.reset_parameters()
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    net.train()
    with torch.no_grad():
        for _ in range(batches):
            net(torch.randn(16, *shape[1:]))


def _pruned(net, shape):
    x = torch.zeros(shape)
    plan = lp.plan(net, lp.score(net, "l1"), strategy="uniform", ratio=0.5, example_inputs=x)
    lp.prune(net, plan, x, measure_latency=False)
    _calibrate(net, shape)
    return net, shape


@pytest.fixture(scope="module")
def vgg():
    return _pruned(lp.create_model("cifar_vgg16", 10, width_mult=0.25), (1, 3, 32, 32))


@pytest.fixture(scope="module")
def resnet():
    return _pruned(torchvision.models.resnet18(num_classes=10), (1, 3, 64, 64))


def _torch_out(net, x):
    with inference(net):
        return net(x).numpy()


# ------------------------------------------------------------------------------------ ONNX
@pytest.mark.parametrize("which", ["vgg", "resnet"])
def test_onnx_of_pruned_network_matches_torch_at_batch_1_and_7(which, request, tmp_path):
    net, shape = request.getfixturevalue(which)
    first = net.conv1 if which == "resnet" else net.features[0]
    assert first.out_channels == {"resnet": 32, "vgg": 8}[which]  # pruned by half
    net.train()
    modes = [m.training for m in net.modules()]
    path = tmp_path / "not" / "yet" / f"{which}.onnx"  # folders are created
    report = lp.export(net, torch.randn(shape), path, latency_runs=2)

    assert isinstance(report, ExportReport) and report.format == "onnx" and report.verified
    assert [m.training for m in net.modules()] == modes  # eval during the export, modes restored
    assert path.is_file() and report.size_bytes == path.stat().st_size
    assert sorted(path.parent.iterdir()) == [path]  # one self-contained file, no .onnx.data
    assert sorted(report.max_abs_diff) == [1, 7] and max(report.max_abs_diff.values()) <= 1e-4
    assert report.latency.batch_size == report.torch_latency.batch_size == 1 and report.latency.median_ms > 0
    assert json.loads(json.dumps(report.to_dict()))["max_abs_diff"] == {"1": report.max_abs_diff[1],
                                                                         "7": report.max_abs_diff[7]}
    assert "max |exported - torch|" in str(report) and "latency, batch 1" in str(report)

    # independently of the report: onnxruntime at batch sizes 1 and 7 (and 3, never seen) vs torch
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[0] == "batch"
    for b in (1, 7, 3):
        x = torch.randn(b, *shape[1:])
        want = _torch_out(net, x)
        assert np.abs(want).max() > 0.1  # real logits, not near-zero ones
        got = sess.run(None, {"input": x.numpy()})[0]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
        # and close relative to the logits' scale: float32 rounding through ~20 layers, not a wrong
        # weight (an element-wise rtol fails on a logit that happens to lie near 0)
        assert np.abs(got - want).max() <= 2e-5 * np.abs(want).max()


# ------------------------------------------------------------------------------------ TorchScript
@pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:FutureWarning")
@pytest.mark.parametrize("which", ["vgg", "resnet"])
def test_torchscript_of_pruned_network_gives_the_same_outputs(which, request, tmp_path):
    net, shape = request.getfixturevalue(which)
    report = lp.export(lp.ClassificationModule(net, 10), torch.randn(shape), tmp_path / "m.pt",
                       format="torchscript", latency_runs=0)  # a ClassificationModule: its .model is exported
    assert report.exporter == "torch.jit.trace" and sorted(report.max_abs_diff) == [1, 7]
    assert report.latency is None and report.opset is None
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    for b in (1, 7):
        x = torch.randn(b, *shape[1:])
        with torch.no_grad():
            np.testing.assert_allclose(loaded(x).numpy(), _torch_out(net, x), rtol=0, atol=1e-5)


class FixedBatch(nn.Module):
    """Runs at any batch size in torch, but int(x.shape[0]) becomes a constant in an export."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(self.conv(x).reshape(int(x.shape[0]), -1))


def test_a_file_that_fixed_the_batch_size_is_caught(tmp_path):
    x = torch.randn(1, 3, 8, 8)
    with pytest.warns(torch.jit.TracerWarning), pytest.raises(ExportError, match=r"batch size 7: running the exported"):
        lp.export(FixedBatch(), x, tmp_path / "f.pt", "torchscript", latency_runs=0)
    with pytest.raises(ExportError, match=r"fixed the batch axis to 1 although dynamic_batch=True"):
        lp.export(FixedBatch(), x, tmp_path / "f.onnx", latency_runs=0)
    report = lp.export(FixedBatch(), x, tmp_path / "f.onnx", dynamic_batch=False, latency_runs=0)
    assert list(report.max_abs_diff) == [1] and not report.dynamic_batch  # checked at the one size it runs


# ------------------------------------------------------------------------------------ bad input
def test_unknown_format_lists_the_formats(tmp_path):
    with pytest.raises(ConfigError, match=r"format='tflite' is not allowed; choose one of: onnx, torchscript"):
        lp.export(nn.Linear(2, 2), torch.zeros(1, 2), tmp_path / "m", format="tflite")
    with pytest.raises(ConfigError, match=r"opset=17 is not allowed with format='torchscript'"):
        lp.export(nn.Linear(2, 2), torch.zeros(1, 2), tmp_path / "m", format="torchscript", opset=17)
    with pytest.raises(ConfigError, match=r"batch_sizes=\(\) is not allowed"):
        lp.export(nn.Linear(2, 2), torch.zeros(1, 2), tmp_path / "m", batch_sizes=())
    assert not (tmp_path / "m").exists()


def test_missing_onnxruntime_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    with pytest.raises(ImportError, match=r"'onnxruntime'.*pip install lightprune\[export\]") as err:
        lp.export(nn.Linear(2, 2), torch.zeros(1, 2), tmp_path / "m.onnx")
    assert isinstance(err.value, ExportDependencyError)
    assert not (tmp_path / "m.onnx").exists()  # checked before any work
    # TorchScript does not need it
    assert lp.export(nn.Linear(2, 2), torch.zeros(1, 2), tmp_path / "m.pt", "torchscript", latency_runs=0).verified


# ------------------------------------------------------------------------------------ checkpoints + CLI
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A real (tiny) Lightning fit on digits, pruned 50 % at epoch 1: epoch 0's checkpoint has no plan,
    epoch 1's has one."""
    root = tmp_path_factory.mktemp("fit")
    module = lp.ClassificationModule("cifar_vgg11", 10, in_channels=1, image_size=32, model_kwargs={"width_mult": 0.25})
    ck = L.pytorch.callbacks.ModelCheckpoint(dirpath=root / "ck", save_top_k=-1, every_n_epochs=1)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=2, default_root_dir=str(root), logger=False, enable_progress_bar=False,
        enable_model_summary=False, limit_train_batches=2, limit_val_batches=0, num_sanity_val_steps=0,
        callbacks=[PruningCallback(criterion="l1", ratio=0.5, at_epoch=1, samples_per_class=2), ck],
    )
    trainer.fit(module, datamodule=DigitsDataModule(image_size=32, channels=1, batch_size=32))
    unpruned, pruned = sorted((root / "ck").glob("epoch=*.ckpt"))
    return unpruned, pruned, module.model.features[0].out_channels


def test_cli_exports_a_pruned_checkpoint_that_runs_with_onnxruntime_alone(checkpoints, tmp_path):
    _, ckpt, width = checkpoints
    out, report_json = tmp_path / "out" / "model.onnx", tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run(
        [sys.executable, "-m", "lightprune.cli", "export", "--ckpt", str(ckpt), "--out", str(out),
         "--batch-sizes", "1,7", "--latency-runs", "2", "--json", str(report_json)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "max |exported - torch|" in res.stdout and "warning" not in res.stderr
    report = json.loads(report_json.read_text())
    assert report["input_shape"] == [1, 1, 32, 32]  # from the plan's meta
    assert report["verified"] and sorted(report["max_abs_diff"]) == ["1", "7"]

    # the pruned model, rebuilt here from the checkpoint (plan replayed), gives the reference outputs
    module = lp.ClassificationModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    assert module.model.features[0].out_channels == width == 8
    x = torch.randn(5, 1, 32, 32)
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "want.npy", _torch_out(module, x))

    # a fresh, isolated interpreter that imports nothing but numpy and onnxruntime
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import onnxruntime as ort
        sess = ort.InferenceSession({str(out)!r}, providers=["CPUExecutionProvider"])
        y = sess.run(None, {{sess.get_inputs()[0].name: np.load({str(tmp_path / 'x.npy')!r})}})[0]
        np.save({str(tmp_path / 'got.npy')!r}, y)
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "lightprune", "lightning", "torch_pruning"))
        assert not leaked, leaked
    """)
    res = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    want, got = np.load(tmp_path / "want.npy"), np.load(tmp_path / "got.npy")
    assert got.shape == (5, 10)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    # the logits of a 2-batch fit are small (~0.01): check relatively too
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)


@pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:FutureWarning")
def test_cli_exports_a_checkpoint_without_plan_with_a_warning(checkpoints, tmp_path, capsys):
    unpruned, _, _ = checkpoints
    cli_main(["export", "--ckpt", str(unpruned), "--out", str(tmp_path / "m.pt"), "--format", "torchscript",
              "--latency-runs", "0", "--json", str(tmp_path / "r.json")])
    captured = capsys.readouterr()
    assert "lightprune export: warning:" in captured.err and "carries no pruning plan" in captured.err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["input_shape"] == [1, 1, 32, 32] and report["verified"]  # shape from the hparams
    assert torch.jit.load(str(tmp_path / "m.pt")).state_dict()["features.0.weight"].shape[0] == 16  # unpruned


def test_cli_errors_and_help(tmp_path, capsys):
    missing = tmp_path / "nope" / "last.ckpt"
    with pytest.raises(SystemExit) as exit_:
        cli_main(["export", "--ckpt", str(missing), "--out", str(tmp_path / "m.onnx")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"ckpt={str(missing)!r} is not allowed: no such file" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exit_:
        cli_main(["export", "--ckpt", str(missing), "--out", "m.onnx", "--input-shape", "1,three,32"])
    assert exit_.value.code == 2 and "not a comma-separated list of positive integers" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli_main(["export", "--help"])
    assert exit_.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--ckpt", "--format", "--out", "--input-shape", "--batch-sizes", "--no-verify"):
        assert flag in help_text
