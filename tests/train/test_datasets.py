"""ImageDataModule on the real on-disk formats, written here in miniature: MNIST idx-ubyte
files, CIFAR-10 python pickle batches, STL-10 binaries and an ImageFolder tree of PNGs;
plus the embedded digits and the permuted-label condition. Nothing is downloaded."""
from __future__ import annotations

import pickle
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from dse_monitor.train.data import DatasetFilesNotFoundError, ImageDataModule, permuted_labels


def _all(ds):
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(xs), np.array(ys)


def _unnormalise(x, mean, std):
    return x * std + mean


# ----------------------------------------------------------------------------- digits
def test_digits_split_is_fixed_and_shapes_follow_the_model():
    a = ImageDataModule("digits", image_size=20, in_chans=3, batch_size=64, seed=1)
    b = ImageDataModule("digits", image_size=20, in_chans=1, batch_size=64, seed=2)
    a.setup("fit")
    b.setup("fit")
    assert len(a.train_dataset) + len(a.val_dataset) == 1797 and len(a.val_dataset) == 359
    xa, ya = _all(a.val_dataset)
    xb, yb = _all(b.val_dataset)
    assert xa.shape == (359, 3, 20, 20) and xb.shape == (359, 1, 20, 20)
    assert np.array_equal(ya, yb)  # the split ignores the run seed: every run probes the same images
    assert torch.equal(xa[:, 0], xa[:, 2]) and torch.allclose(xa[:, :1], xb)  # grey repeated to 3 channels
    batch = next(iter(a.train_dataloader()))
    assert batch[0].shape == (64, 3, 20, 20) and batch[1].dtype == torch.int64


def test_permuted_labels_train_only_seeded_and_class_counts_kept():
    clean = ImageDataModule("digits", image_size=8, label_noise="none")
    noisy1 = ImageDataModule("digits", image_size=8, label_noise="permute", seed=1)
    noisy1b = ImageDataModule("digits", image_size=8, label_noise="permute", seed=1)
    noisy2 = ImageDataModule("digits", image_size=8, label_noise="permute", seed=2)
    for dm in (clean, noisy1, noisy1b, noisy2):
        dm.setup("fit")
    y_clean = np.array(clean.train_dataset.targets)
    y1, y1b, y2 = (np.array(d.train_dataset.targets) for d in (noisy1, noisy1b, noisy2))
    assert np.array_equal(np.sort(y1), np.sort(y_clean))  # same class counts
    assert (y1 == y_clean).mean() < 0.2  # the image-label link is gone (chance ~ 0.1)
    assert np.array_equal(y1, y1b) and not np.array_equal(y1, y2)
    assert np.array_equal(y1, permuted_labels(y_clean, 1))
    # images untouched, validation labels clean
    assert torch.equal(noisy1.train_dataset[5][0], clean.train_dataset[5][0])
    assert noisy1.val_dataset.targets == clean.val_dataset.targets


