"""``ImageDataModule``: scikit-learn's bundled digits (the offline default), MNIST,
CIFAR-10 and STL-10, or any local image folder; the paper's permuted-label condition.

Every dataset comes out as ``(image [C, S, S] float32, label int)`` with ``C = in_chans``
and ``S = image_size``, normalised with the dataset's channel statistics
(:mod:`~dse_monitor.train.transforms`); the readers are in :mod:`~dse_monitor.train.datasets`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Literal

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .datasets import (
    DatasetFilesNotFoundError,
    RelabeledDataset,
    TensorImageDataset,
    missing_error,
    permuted_labels,
    read_cifar10,
    read_stl10,
    seeded_split,
    targets,
    with_transform,
)
from .transforms import STATS, MultiView, contrastive_transform, image_transform

__all__ = [
    "DATASETS",
    "DatasetFilesNotFoundError",
    "ImageDataModule",
    "permuted_labels",
]

DATASETS = ("digits", "mnist", "cifar10", "stl10", "imagefolder")


class ImageDataModule(pl.LightningDataModule):
    """Train/validation loaders for the paper's datasets and the embedded default.

    Args:
        dataset: ``"digits"`` (scikit-learn's 1,797 bundled 8x8 digits, no download; a
            fixed seeded split), ``"mnist"``, ``"cifar10"``, ``"stl10"`` (torchvision's
            readers; validation = the official test split, as in the paper) or
            ``"imagefolder"`` (``root/train`` and ``root/val`` class folders, or one class
            folder tree split with ``val_fraction``).
        root: where the files are (ignored for digits).
        image_size: images are resized to ``image_size x image_size``.
        in_chans: channels the model takes (grey images are repeated; the CLI links it to
            ``model.in_chans``).
        batch_size, num_workers: of both loaders.
        download: let torchvision download MNIST/CIFAR-10/STL-10 into ``root``.
        label_noise: ``"permute"`` permutes all training labels with ``seed`` (the paper's
            overfitting condition); validation labels stay clean.
        seed: seed of the label permutation; ``None`` takes the run's global seed
            (``seed_everything``), else 0.
        val_fraction, split_seed: the fixed validation split of digits / an unsplit image
            folder (the same for every run seed, so every run probes the same images).
        augment: random flips and shifted crops on the training images.
        views: augmented views per training image: 1 (supervised), or 2 for contrastive
            learning: each training sample is then ``[views, C, S, S]``, independent draws
            of :func:`contrastive_transform` (``augment`` is not used).

    Example:
        >>> dm = ImageDataModule("digits", image_size=16, batch_size=32)
        >>> dm.setup("fit")
        >>> len(dm.train_dataset), len(dm.val_dataset), dm.num_classes
        (1438, 359, 10)
        >>> x, y = next(iter(dm.val_dataloader()))
        >>> tuple(x.shape), y.dtype
        ((32, 3, 16, 16), torch.int64)
    """

    def __init__(
        self,
        dataset: Literal["digits", "mnist", "cifar10", "stl10", "imagefolder"] = "digits",
        root: str = "data",
        image_size: int = 32,
        in_chans: int = 3,
        batch_size: int = 128,
        num_workers: int = 0,
        download: bool = False,
        label_noise: Literal["none", "permute"] = "none",
        seed: int | None = None,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        augment: bool = False,
        views: int = 1,
    ) -> None:
        super().__init__()
        if dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
        if label_noise not in ("none", "permute"):
            raise ValueError(f"label_noise must be 'none' or 'permute', got {label_noise!r}")
        if not isinstance(views, int) or views < 1:
            raise ValueError(f"views must be a positive integer (1, or 2 for SimCLR), got {views!r}")
        self.save_hyperparameters()
        self.dataset = dataset
        self.root = Path(root).expanduser()
        self.image_size = image_size
        self.in_chans = in_chans
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.download = download
        self.label_noise = label_noise
        self.seed = seed
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.augment = augment
        self.views = views
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None

    # -- facts the model needs before setup ------------------------------------------
    @property
    def num_classes(self) -> int:
        if self.dataset == "imagefolder":
            return len(self._folder_classes())
        return 10

    def _folder_classes(self) -> list[str]:
        base = self.root / "train" if (self.root / "train").is_dir() else self.root
        if not base.is_dir():
            raise DatasetFilesNotFoundError(
                f"image folder {base} not found: expected {self.root}/<class>/<image> or "
                f"{self.root}/train/<class>/<image> with {self.root}/val/<class>/<image>"
            )
        classes = sorted(d.name for d in base.iterdir() if d.is_dir())
        if not classes:
            raise DatasetFilesNotFoundError(f"no class folders in {base}")
        return classes

    def label_seed(self) -> int:
        if self.seed is not None:
            return int(self.seed)
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    # -- building ----------------------------------------------------------------------
    def _transform(self, train: bool) -> Callable:
        mean, std = STATS[self.dataset]
        if train and self.views > 1:
            view = contrastive_transform(self.dataset, self.image_size, self.in_chans, mean, std)
            return MultiView(view, self.views)
        return image_transform(self.image_size, self.in_chans, mean, std, augment=self.augment and train)

    def _build(self) -> tuple[Dataset, Dataset]:
        builder = getattr(self, f"_build_{self.dataset}")
        return builder()

    def _build_digits(self) -> tuple[Dataset, Dataset]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        train_idx, val_idx = seeded_split(len(images), self.val_fraction, self.split_seed)
        labels = digits.target
        train = TensorImageDataset(images[train_idx], labels[train_idx], self._transform(True))
        val = TensorImageDataset(images[val_idx], labels[val_idx], self._transform(False))
        return train, val

    def _build_mnist(self) -> tuple[Dataset, Dataset]:
        from torchvision.datasets import MNIST

        folder = self.root / "MNIST" / "raw"
        files = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
        how = ("These are the four MNIST idx files, unpacked (gunzip) from the official "
               "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz.")
        out = []
        for train in (True, False):
            try:
                out.append(MNIST(root=str(self.root), train=train, download=self.download,
                                 transform=self._transform(train)))
            except RuntimeError as err:  # torchvision: "Dataset not found"
                raise missing_error("MNIST", folder, files, how) from err
            except OSError as err:
                if not self.download:
                    raise
                raise missing_error("MNIST", folder, files, f"{how}\nThe download failed ({err}).") from err
        return out[0], out[1]

    def _build_cifar10(self) -> tuple[Dataset, Dataset]:
        return tuple(read_cifar10(self.root, train, self._transform(train), self.download) for train in (True, False))

    def _build_stl10(self) -> tuple[Dataset, Dataset]:
        return tuple(read_stl10(self.root, train, self._transform(train), self.download) for train in (True, False))

    def _build_imagefolder(self) -> tuple[Dataset, Dataset]:
        from torchvision.datasets import ImageFolder

        classes = self._folder_classes()
        if (self.root / "train").is_dir() and (self.root / "val").is_dir():
            train = ImageFolder(str(self.root / "train"), transform=self._transform(True))
            val = ImageFolder(str(self.root / "val"), transform=self._transform(False))
            if val.classes != classes:
                raise ValueError(f"{self.root}/val has classes {val.classes}, {self.root}/train has {classes}")
            return train, val
        train_full = ImageFolder(str(self.root), transform=self._transform(True))
        val_full = ImageFolder(str(self.root), transform=self._transform(False))
        train_idx, val_idx = seeded_split(len(train_full), self.val_fraction, self.split_seed)
        return Subset(train_full, train_idx.tolist()), Subset(val_full, val_idx.tolist())

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        train, val = self._build()
        if self.label_noise == "permute":
            train = RelabeledDataset(train, permuted_labels(targets(train), self.label_seed()))
        self.train_dataset, self.val_dataset = train, val

    def prepare_data(self) -> None:
        # torchvision downloads inside the constructors; doing it once here on rank 0
        # keeps DDP ranks from downloading concurrently.
        if self.download and self.dataset in ("mnist", "cifar10", "stl10"):
            self._build()

    def _loader(self, ds: Dataset | None, shuffle: bool) -> DataLoader:
        if ds is None:
            self.setup()
            ds = self.train_dataset if shuffle else self.val_dataset
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def eval_train_dataloader(self) -> DataLoader:
        """The training split (its labels, permuted or not) with the validation transform, in order.

        What a linear probe on frozen features trains on: one un-augmented view per image.
        """
        if self.train_dataset is None:
            self.setup()
        return DataLoader(with_transform(self.train_dataset, self._transform(False)), batch_size=self.batch_size,
                          shuffle=False, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """The validation split (for MNIST/CIFAR-10/STL-10 it is the official test split)."""
        return self._loader(self.val_dataset, shuffle=False)
