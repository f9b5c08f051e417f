"""Data modules: the embedded digits set (default), CIFAR-10/100 and ImageFolder (ImageNet layout).

Every data module here derives from :class:`ClassificationDataModule`, which adds what pruning
needs on top of Lightning's ``LightningDataModule``: ``num_classes``, ``in_channels``,
``image_size``, the training labels, and :meth:`~ClassificationDataModule.scoring_dataloader`,
a class-balanced draw of N training images of each of K classes (the scoring set of the criteria).

Example::

    >>> from lightprune.data import DigitsDataModule
    >>> dm = DigitsDataModule(image_size=16, channels=1)
    >>> dm.setup("fit")
    >>> x, y = next(iter(dm.train_dataloader()))
    >>> tuple(x.shape[1:]), dm.num_classes
    ((1, 16, 16), 10)
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from .errors import (
    ConfigError,
    DataNotFoundError,
    UnknownNameError,
    check_choice,
    check_fraction,
    check_positive_int,
)

__all__ = [
    "ClassificationDataModule",
    "DigitsDataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "ImageFolderDataModule",
    "class_balanced_indices",
    "create_datamodule",
    "list_datamodules",
    "split_batch",
    "Batches",
    "ScoringSet",
    "resolve_scoring_set",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def class_balanced_indices(
    labels: Sequence[int] | torch.Tensor | np.ndarray,
    samples_per_class: int,
    classes: Sequence[int] | None = None,
    *,
    seed: int = 0,
) -> list[int]:
    """Draw ``samples_per_class`` indices of each class in ``classes``, without replacement.

    Args:
        labels: class label of every sample, length N.
        samples_per_class: how many samples of each class, >= 1.
        classes: the K classes to draw from; ``None`` = every class present in ``labels``.
        seed: seed of the draw (the same seed gives the same indices).

    Returns:
        Sorted by class, then by draw order: ``K * samples_per_class`` indices into ``labels``.

    Raises:
        ConfigError: a class has fewer than ``samples_per_class`` samples, or is not present.

    Example::

        >>> labels = [0, 1, 0, 1, 1, 0]
        >>> idx = class_balanced_indices(labels, 2, seed=0)
        >>> [labels[i] for i in idx], idx == class_balanced_indices(labels, 2, seed=0)
        ([0, 0, 1, 1], True)
    """
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).astype(np.int64)
    check_positive_int("samples_per_class", samples_per_class)
    present = np.unique(labels)
    if classes is None:
        classes = present.tolist()
    rng = np.random.default_rng(seed)
    out: list[int] = []
    for c in classes:
        idx = np.flatnonzero(labels == int(c))
        if idx.size == 0:
            raise ConfigError(f"classes contains {c!r}, which has no sample; classes present: {present.tolist()}")
        if idx.size < samples_per_class:
            raise ConfigError(
                f"samples_per_class={samples_per_class} but class {c} has only {idx.size} samples in this split"
            )
        out.extend(sorted(rng.choice(idx, size=samples_per_class, replace=False).tolist()))
    return out


class ClassificationDataModule(L.LightningDataModule):
    """Base class: a classification data module that can hand out a class-balanced scoring set.

    Subclasses set ``self.train_set``, ``self.val_set``, ``self.test_set`` and ``self.scoring_set``
    (the training images with evaluation transforms, aligned with :meth:`train_labels`) in ``setup``.

    Args:
        batch_size: batch size of every loader, default 64.
        num_workers: DataLoader workers, default 0.
        seed: seed of splits and of the scoring-set draw, default 0.
    """

    num_classes: int
    in_channels: int
    image_size: int

    def __init__(self, batch_size: int = 64, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.num_workers = check_positive_int("num_workers", num_workers, minimum=0)
        self.seed = seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.scoring_set: Dataset | None = None
        self._train_labels: torch.Tensor | None = None

    # -- loaders ---------------------------------------------------------------------------------
    def _loader(self, ds: Dataset | None, shuffle: bool, batch_size: int | None = None) -> DataLoader:
        if ds is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for a loader")
        return DataLoader(
            ds,
            batch_size=batch_size or self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    # -- scoring set ---------------------------------------------------------------------------------
    def train_labels(self) -> torch.Tensor:
        """Labels of the training split (aligned with ``scoring_set``)."""
        if self._train_labels is None:
            self.setup("fit")
        assert self._train_labels is not None
        return self._train_labels

    def balanced_subset(
        self, samples_per_class: int = 100, classes: Sequence[int] | None = None, *, seed: int | None = None
    ) -> Subset:
        """``samples_per_class`` training images of each class in ``classes`` (default: all classes),
        with evaluation transforms (no augmentation). Deterministic for a given seed."""
        labels = self.train_labels()
        if classes is not None:
            for c in classes:
                if not (isinstance(c, int) and 0 <= c < self.num_classes):
                    raise ConfigError(f"classes contains {c!r}; allowed: integers in [0, {self.num_classes})")
        idx = class_balanced_indices(labels, samples_per_class, classes, seed=self.seed if seed is None else seed)
        assert self.scoring_set is not None
        return Subset(self.scoring_set, idx)

    def scoring_dataloader(
        self,
        samples_per_class: int = 100,
        classes: Sequence[int] | None = None,
        *,
        batch_size: int | None = None,
        seed: int | None = None,
    ) -> DataLoader:
        """A non-shuffled loader over :meth:`balanced_subset` (the criteria's scoring set)."""
        return self._loader(self.balanced_subset(samples_per_class, classes, seed=seed), False, batch_size)


# ------------------------------------------------------------------------------------------------
# digits (embedded, the default)
# ------------------------------------------------------------------------------------------------
class DigitsDataModule(ClassificationDataModule):
    """scikit-learn's ``load_digits`` (1,797 8x8 grey images, 10 classes) as a Lightning data module.

    Deterministic, stratified train/val/test split; images resized (bilinear) to ``image_size``,
    normalised with the training split's mean and std, and repeated to ``channels`` channels.

    Args:
        image_size: side of the resized square images, >= 8, default 32.
        channels: 1 or 3, default 3.
        val_fraction: fraction of all images in the validation split, default 0.1.
        test_fraction: fraction of all images in the test split, default 0.2.
        batch_size: default 64.
        num_workers: default 0 (the data set lives in memory).
        seed: seed of the split and of the scoring-set draw, default 0.
    """

    num_classes = 10

    def __init__(
        self,
        image_size: int = 32,
        channels: int = 3,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        self.image_size = check_positive_int("image_size", image_size, minimum=8)
        check_choice("channels", channels, (1, 3))
        self.in_channels = channels
        self.val_fraction = check_fraction("val_fraction", val_fraction, low_open=True)
        self.test_fraction = check_fraction("test_fraction", test_fraction, low_open=True)
        if val_fraction + test_fraction >= 0.9:
            raise ConfigError(
                f"val_fraction + test_fraction = {val_fraction + test_fraction} leaves too little to train on; keep it < 0.9"
            )
        self._splits: dict[str, TensorDataset] | None = None

    def _build(self) -> dict[str, TensorDataset]:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
        y = torch.tensor(digits.target, dtype=torch.long)
        idx = np.arange(len(y))
        rest, test = train_test_split(idx, test_size=self.test_fraction, stratify=y, random_state=self.seed)
        val_share = self.val_fraction / (1 - self.test_fraction)
        train, val = train_test_split(rest, test_size=val_share, stratify=y[rest], random_state=self.seed)
        if self.image_size != 8:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        mean, std = x[train].mean(), x[train].std()
        x = (x - mean) / std
        if self.in_channels == 3:
            x = x.expand(-1, 3, -1, -1).contiguous()
        parts = {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}
        return {k: TensorDataset(x[v], y[v]) for k, v in parts.items()}

    def setup(self, stage: str | None = None) -> None:
        if self._splits is None:
            self._splits = self._build()
        self.train_set = self._splits["train"]
        self.val_set = self._splits["val"]
        self.test_set = self._splits["test"]
        self.scoring_set = self._splits["train"]  # no augmentation on digits
        self._train_labels = self._splits["train"].tensors[1]


# ------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100
# ------------------------------------------------------------------------------------------------
class _ArrayImageDataset(Dataset):
    """uint8 images (N, H, W, C) + labels, with a torchvision transform applied per item."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def _read_cifar_batches(folder: Path, files: list[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in files:
        with open(folder / name, "rb") as fh:
            entry = pickle.load(fh, encoding="latin1")
        images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(entry[label_key])
    return np.concatenate(images).transpose(0, 2, 3, 1).copy(), np.asarray(labels, dtype=np.int64)


class CIFAR10DataModule(ClassificationDataModule):
    """CIFAR-10 in torchvision's python layout (``<data_dir>/cifar-10-batches-py``).

    Downloads through ``torchvision.datasets.CIFAR10`` only when ``download=True``. Training
    augmentation: random crop 32 with padding 4 and horizontal flip; then per-channel normalisation.

    Args:
        data_dir: folder that holds (or will hold) the data set, default ``"data"``.
        download: download it if missing, default False (nothing downloads unless asked).
        val_fraction: fraction of the 50,000 training images held out for validation (seeded,
            stratified); 0 (default) validates on the test split, as CIFAR pruning papers report.
        batch_size: default 128.
        num_workers: default 2.
        seed: default 0.
    """

    num_classes = 10
    in_channels = 3
    image_size = 32
    _folder = "cifar-10-batches-py"
    _train_files = [f"data_batch_{i}" for i in range(1, 6)]
    _test_files = ["test_batch"]
    _label_key = "labels"
    _mean, _std = CIFAR10_MEAN, CIFAR10_STD

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = False,
        val_fraction: float = 0.0,
        batch_size: int = 128,
        num_workers: int = 2,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        self.data_dir = Path(data_dir)
        self.download = bool(download)
        self.val_fraction = check_fraction("val_fraction", val_fraction)

    def _torchvision_cls(self):
        from torchvision.datasets import CIFAR10

        return CIFAR10

    def prepare_data(self) -> None:
        folder = self.data_dir / self._folder
        missing = [f for f in self._train_files + self._test_files if not (folder / f).exists()]
        if not missing:
            return
        if not self.download:
            raise DataNotFoundError(
                f"{type(self).__name__}: {folder} lacks {missing}; set download=True to fetch the data set, "
                f"or point data_dir at a folder holding {self._folder}/"
            )
        self._torchvision_cls()(str(self.data_dir), train=True, download=True)
        self._torchvision_cls()(str(self.data_dir), train=False, download=True)

    def _transforms(self):
        from torchvision import transforms as T

        norm = T.Normalize(self._mean, self._std)
        train = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), norm])
        evaluation = T.Compose([T.ToTensor(), norm])
        return train, evaluation

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.prepare_data()  # raises a clear error when the files are missing (a no-op when present)
        folder = self.data_dir / self._folder
        x_tr, y_tr = _read_cifar_batches(folder, self._train_files, self._label_key)
        x_te, y_te = _read_cifar_batches(folder, self._test_files, self._label_key)
        train_tf, eval_tf = self._transforms()
        tr_idx = np.arange(len(y_tr))
        if self.val_fraction > 0:
            from sklearn.model_selection import train_test_split

            tr_idx, va_idx = train_test_split(tr_idx, test_size=self.val_fraction, stratify=y_tr, random_state=self.seed)
            tr_idx, va_idx = np.sort(tr_idx), np.sort(va_idx)
            self.val_set = _ArrayImageDataset(x_tr[va_idx], y_tr[va_idx], eval_tf)
        self.test_set = _ArrayImageDataset(x_te, y_te, eval_tf)
        if self.val_fraction == 0:
            self.val_set = self.test_set
        self.train_set = _ArrayImageDataset(x_tr[tr_idx], y_tr[tr_idx], train_tf)
        self.scoring_set = _ArrayImageDataset(x_tr[tr_idx], y_tr[tr_idx], eval_tf)
        self._train_labels = torch.as_tensor(y_tr[tr_idx])


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (fine labels) in torchvision's python layout (``<data_dir>/cifar-100-python``).

    Same arguments and transforms as :class:`CIFAR10DataModule`.
    """

    num_classes = 100
    _folder = "cifar-100-python"
    _train_files = ["train"]
    _test_files = ["test"]
    _label_key = "fine_labels"
    _mean, _std = CIFAR100_MEAN, CIFAR100_STD

    def _torchvision_cls(self):
        from torchvision.datasets import CIFAR100

        return CIFAR100


# ------------------------------------------------------------------------------------------------
# ImageFolder (ImageNet layout)
# ------------------------------------------------------------------------------------------------
class ImageFolderDataModule(ClassificationDataModule):
    """Images in ImageNet's folder layout: ``<root>/<train_dir>/<class>/*.JPEG`` and the same under
    ``<root>/<val_dir>`` (the validation split doubles as the test split).

    Transforms: training ``RandomResizedCrop(image_size)`` + flip; evaluation ``Resize(image_size *
    256/224)`` + ``CenterCrop(image_size)``; ImageNet normalisation.

    Args:
        root: data set folder.
        train_dir: training sub-folder, default ``"train"``.
        val_dir: validation sub-folder, default ``"val"``.
        image_size: crop size, default 224.
        batch_size: default 64.
        num_workers: default 4.
        seed: default 0.
    """

    in_channels = 3

    def __init__(
        self,
        root: str,
        train_dir: str = "train",
        val_dir: str = "val",
        image_size: int = 224,
        batch_size: int = 64,
        num_workers: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        self.root = Path(root)
        self.train_dir, self.val_dir = train_dir, val_dir
        self.image_size = check_positive_int("image_size", image_size, minimum=8)
        self._num_classes: int | None = None

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        if self._num_classes is None:
            folder = self._check_folder(self.train_dir)
            self._num_classes = sum(1 for p in folder.iterdir() if p.is_dir())
        return self._num_classes

    def _check_folder(self, sub: str) -> Path:
        folder = self.root / sub
        if not folder.is_dir():
            raise DataNotFoundError(
                f"ImageFolderDataModule: {folder} is not a folder; expected root={str(self.root)!r} to hold "
                f"{sub}/<class name>/<image files>"
            )
        return folder

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from torchvision import transforms as T
        from torchvision.datasets import ImageFolder

        norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
        s = self.image_size
        train_tf = T.Compose([T.RandomResizedCrop(s), T.RandomHorizontalFlip(), T.ToTensor(), norm])
        eval_tf = T.Compose([T.Resize(int(round(s * 256 / 224))), T.CenterCrop(s), T.ToTensor(), norm])
        train_dir, val_dir = self._check_folder(self.train_dir), self._check_folder(self.val_dir)
        self.train_set = ImageFolder(str(train_dir), transform=train_tf)
        self.scoring_set = ImageFolder(str(train_dir), transform=eval_tf)
        self.val_set = ImageFolder(str(val_dir), transform=eval_tf)
        if self.val_set.classes != self.train_set.classes:
            raise ConfigError(
                f"ImageFolderDataModule: class folders differ between {train_dir} and {val_dir}: "
                f"{self.train_set.classes} vs {self.val_set.classes}"
            )
        self.test_set = self.val_set
        self._num_classes = len(self.train_set.classes)
        self._train_labels = torch.as_tensor(self.train_set.targets)


_DATAMODULES: dict[str, type[ClassificationDataModule]] = {
    "digits": DigitsDataModule,
    "cifar10": CIFAR10DataModule,
    "cifar100": CIFAR100DataModule,
    "imagefolder": ImageFolderDataModule,
}


def list_datamodules() -> list[str]:
    """Names accepted by :func:`create_datamodule`."""
    return sorted(_DATAMODULES)


def create_datamodule(name: str, **kwargs) -> ClassificationDataModule:
    """Build a data module by name (``digits``, ``cifar10``, ``cifar100``, ``imagefolder``).

    Raises:
        UnknownNameError: unknown ``name``.
    """
    if name not in _DATAMODULES:
        raise UnknownNameError("dataset", name, _DATAMODULES)
    return _DATAMODULES[name](**kwargs)



# ------------------------------------------------------------------------------------------------
# one data resolution: "a data module or batches" -> a scoring set
# ------------------------------------------------------------------------------------------------
DEFAULT_KEYS = ("image", "label")


def split_batch(batch: object, keys: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels)`` of one batch: a tuple/list ``(x, y, ...)`` or a dict (``keys`` names the
    input and label entries, default ``("image", "label")``).

    Example::

        >>> x, y = split_batch({"image": torch.zeros(2, 3), "label": torch.tensor([0, 1])})
        >>> tuple(x.shape), y.tolist()
        ((2, 3), [0, 1])
    """
    if isinstance(batch, dict):
        k_in, k_lab = tuple(keys) if keys is not None else DEFAULT_KEYS
        missing = [k for k in (k_in, k_lab) if k not in batch]
        if missing:
            raise ConfigError(
                f"a dict batch has keys {sorted(batch)}; it lacks {missing}. Set keys=(input key, label key), "
                f"default {DEFAULT_KEYS}"
            )
        x, y = batch[k_in], batch[k_lab]
    elif isinstance(batch, (list, tuple)) and len(batch) >= 2:
        x, y = batch[0], batch[1]
    else:
        raise ConfigError(
            f"a batch must be (inputs, labels) or a dict with {DEFAULT_KEYS} keys; got {type(batch).__name__}"
            + (f" of length {len(batch)}" if isinstance(batch, (list, tuple)) else "")
        )
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"batch inputs must be a torch.Tensor; got {type(x).__name__}")
    return x, (None if y is None else torch.as_tensor(y).long())


class Batches:
    """A re-iterable view of a data source as ``(inputs, labels)`` tuples (dict batches mapped by
    ``keys``); ``len()`` when the source has one. Iterating twice gives the same batches when the
    source does (a non-shuffled DataLoader, a list)."""

    def __init__(self, source: object, keys: Sequence[str] | None = None) -> None:
        self.source, self.keys = source, keys

    def __iter__(self):
        for batch in self.source:  # type: ignore[attr-defined]
            yield split_batch(batch, self.keys)

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]


@dataclass
class ScoringSet:
    """Resolved scoring data: re-iterable ``(inputs, labels)`` batches and the class count (or None)."""

    batches: Batches
    num_classes: int | None

    def example_inputs(self, n: int = 1, device: torch.device | str | None = None) -> torch.Tensor:
        """The first ``n`` inputs (for tracing, dependency graphs, MACs)."""
        for x, _ in self.batches:
            x = x[:n]
            return x.to(device) if device is not None else x
        raise ConfigError("the scoring set is empty: it holds no image")

    def first(self, n: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Up to ``n`` inputs gathered over the first batches (e.g. a latency batch)."""
        xs, got = [], 0
        for x, _ in self.batches:
            xs.append(x)
            got += x.shape[0]
            if got >= n:
                break
        if not xs:
            raise ConfigError("the scoring set is empty: it holds no image")
        x = torch.cat(xs)[:n]
        return x.to(device) if device is not None else x


def resolve_scoring_set(
    data: object,
    *,
    samples_per_class: int = 100,
    classes: Sequence[int] | None = None,
    batch_size: int | None = None,
    keys: Sequence[str] | None = None,
    rank: int = 0,
    world_size: int = 1,
    max_batches: int | None = None,
    argument: str = "dataloader",
) -> ScoringSet:
    """The one way to turn "a data module or batches" into a scoring set.

    - a :class:`ClassificationDataModule`: its class-balanced draw of ``samples_per_class`` training
      images per class (split across ``world_size`` ranks, this rank's shard);
    - another ``LightningDataModule``: its first ``max_batches`` (default 10) training batches;
    - a ``DataLoader`` or any iterable of ``(inputs, labels)`` / dict batches: used as given.

    Raises:
        ConfigError: ``data`` is None, a string, a tensor or anything else that does not yield batches.
    """
    if data is None:
        raise ConfigError(f"{argument} is required: give a data module, a DataLoader or an iterable of (inputs, labels) batches")
    if isinstance(data, ScoringSet):
        return data
    if isinstance(data, ClassificationDataModule):
        data.setup("fit")
        sub = data.balanced_subset(samples_per_class, classes)
        if world_size > 1:
            sub = Subset(sub.dataset, sub.indices[rank::world_size])  # every rank a disjoint part; states reduce
        loader = DataLoader(sub, batch_size=batch_size or data.batch_size, shuffle=False)
        return ScoringSet(Batches(loader, keys), data.num_classes)
    if isinstance(data, L.LightningDataModule):
        data.setup("fit")
        limit = max_batches or 10
        first = []
        for i, b in enumerate(data.train_dataloader()):
            if i >= limit:
                break
            first.append(split_batch(b, keys))
        return ScoringSet(Batches(first), getattr(data, "num_classes", None))
    if isinstance(data, (str, bytes, torch.Tensor, dict)) or not hasattr(data, "__iter__"):
        raise ConfigError(
            f"{argument}={type(data).__name__} is not allowed; give a data module, a DataLoader or an iterable "
            "of (inputs, labels) batches"
        )
    source = data
    if max_batches is not None:
        source = [b for _, b in zip(range(max_batches), data, strict=False)]
    return ScoringSet(Batches(source, keys), getattr(getattr(data, "dataset", None), "num_classes", None))
