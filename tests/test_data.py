import pickle
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from lightprune.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    DigitsDataModule,
    ImageFolderDataModule,
    class_balanced_indices,
    create_datamodule,
    list_datamodules,
)
from lightprune.errors import ConfigError, DataNotFoundError, UnknownNameError


# ---------------------------------------------------------------------------------------- digits
def test_digits_split_is_deterministic_and_disjoint():
    a, b = DigitsDataModule(seed=3), DigitsDataModule(seed=3)
    a.setup(), b.setup()
    for split in ("train_set", "val_set", "test_set"):
        xa, ya = getattr(a, split).tensors
        xb, yb = getattr(b, split).tensors
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    c = DigitsDataModule(seed=4)
    c.setup()
    assert not torch.equal(a.train_set.tensors[1], c.train_set.tensors[1])
    n = len(a.train_set) + len(a.val_set) + len(a.test_set)
    assert n == 1797
    assert len(a.test_set) == pytest.approx(0.2 * 1797, abs=2)
    assert len(a.val_set) == pytest.approx(0.1 * 1797, abs=2)


def test_digits_split_is_stratified():
    dm = DigitsDataModule()
    dm.setup()
    for split in (dm.train_set, dm.val_set, dm.test_set):
        counts = np.bincount(split.tensors[1].numpy(), minlength=10)
        share = counts / counts.sum()
        assert np.all(np.abs(share - 0.1) < 0.01), share


@pytest.mark.parametrize("size,channels", [(8, 1), (16, 3), (32, 3), (64, 1)])
def test_digits_shapes_and_normalisation(size, channels):
    dm = DigitsDataModule(image_size=size, channels=channels, batch_size=32)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, channels, size, size) and x.dtype == torch.float32
    assert y.dtype == torch.long
    full = dm.train_set.tensors[0]
    assert full.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert full.std().item() == pytest.approx(1.0, abs=1e-3)
    if channels == 3:
        assert torch.equal(full[:, 0], full[:, 2])


def test_digits_balanced_subset(digits_dm):
    sub = digits_dm.balanced_subset(samples_per_class=20, classes=[1, 4, 7])
    labels = [int(digits_dm.train_set[i][1]) for i in sub.indices]
    assert Counter(labels) == {1: 20, 4: 20, 7: 20}
    assert len(set(sub.indices)) == 60
    again = digits_dm.balanced_subset(samples_per_class=20, classes=[1, 4, 7])
    assert sub.indices == again.indices
    other = digits_dm.balanced_subset(samples_per_class=20, classes=[1, 4, 7], seed=99)
    assert sub.indices != other.indices
    full = digits_dm.balanced_subset(samples_per_class=100)
    assert Counter(int(digits_dm.train_set[i][1]) for i in full.indices) == dict.fromkeys(range(10), 100)
    xb, yb = next(iter(digits_dm.scoring_dataloader(10, classes=[2], batch_size=7)))
    assert xb.shape[0] == 7 and torch.all(yb == 2)


def test_class_balanced_indices_small_case():
    labels = [0, 1, 0, 1, 1, 0, 2]
    idx = class_balanced_indices(labels, 2, classes=[0, 1], seed=1)
    assert len(idx) == 4
    assert [labels[i] for i in idx] == [0, 0, 1, 1]
    with pytest.raises(ConfigError, match="samples_per_class=2 but class 2 has only 1"):
        class_balanced_indices(labels, 2)
    with pytest.raises(ConfigError, match="classes contains 5"):
        class_balanced_indices(labels, 1, classes=[5])
    with pytest.raises(ConfigError, match="samples_per_class=0"):
        class_balanced_indices(labels, 0)


def test_balanced_subset_errors(digits_dm):
    with pytest.raises(ConfigError, match="samples_per_class=500 but class 0 has only"):
        digits_dm.balanced_subset(500)
    with pytest.raises(ConfigError, match=r"classes contains 10; allowed: integers in \[0, 10\)"):
        digits_dm.balanced_subset(5, classes=[10])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"channels": 2}, "channels=2 is not allowed; choose one of: 1, 3"),
        ({"image_size": 4}, "image_size=4 is not allowed; it must be an integer >= 8"),
        ({"val_fraction": 0.0}, r"val_fraction=0.0 is not allowed; it must lie in \(0, 1\)"),
        ({"test_fraction": 1.5}, "test_fraction=1.5"),
        ({"val_fraction": 0.5, "test_fraction": 0.45}, "leaves too little to train on"),
        ({"batch_size": 0}, "batch_size=0"),
    ],
)
def test_digits_bad_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DigitsDataModule(**kwargs)


