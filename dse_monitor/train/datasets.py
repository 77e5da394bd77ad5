"""The datasets of the main job: images held in memory, relabelled views, and readers of
CIFAR-10's and STL-10's published on-disk formats.

CIFAR-10 and STL-10 are read here, from their documented file formats, rather than through
torchvision's ``CIFAR10``/``STL10`` classes: those refuse any file whose md5 differs from
the official release and STL-10 also wants the 2.6 GB ``unlabeled_X.bin`` for the
labelled splits, with no public switch for either (only private methods to override).
The readers check the files' structure instead and only *warn* when the md5 differs,
so a re-packed or subset copy can be used and the reading code is the same in tests and
in use. Downloads go through torchvision's public ``download_and_extract_archive``,
which verifies the archive's md5.
"""
from __future__ import annotations

import copy
import pickle
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

__all__ = [
    "DatasetFilesNotFoundError",
    "RelabeledDataset",
    "TensorImageDataset",
    "permuted_labels",
    "read_cifar10",
    "read_stl10",
    "seeded_split",
    "targets",
    "with_transform",
]


class DatasetFilesNotFoundError(FileNotFoundError):
    """The dataset's files are not where the loader reads them (and no download was asked)."""


def permuted_labels(labels: Sequence[int] | np.ndarray, seed: int) -> np.ndarray:
    """All labels permuted among the samples with ``seed``: the paper's overfitting condition.

    The class counts are kept; the link between image and label is destroyed.

    Example:
        >>> permuted_labels([0, 0, 1, 1, 2], seed=1).tolist()
        [2, 0, 0, 1, 1]
        >>> sorted(permuted_labels([0, 0, 1, 1, 2], seed=1).tolist())
        [0, 0, 1, 1, 2]
    """
    labels = np.asarray(labels)
    return labels[np.random.default_rng(seed).permutation(len(labels))]


class TensorImageDataset(Dataset):
    """Images held in memory as a [N, C, H, W] tensor (uint8, or float in [0, 1]), with integer labels.

    >>> ds = TensorImageDataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), [3, 5])
    >>> len(ds), ds[1][1], tuple(ds[1][0].shape)
    (2, 5, (1, 4, 4))
    """

    def __init__(self, images: torch.Tensor, labels: Sequence[int], transform: Callable | None = None,
                 classes: Sequence[str] | None = None) -> None:
        if len(images) != len(labels):
            raise ValueError(f"one label per image is needed: {len(images)} images, {len(labels)} labels")
        self.images = images
        self.targets = [int(v) for v in labels]
        self.transform = transform
        self.classes = list(classes) if classes is not None else None

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.images[index]
        return (self.transform(x) if self.transform else x), self.targets[index]


class RelabeledDataset(Dataset):
    """``base`` with its labels replaced (the images are untouched)."""

    def __init__(self, base: Dataset, labels: Sequence[int]) -> None:
        if len(labels) != len(base):
            raise ValueError("one label per sample is needed")
        self.base = base
        self.targets = [int(v) for v in labels]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.base[index][0], self.targets[index]


def targets(ds: Dataset) -> np.ndarray:
    """Labels of a dataset without loading its images."""
    if isinstance(ds, Subset):
        return targets(ds.dataset)[np.asarray(ds.indices)]
    for attr in ("targets", "labels"):
        if hasattr(ds, attr):
            v = getattr(ds, attr)
            return v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
    return np.asarray([int(ds[i][1]) for i in range(len(ds))])


def with_transform(ds: Dataset, transform: Callable) -> Dataset:
    """A shallow copy of ``ds`` (through relabelling and subsets) whose images get ``transform``."""
    if isinstance(ds, RelabeledDataset):
        return RelabeledDataset(with_transform(ds.base, transform), ds.targets)
    if isinstance(ds, Subset):
        return Subset(with_transform(ds.dataset, transform), ds.indices)
    if not hasattr(ds, "transform"):
        raise TypeError(f"{type(ds).__name__} has no transform to replace")
    out = copy.copy(ds)
    out.transform = transform
    return out


def seeded_split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train indices, validation indices)``, sorted: a fixed random share ``val_fraction`` held out.

    >>> [a.tolist() for a in seeded_split(5, 0.4, seed=0)]
    [[0, 1, 3], [2, 4]]
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * val_fraction)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def missing_error(name: str, folder: Path, files: Sequence[str], how: str) -> DatasetFilesNotFoundError:
    """The error that lists every file the loader reads, marking the missing ones, and says how to get them."""
    missing = [f for f in files if not (folder / f).is_file()]
    lines = "\n".join(f"  {folder / f}{'   <- missing' if f in missing else ''}" for f in files)
    what = "files not found" if missing else "files present but not readable (corrupted, truncated or another dataset)"
    return DatasetFilesNotFoundError(
        f"{name} {what}. The loader reads:\n{lines}\n{how}\n"
        f"Place these files there, or pass `--data.download true` (needs internet)."
    )


