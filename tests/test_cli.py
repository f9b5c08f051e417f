"""The CLI through the installed console scripts (`lightprune`, `lightning`), as users type it."""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lightprune as lp
from wandb_offline import read_run

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
QUICK = str(ROOT / "configs" / "quickstart.yaml")
TRAIN = str(ROOT / "configs" / "train_digits.yaml")
FAST = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=3",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


def run(cmd, cwd, **env):
    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **env}
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600)


def test_console_scripts_are_installed_and_list_subcommands(tmp_path):
    for script in ("lightprune", "lightning"):
        res = run([str(BIN / script), "--help"], tmp_path)
        assert res.returncode == 0, res.stderr
        for sub in ("fit", "validate", "test", "predict"):
            assert sub in res.stdout


@pytest.mark.parametrize("script", ["lightprune", "lightning"])
def test_fit_quickstart_through_console_script(tmp_path, script):
    res = run([str(BIN / script), "fit", "--config", TRAIN, *FAST], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert re.search(r"test/acc\s+\d\.\d{4}", res.stdout), res.stdout
    version = tmp_path / "runs" / "train_digits" / "version_0"
    rows = list(csv.DictReader(open(version / "metrics.csv")))
    assert any(r.get("val/acc") for r in rows) and any(r.get("test/balanced_acc") for r in rows)
    # the checkpoint rebuilds the module from its config (plain data: loads with weights_only=True)
    ckpt = next((version / "checkpoints").glob("epoch=*.ckpt"))
    raw = torch.load(ckpt, weights_only=True, map_location="cpu")
    assert raw["hyper_parameters"]["model"] == "cifar_vgg16"
    module = lp.ClassificationModule.load_from_checkpoint(ckpt)
    assert isinstance(module, lp.ClassificationModule)
    assert module.model.features[0].out_channels == 16  # width_mult 0.25 from the config


def test_wandb_logger_is_offline_and_logs(tmp_path):
    cfg = str(ROOT / "configs" / "logger_wandb.yaml")
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    res = subprocess.run(
        [str(BIN / "lightprune"), "fit", "--config", TRAIN, "--config", cfg, *FAST],
        cwd=tmp_path, env={**env, "WANDB_SILENT": "true"}, capture_output=True, text=True, timeout=600,
    )  # WANDB_MODE unset: the CLI must default to offline
    assert res.returncode == 0, res.stderr[-3000:]
    runs = list((tmp_path / "runs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((tmp_path / "runs").rglob("*"))[:20]
    logged = read_run(runs[0])
    assert 0.0 <= logged["summary"]["val/acc"] <= 1.0
    assert {"test/acc", "test/balanced_acc", "test/acc_top5", "train/loss_epoch"} <= set(logged["summary"])
    assert any("val/balanced_acc" in step for step in logged["history"])
    assert logged["config"]["model"] == "cifar_vgg16"


@pytest.mark.parametrize(
    "override,pattern",
    [
        (["--data.class_path", "lightprune.data.NoSuchData"], r"NoSuchData"),
        (["--model.init_args.model", "vgg99"], r"Unknown model 'vgg99'. Known models: alexnet, cifar_resnet18"),
        (["--data.init_args.image_size", "16"], r"image_size=16 is too small for model 'cifar_vgg16'"),
        (["--data.init_args.channels", "2"], r"channels=2 is not allowed; choose one of: 1, 3"),
    ],
)
def test_cli_bad_input_is_clear(tmp_path, override, pattern):
    res = run([str(BIN / "lightprune"), "fit", "--config", TRAIN, *FAST, *override], tmp_path)
    assert res.returncode != 0
    assert re.search(pattern, res.stderr + res.stdout), (res.stderr + res.stdout)[-3000:]


@pytest.mark.slow
def test_quickstart_demo_prunes_half_and_stays_accurate(tmp_path):
    """The README's main job: train, feature-entropy scoring, 50 % pruning, fine-tuning, table. Also the
    check that plain training on digits (the train_digits.yaml recipe, 8 of its 12 epochs here) passes
    95 % test accuracy: the table's unpruned column is that network before the prune."""
    res = run([str(BIN / "lightprune"), "fit", "--config", QUICK, "--trainer.enable_progress_bar=false"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    assert "unpruned" in out and "params" in out and "MACs" in out and "latency" in out, out
    assert "channels kept: 50.0 %" in out
    unpruned = float(re.search(r"test accuracy \(no fine-tuning\)\s+(\d+\.\d+) %", out).group(1))
    assert unpruned >= 95.0, out
    final = float(re.search(r"test/acc\s+(\d\.\d{4})", out).group(1))
    assert final >= 0.95, out


def test_quickstart_config_short(tmp_path):
    res = run(
        [str(BIN / "lightprune"), "fit", "--config", QUICK, *FAST, "--trainer.max_epochs=2",
         "--trainer.callbacks.init_args.at_epoch=1"],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "before / after pruning" in res.stdout and "channels kept: 50.0 %" in res.stdout


def test_prune_vgg16_config_on_a_fake_cifar(tmp_path):
    from test_data import _write_cifar

    _write_cifar(tmp_path / "data", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "labels", 20, 10)
    _write_cifar(tmp_path / "data", "cifar-10-batches-py", ["test_batch"], "labels", 20, 10, seed=1)
    res = run(
        [str(BIN / "lightning"), "fit", "--config", str(ROOT / "configs" / "prune_vgg16.yaml"), *FAST,
         "--trainer.max_epochs=2", "--trainer.accelerator=cpu", "--data.init_args.batch_size=8",
         "--data.init_args.num_workers=0", "--data.init_args.data_dir", str(tmp_path / "data"),
         "--trainer.callbacks.init_args.samples_per_class=2", "--trainer.callbacks.init_args.batch_size=20"],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "channels kept: 35.0 %" in res.stdout, res.stdout  # AFIE allocation meets the 0.65 ratio


def test_prune_resnet50_config_on_a_tiny_image_folder(tmp_path):
    from test_data import _write_image_folder

    _write_image_folder(tmp_path / "imgs", ["a", "b", "c"], 4, size=(40, 40))
    res = run(
        [str(BIN / "lightning"), "fit", "--config", str(ROOT / "configs" / "prune_resnet50.yaml"), *FAST,
         "--trainer.max_epochs=2", "--trainer.accelerator=cpu", "--trainer.precision=32",
         "--data.init_args.root", str(tmp_path / "imgs"), "--data.init_args.image_size=32",
         "--data.init_args.batch_size=4", "--data.init_args.num_workers=0", "--test_after_fit=true",
         "--trainer.callbacks.init_args.at_epoch=1", "--trainer.callbacks.init_args.samples_per_class=2"],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "channels kept: 70" in res.stdout, res.stdout


# epochs each snippet needs when it acts from epoch 0 (kept short; the snippets' own epochs are for real runs)
SNIPPET_RUNS = {
    "prune_afie.yaml": (1, ["--trainer.callbacks.init_args.at_epoch=0"]),
    "prune_feature_entropy.yaml": (1, ["--trainer.callbacks.init_args.at_epoch=0"]),
    "prune_info_hybrid.yaml": (1, ["--trainer.callbacks.init_args.at_epoch=0"]),
    "prune_iterative.yaml": (3, ["--trainer.callbacks.init_args.at_epoch=0"]),
    "prune_l1.yaml": (1, ["--trainer.callbacks.init_args.at_epoch=0"]),
    "prune_progressive.yaml": (4, ["--trainer.callbacks.init_args.at_epoch=0"]),
    "score_feature_entropy.yaml": (1, ["--trainer.callbacks.init_args.at_epochs=[0]"]),
}


def test_every_snippet_is_tested():
    assert sorted(SNIPPET_RUNS) == sorted(p.name for p in (ROOT / "callbacks").glob("*.yaml"))


@pytest.mark.parametrize("snippet", sorted(SNIPPET_RUNS))
def test_callback_snippets_attach_to_a_plain_run(tmp_path, snippet):
    epochs, overrides = SNIPPET_RUNS[snippet]
    res = run(
        [str(BIN / "lightprune"), "fit", "--config", TRAIN, *FAST, f"--trainer.max_epochs={epochs}",
         f"--trainer.callbacks+={ROOT / 'callbacks' / snippet}", *overrides],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    if snippet.startswith("prune_"):
        assert "before / after pruning" in res.stdout, res.stdout
    else:
        assert list((tmp_path / "runs" / "train_digits" / "version_0" / "scores").glob("epoch*_feature_entropy.json"))