def test_unknown_dataset_lists_names():
    assert list_datamodules() == ["cifar10", "cifar100", "digits", "imagefolder"]
    assert isinstance(create_datamodule("digits", image_size=16), DigitsDataModule)
    with pytest.raises(UnknownNameError, match="Unknown dataset 'mnist'. Known datasets: cifar10, cifar100, digits, imagefolder"):
        create_datamodule("mnist")


# ----------------------------------------------------------------------------------------- CIFAR
def _write_cifar(root, folder, files, label_key, n_per_file, num_classes, seed=0):
    rng = np.random.default_rng(seed)
    (root / folder).mkdir(parents=True, exist_ok=True)
    for name in files:
        labels = [i % num_classes for i in range(n_per_file)]
        data = rng.integers(0, 256, size=(n_per_file, 3 * 32 * 32), dtype=np.uint8)
        with open(root / folder / name, "wb") as fh:
            pickle.dump({"data": data, label_key: labels}, fh)


def test_cifar10_reads_standard_layout_without_download(tmp_path):
    files = [f"data_batch_{i}" for i in range(1, 6)]
    _write_cifar(tmp_path, "cifar-10-batches-py", files, "labels", 20, 10)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as fh:
        pickle.dump({"data": np.zeros((10, 3072), np.uint8), "labels": list(range(10))}, fh)
    dm = CIFAR10DataModule(data_dir=str(tmp_path), batch_size=8, num_workers=0, val_fraction=0.2)
    dm.setup("fit")
    assert len(dm.train_set) == 80 and len(dm.val_set) == 20 and len(dm.test_set) == 10
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and y.dtype == torch.long
    # evaluation transform: zeros image normalised to -mean/std exactly
    xt, _ = dm.test_set[0]
    expected = -torch.tensor(dm._mean) / torch.tensor(dm._std)
    assert torch.allclose(xt[:, 0, 0], expected, atol=1e-6)
    # the scoring set holds the training images without augmentation: deterministic
    sub = dm.balanced_subset(samples_per_class=4)
    a, b = sub[0][0], sub[0][0]
    assert torch.equal(a, b) and len(sub) == 40
    assert dm.num_classes == 10 and dm.in_channels == 3 and dm.image_size == 32


def test_cifar10_missing_without_download_is_clear(tmp_path):
    dm = CIFAR10DataModule(data_dir=str(tmp_path))
    with pytest.raises(DataNotFoundError, match=r"set download=True to fetch the data set"):
        dm.setup("fit")


def test_cifar_download_flag_calls_torchvision(tmp_path, monkeypatch):
    calls = []

    class FakeCIFAR:
        def __init__(self, root, train, download):
            calls.append((root, train, download))

    dm = CIFAR10DataModule(data_dir=str(tmp_path), **{"download": True})  # torchvision is stubbed below: no network
    monkeypatch.setattr(dm, "_torchvision_cls", lambda: FakeCIFAR)
    dm.prepare_data()
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]


def test_cifar100_fine_labels(tmp_path):
    _write_cifar(tmp_path, "cifar-100-python", ["train"], "fine_labels", 300, 100)
    _write_cifar(tmp_path, "cifar-100-python", ["test"], "fine_labels", 100, 100, seed=2)
    dm = CIFAR100DataModule(data_dir=str(tmp_path), batch_size=16, num_workers=0)
    dm.setup("fit")
    assert dm.num_classes == 100 and len(dm.train_set) == 300 and dm.val_set is dm.test_set
    assert sorted(set(dm.train_labels().tolist())) == list(range(100))
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (16, 3, 32, 32)


# ----------------------------------------------------------------------------------- ImageFolder
def _write_image_folder(root, classes, n, size=(40, 30)):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"img{i}.png")


def test_imagefolder_generated_images(tmp_path):
    _write_image_folder(tmp_path, ["cat", "dog", "eel"], 4)
    dm = ImageFolderDataModule(root=str(tmp_path), image_size=32, batch_size=5, num_workers=0)
    assert dm.num_classes == 3
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (5, 3, 32, 32)
    xv, yv = next(iter(dm.val_dataloader()))
    assert xv.shape == (5, 3, 32, 32) and yv.tolist() == [0, 0, 0, 0, 1]
    sub = dm.balanced_subset(2)
    assert sorted(int(dm.scoring_set[i][1]) for i in sub.indices) == [0, 0, 1, 1, 2, 2]


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataNotFoundError, match="is not a folder"):
        ImageFolderDataModule(root=str(tmp_path / "nope")).setup()
    _write_image_folder(tmp_path, ["a", "b"], 1)
    (tmp_path / "val" / "b").rename(tmp_path / "val" / "c")
    with pytest.raises(ConfigError, match="class folders differ"):
        ImageFolderDataModule(root=str(tmp_path), image_size=32, num_workers=0).setup()