def _warn_unofficial(name: str, folder: Path, checksums: Sequence[Sequence[str]]) -> None:
    from torchvision.datasets.utils import check_integrity

    differ = [f for f, md5 in checksums if (folder / f).is_file() and not check_integrity(str(folder / f), md5)]
    if differ:
        warnings.warn(
            f"{name}: {', '.join(differ)} in {folder} differ from the official release (md5); "
            "the files are read, but results are not comparable with the paper's.",
            stacklevel=3,
        )


def _download(archive: Any, root: Path) -> None:
    """Fetch and unpack a torchvision dataset's official archive (its ``url``/``filename``/``tgz_md5``)."""
    from torchvision.datasets.utils import download_and_extract_archive

    download_and_extract_archive(archive.url, str(root), filename=archive.filename, md5=archive.tgz_md5)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    """One pickled CIFAR-10 batch: ``data`` uint8 [n, 3072] (channel-major rows) and ``labels``."""
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    data = np.asarray(entry["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(entry["labels"]) != len(data):
        raise ValueError(f"{path.name} is not a CIFAR-10 batch")
    return data.reshape(-1, 3, 32, 32), list(entry["labels"])


def read_cifar10(root: Path, train: bool, transform: Callable, download: bool = False) -> TensorImageDataset:
    """CIFAR-10's python version (``<root>/cifar-10-batches-py``): the five training batches, or ``test_batch``."""
    from torchvision.datasets import CIFAR10  # its url, md5 and file lists (public class attributes)

    folder = root / CIFAR10.base_folder
    batches = [f for f, _ in CIFAR10.train_list + CIFAR10.test_list]
    files = [*batches, CIFAR10.meta["filename"]]
    if download and not all((folder / f).is_file() for f in files):
        _download(CIFAR10, root)
    how = f"Unpack cifar-10-python.tar.gz (the python version) in {root}."
    try:
        read = [_read_cifar_batch(folder / f) for f in batches]
        with open(folder / CIFAR10.meta["filename"], "rb") as f:
            classes = pickle.load(f, encoding="latin1")[CIFAR10.meta["key"]]
    except Exception as err:  # noqa: BLE001 - a missing or unreadable file: the listing says which
        raise missing_error("CIFAR-10", folder, files, how) from err
    if train:  # once per data module (setup reads the training split first); the check covers both
        _warn_unofficial("CIFAR-10", folder, CIFAR10.train_list + CIFAR10.test_list)
    chosen = read[:len(CIFAR10.train_list)] if train else read[len(CIFAR10.train_list):]
    images = torch.from_numpy(np.concatenate([d for d, _ in chosen]))
    return TensorImageDataset(images, [y for _, ys in chosen for y in ys], transform, classes)


def read_stl10(root: Path, train: bool, transform: Callable, download: bool = False) -> TensorImageDataset:
    """STL-10's labelled binaries (``<root>/stl10_binary/{train,test}_{X,y}.bin``); ``unlabeled_X.bin`` is not read.

    Each image is 3 x 96 x 96 bytes stored column-major; each label one byte, 1-based.
    """
    from torchvision.datasets import STL10  # its url and md5s (public class attributes)

    folder = root / STL10.base_folder
    files = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"]
    if download and not all((folder / f).is_file() for f in files):
        _download(STL10, root)
    how = f"Unpack stl10_binary.tar.gz in {root} (unlabeled_X.bin is not needed)."
    split = "train" if train else "test"
    x_file, y_file = folder / f"{split}_X.bin", folder / f"{split}_y.bin"
    if not all((folder / f).is_file() for f in files) or x_file.stat().st_size != y_file.stat().st_size * 3 * 96 * 96:
        raise missing_error("STL-10", folder, files, how)
    images = np.fromfile(x_file, dtype=np.uint8).reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)
    labels = np.fromfile(y_file, dtype=np.uint8).astype(np.int64) - 1
    if train:
        _warn_unofficial("STL-10", folder, [e for e in STL10.train_list + STL10.test_list if e[0] in files])
    return TensorImageDataset(torch.from_numpy(np.ascontiguousarray(images)), labels.tolist(), transform,
                              classes=None)
