"""``lightprune analyze generalization``: shuffled labels (exact count), files, resume, and the feature
entropies against a direct computation (plain forward hook, giotto-ph birth indices, CRITERIA.md step 5)."""

from __future__ import annotations

import json

import pytest
import torch

from lightprune.analysis import main, shuffle_labels
from lightprune.analysis.generalization import ShuffledLabelsDigits
from lightprune.data import DigitsDataModule, class_balanced_indices
from lightprune.errors import ConfigError
from lightprune.models import create_model
from lightprune.topology import feature_entropy, giotto_birth_times


def test_shuffle_labels_changes_exactly_the_fraction():
    y = torch.arange(200) % 10
    for fraction in (0.0, 0.05, 0.2, 0.5, 1.0):
        for seed in (0, 1):
            z = shuffle_labels(y, fraction, seed=seed)
            assert int((z != y).sum()) == round(fraction * 200)
            assert torch.equal(z.bincount(minlength=10), y.bincount(minlength=10))  # a shuffle
    assert torch.equal(shuffle_labels(y, 0.5, seed=3), shuffle_labels(y, 0.5, seed=3))
    assert not torch.equal(shuffle_labels(y, 0.5, seed=3), shuffle_labels(y, 0.5, seed=4))
    with pytest.raises(ConfigError, match=r"fraction=1.5 is not allowed; it must be a number in \[0, 1\]"):
        shuffle_labels(y, 1.5)
    with pytest.raises(ConfigError, match=r"fraction=1.0 draws 3 labels, more than half of them of one class"):
        shuffle_labels(torch.tensor([0, 0, 1]), 1.0)
    with pytest.raises(ConfigError, match=r"fraction=-0.1 is not allowed"):
        ShuffledLabelsDigits(-0.1)


def _direct_feature_entropy(weights, layer_relu: int, spc: int, x, y) -> dict[int, float]:
    """Per class: mean over units of H_c of the post-ReLU maps of one conv, computed by hand."""
    net = create_model("cifar_vgg11", 10, in_channels=1, width_mult=0.01)
    net.load_state_dict(weights)
    net.eval()
    idx = torch.tensor(class_balanced_indices(y, spc, seed=0))
    maps = []
    handle = net.features[layer_relu].register_forward_hook(lambda m, i, o: maps.append(o.clone()))
    with torch.no_grad():
        net(x[idx])
    handle.remove()
    births, _ = giotto_birth_times(maps[0].double(), distances="ranks")  # exact ranks: never ambiguous
    return {c: float(feature_entropy(births[y[idx] == c])[0].mean()) for c in range(10)}


def test_generalization_command_files_shuffling_resume_and_entropies(tmp_path, capsys):
    out = tmp_path / "gen"
    args = ["generalization", "--model_kwargs", "{width_mult: 0.01}", "--levels", "[0, 0.5]", "--steps", "1",
            "--batch_size", "16",
            "--samples_per_class", "3", "--layers", "[features.0, features.4]", "--out", str(out),
            "--progress", "false"]
    main(args)
    assert "| 50 % | 1 |" in capsys.readouterr().out
    for name in ("generalization.csv", "generalization_networks.csv", "generalization_networks.md",
                 "generalization_table.csv", "generalization_table.md", "generalization.json", "generalization.png"):
        assert (out / name).is_file(), name
    data = json.loads((out / "generalization.json").read_text())
    nets = {n["level"]: n for n in data["networks"]}
    assert sorted(nets) == [0.0, 0.5]
    n_train = nets[0.5]["train_images"]
    assert nets[0.0]["changed_labels"] == 0 and nets[0.5]["changed_labels"] == round(0.5 * n_train)
    dm = ShuffledLabelsDigits(0.5, shuffle_seed=0, image_size=32, channels=1, seed=0)
    dm.setup("fit")
    assert int((dm.train_labels() != dm.true_train_labels).sum()) == round(0.5 * n_train)
    # the feature entropies of the table = a direct computation on the saved weights
    plain = DigitsDataModule(image_size=32, channels=1, seed=0)
    plain.setup("fit")
    x, y = plain.train_set.tensors  # the true training labels (the default class_labels="true")
    assert torch.equal(y, dm.true_train_labels)
    for level, folder in ((0.0, "level_000_seed_0"), (0.5, "level_050_seed_0")):
        weights = torch.load(out / folder / "model.pt", weights_only=True)
        for name, relu in (("features.0", 2), ("features.4", 6)):
            layer = next(r for r in nets[level]["layers"] if r["layer"] == name)
            direct = _direct_feature_entropy(weights, relu, 3, x, y)
            for c, h in direct.items():
                assert layer["class_feature_entropy"][str(c)] == pytest.approx(h, rel=1e-9, abs=1e-12)
            assert layer["feature_entropy"] == pytest.approx(sum(direct.values()) / 10, rel=1e-9)
    # resume: finished networks are read back, a network with weights but no result is not retrained
    stamp = {f: (out / f / "model.pt").stat().st_mtime_ns for f in ("level_000_seed_0", "level_050_seed_0")}
    (out / "level_050_seed_0" / "result.json").unlink()
    main(args)
    assert {f: (out / f / "model.pt").stat().st_mtime_ns for f in stamp} == stamp
    assert json.loads((out / "generalization.json").read_text())["networks"] == data["networks"]


def test_generalization_help_and_errors(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["generalization", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--levels" in out and "--class_labels" in out and "--ckpt" not in out
    for flag, value, match in (("--levels", "[0, 1.5]", "levels contains 1.5; every level must be a fraction in [0, 1]"),
                               ("--class_labels", "noisy", "class_labels='noisy' is not allowed; choose one of: true, training"),
                               ("--seeds", "[1, 1]", "seeds=[1, 1] is not allowed; give distinct integers")):
        with pytest.raises(SystemExit) as exc:
            main(["generalization", flag, value, "--out", str(tmp_path)])
        assert exc.value.code == 2
        assert f"lightprune analyze generalization: error: {match}" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing trained