def test_permute_seed_defaults_to_the_global_seed(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")  # what lightning's seed_everything(7) sets
    dm = ImageDataModule("digits", image_size=8, label_noise="permute")
    assert dm.label_seed() == 7


def test_bad_arguments_fail_early():
    with pytest.raises(ValueError, match="dataset must be one of"):
        ImageDataModule("imagenet")
    with pytest.raises(ValueError, match="label_noise"):
        ImageDataModule("digits", label_noise="shuffle")


# ------------------------------------------------------------------------------ MNIST
def _write_idx_images(path: Path, images: np.ndarray) -> None:
    n, h, w = images.shape
    path.write_bytes(struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes())


def _write_idx_labels(path: Path, labels: np.ndarray) -> None:
    path.write_bytes(struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes())


def _mnist(root: Path, n_train=12, n_test=6) -> tuple[np.ndarray, np.ndarray]:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    _write_idx_images(raw / "train-images-idx3-ubyte", train)
    _write_idx_labels(raw / "train-labels-idx1-ubyte", np.arange(n_train) % 10)
    _write_idx_images(raw / "t10k-images-idx3-ubyte", test)
    _write_idx_labels(raw / "t10k-labels-idx1-ubyte", (np.arange(n_test) + 3) % 10)
    return train, test


def test_mnist_idx_files_are_read_and_repeated_to_three_channels(tmp_path):
    train, test = _mnist(tmp_path)
    dm = ImageDataModule("mnist", root=str(tmp_path), image_size=28, in_chans=3, batch_size=4)
    dm.setup("fit")
    x, y = _all(dm.val_dataset)
    assert x.shape == (6, 3, 28, 28) and y.tolist() == [3, 4, 5, 6, 7, 8]
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    pixels = _unnormalise(x[:, 0], 0.1307, 0.3081) * 255
    assert torch.allclose(pixels, torch.as_tensor(test, dtype=torch.float32), atol=1e-3)
    assert len(dm.train_dataset) == 12 and dm.num_classes == 10
    dm224 = ImageDataModule("mnist", root=str(tmp_path), image_size=64, in_chans=3)
    dm224.setup()
    assert dm224.train_dataset[0][0].shape == (3, 64, 64)


def test_mnist_missing_files_name_what_to_place_where(tmp_path):
    _mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    dm = ImageDataModule("mnist", root=str(tmp_path))
    with pytest.raises(DatasetFilesNotFoundError) as err:
        dm.setup("fit")
    msg = str(err.value)
    assert str(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte") + "   <- missing" in msg
    assert "train-images-idx3-ubyte   <- missing" not in msg
    assert "--data.download true" in msg
    with pytest.raises(DatasetFilesNotFoundError, match="MNIST files not found"):
        ImageDataModule("mnist", root=str(tmp_path / "empty")).setup()


# --------------------------------------------------------------------------- CIFAR-10
def _cifar_batch(n: int, offset: int) -> dict:
    imgs = np.zeros((n, 3, 32, 32), dtype=np.uint8)
    rows = np.arange(32, dtype=np.uint8)[:, None]
    cols = np.arange(32, dtype=np.uint8)[None, :]
    for i in range(n):
        imgs[i, 0] = rows * 4 + i          # red varies with the row
        imgs[i, 1] = cols * 4              # green with the column
        imgs[i, 2] = 7 + offset            # blue constant per batch
    return {"batch_label": f"batch {offset}", "labels": [(offset + i) % 10 for i in range(n)],
            "data": imgs.reshape(n, 3072), "filenames": [f"img{offset}_{i}.png" for i in range(n)]}


def _cifar(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for k in range(1, 6):
        with open(folder / f"data_batch_{k}", "wb") as f:
            pickle.dump(_cifar_batch(3, k), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(_cifar_batch(4, 0), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"], "num_cases_per_batch": 3, "num_vis": 3072}, f)
    return folder


def test_cifar10_pickle_batches_are_read_with_a_warning_that_they_are_not_the_official_files(tmp_path):
    _cifar(tmp_path)
    dm = ImageDataModule("cifar10", root=str(tmp_path), image_size=32, in_chans=3, batch_size=2)
    with pytest.warns(UserWarning, match="differ from the official release"):
        dm.setup("fit")
    assert len(dm.train_dataset) == 15 and len(dm.val_dataset) == 4
    x, y = _all(dm.val_dataset)
    assert y.tolist() == [0, 1, 2, 3]
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)
    px = _unnormalise(x[1], mean, std) * 255
    rows = torch.arange(32, dtype=torch.float32)
    assert torch.allclose(px[0, :, 5], rows * 4 + 1, atol=1e-3)  # orientation: red follows rows
    assert torch.allclose(px[1, 5, :], rows * 4, atol=1e-3)      # green follows columns
    assert torch.allclose(px[2], torch.full((32, 32), 7.0), atol=1e-3)
    _, y_train = _all(dm.train_dataset)
    assert y_train.tolist()[:3] == [1, 2, 3]  # data_batch_1 first


def test_cifar10_missing_or_broken_batch_is_a_clear_error(tmp_path):
    folder = _cifar(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetFilesNotFoundError) as err:
        ImageDataModule("cifar10", root=str(tmp_path)).setup()
    assert "data_batch_3   <- missing" in str(err.value)
    assert "cifar-10-python.tar.gz" in str(err.value)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DatasetFilesNotFoundError, match="present but not readable"):
        ImageDataModule("cifar10", root=str(tmp_path)).setup()


# ----------------------------------------------------------------------------- STL-10
def _stl(root: Path, n_train=4, n_test=3) -> Path:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        imgs = np.zeros((n, 3, 96, 96), dtype=np.uint8)
        imgs[:, 0] = np.arange(96, dtype=np.uint8)[:, None]  # red = row index
        imgs[:, 1] = np.arange(96, dtype=np.uint8)[None, :]  # green = column index
        imgs[:, 2] = np.arange(n, dtype=np.uint8)[:, None, None] * 10
        # STL-10 stores every image column-major: [n, 3, col, row]
        (folder / f"{split}_X.bin").write_bytes(imgs.transpose(0, 1, 3, 2).tobytes())
        (folder / f"{split}_y.bin").write_bytes((np.arange(n) % 10 + 1).astype(np.uint8).tobytes())  # 1-based
    return folder


def test_stl10_binaries_are_read_in_the_right_orientation_without_unlabeled(tmp_path):
    _stl(tmp_path)
    dm = ImageDataModule("stl10", root=str(tmp_path), image_size=96)
    with pytest.warns(UserWarning, match="differ from the official release"):
        dm.setup("fit")
    x, y = _all(dm.val_dataset)
    assert x.shape == (3, 3, 96, 96) and y.tolist() == [0, 1, 2]
    mean = torch.tensor([0.4467, 0.4398, 0.4066]).view(3, 1, 1)
    std = torch.tensor([0.2603, 0.2566, 0.2713]).view(3, 1, 1)
    px = _unnormalise(x[2], mean, std) * 255
    idx = torch.arange(96, dtype=torch.float32)
    assert torch.allclose(px[0, :, 40], idx, atol=1e-3) and torch.allclose(px[1, 40, :], idx, atol=1e-3)
    assert torch.allclose(px[2], torch.full((96, 96), 20.0), atol=1e-3)
    assert len(dm.train_dataset) == 4
    small = ImageDataModule("stl10", root=str(tmp_path), image_size=32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small.setup()
    assert small.val_dataset[0][0].shape == (3, 32, 32)


def test_stl10_inconsistent_files_are_a_clear_error(tmp_path):
    folder = _stl(tmp_path)
    (folder / "test_y.bin").write_bytes(b"\x01\x02")  # 2 labels for 3 images
    with pytest.raises(DatasetFilesNotFoundError, match="stl10_binary.tar.gz"):
        ImageDataModule("stl10", root=str(tmp_path)).setup()


# ------------------------------------------------------------------------ ImageFolder
def _png_tree(base: Path, per_class: int, classes=("cat", "dog", "emu")) -> None:
    from PIL import Image

    for c, name in enumerate(classes):
        (base / name).mkdir(parents=True)
        for i in range(per_class):
            arr = np.full((10, 12, 3), 40 * c + i, dtype=np.uint8)
            Image.fromarray(arr).save(base / name / f"{i}.png")


def test_imagefolder_with_train_and_val_folders(tmp_path):
    _png_tree(tmp_path / "train", 4)
    _png_tree(tmp_path / "val", 2)
    dm = ImageDataModule("imagefolder", root=str(tmp_path), image_size=16, in_chans=3)
    assert dm.num_classes == 3  # known before setup, for the model
    dm.setup()
    x, y = _all(dm.val_dataset)
    assert x.shape == (6, 3, 16, 16) and y.tolist() == [0, 0, 1, 1, 2, 2]
    assert len(dm.train_dataset) == 12


def test_imagefolder_single_tree_is_split_with_a_fixed_seed(tmp_path):
    _png_tree(tmp_path, 5, classes=("a", "b"))
    dm = ImageDataModule("imagefolder", root=str(tmp_path), image_size=8, val_fraction=0.3)
    dm.setup()
    assert len(dm.train_dataset) == 7 and len(dm.val_dataset) == 3 and dm.num_classes == 2
    again = ImageDataModule("imagefolder", root=str(tmp_path), image_size=8, val_fraction=0.3)
    again.setup()
    assert again.val_dataset.indices == dm.val_dataset.indices
    with pytest.raises(DatasetFilesNotFoundError, match="not found"):
        ImageDataModule("imagefolder", root=str(tmp_path / "nowhere")).num_classes


def test_two_views_are_independent_augmentations_and_the_eval_train_loader_is_plain():
    dm = ImageDataModule("digits", image_size=24, in_chans=3, views=2, label_noise="permute", seed=1)
    dm.setup("fit")
    views, label = dm.train_dataset[0]
    assert views.shape == (2, 3, 24, 24) and not torch.allclose(views[0], views[1])
    plain = ImageDataModule("digits", image_size=24, in_chans=3)
    plain.setup("fit")
    x, y = next(iter(dm.eval_train_dataloader()))
    x_clean = torch.stack([plain.train_dataset[i][0] for i in range(len(x))])
    assert torch.equal(x, x_clean)  # the same images, without augmentation, in order
    assert y.tolist() == dm.train_dataset.targets[:len(y)]  # ... with the run's (permuted) labels
    with pytest.raises(ValueError, match="views must be a positive integer"):
        ImageDataModule("digits", views=0)
