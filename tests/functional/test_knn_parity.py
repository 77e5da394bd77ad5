"""Density normalisation and the kNN kernel against manylatents 0.1.8, value for value.

The oracle is manylatents' own code (``tests/functional/manylatents_oracle.py`` says how it is
loaded): ``DiffusionSpectralEntropy`` end to end, neighbours by its ``compute_knn`` (scikit-learn,
exact). ``compute_knn`` rounds the features to float32, so every input here is float32 data
(the features of a network are), held in float64: both sides then see the same points.
Exact duplicate rows are dropped from the network's features (14 of 300 at init): a duplicate
makes distances tie exactly, and manylatents breaks a tie at the k-th neighbour in
scikit-learn's order, here by index (``test_knn_kernel`` checks that rule).
"""
from __future__ import annotations

import lightning.pytorch as L
import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from dse_monitor.functional import diffusion_eigenvalues, diffusion_spectral_entropy, median_pairwise_distance
from dse_monitor.train.data import ImageDataModule
from dse_monitor.train.model import ImageClassifier

from manylatents_oracle import load

TOL = 1e-8


@pytest.fixture(scope="module")
def oracle():
    return load()


def _float32_points(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def _synthetic() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((6, 24)) * 4
    return {
        "gaussian": _float32_points(rng.standard_normal((400, 24))),
        "clusters": _float32_points(centres[rng.integers(0, 6, 400)] + rng.standard_normal((400, 24))),
    }


def _digits_features() -> dict[str, np.ndarray]:
    """Penultimate features of the embedded default's model on 300 validation digits: at init and after 8 steps."""
    L.seed_everything(1)
    data = ImageDataModule("digits", image_size=24, batch_size=128)
    model = ImageClassifier("resnet18", num_classes=10, lr=1e-3, warmup_epochs=0,
                            backbone_kwargs={"channels": [32, 64, 128, 256], "stem_width": 32})
    data.setup("fit")
    x = torch.stack([data.val_dataset[i][0] for i in range(300)])

    def features() -> np.ndarray:
        model.eval()
        with torch.no_grad():
            z = model.backbone.forward_head(model.backbone.forward_features(x), pre_logits=True).numpy()
        _, first = np.unique(z, axis=0, return_index=True)
        return _float32_points(z[np.sort(first)])

    init = features()
    trainer = L.Trainer(max_epochs=1, limit_train_batches=8, limit_val_batches=0, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    trainer.fit(model, datamodule=data)
    return {"digits-init": init, "digits-trained": features()}


@pytest.fixture(scope="module")
def features() -> dict[str, np.ndarray]:
    return {**_synthetic(), **_digits_features()}


NAMES = ["gaussian", "clusters", "digits-init", "digits-trained"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_dense_alpha_matches_manylatents(oracle, features, name, alpha):
    z = features[name]
    sigma = median_pairwise_distance(z) / 2  # where the value is informative, far from 0 and log2 N
    for t in (1, 3):
        ours = float(diffusion_spectral_entropy(z, sigma, t, alpha=alpha))
        ref = float(oracle.dse(z, t=t, kernel="dense", gaussian_kernel_sigma=sigma, alpha=alpha))
        assert abs(ours - ref) < TOL, (name, alpha, t, ours, ref)
    assert 0.1 < ours < np.log2(len(z)) - 0.5
    # alpha changes the value (the parameter reaches the kernel)
    assert abs(ours - float(diffusion_spectral_entropy(z, sigma, 3))) > 1e-4


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("k", [10, 15])
def test_knn_kernel_matches_manylatents(oracle, features, name, k):
    z = features[name]
    for alpha in (0.0, 1.0):
        for t in (1, 3):
            ours = float(diffusion_spectral_entropy(z, t=t, kernel="knn", k=k, alpha=alpha))
            ref = float(oracle.dse(z, t=t, kernel="knn", k=k, alpha=alpha))
            assert abs(ours - ref) < TOL, (name, k, alpha, t, ours, ref)


def test_knn_defaults_are_manylatents_defaults(oracle, features):
    z = features["digits-trained"]
    ours = float(diffusion_spectral_entropy(z, t=3, kernel="knn", alpha=1.0))
    assert abs(ours - float(oracle.dse(z))) < TOL  # its defaults: kNN, k = 15, alpha = 1, t = 3


def test_knn_spectrum_is_manylatents_operator(oracle, features):
    # compute_knn's scikit-learn search runs on float32 and returns float32 distances (relative
    # error ~1e-7); with float64 neighbours the two operators agree to rounding
    z = features["clusters"]
    d, i = NearestNeighbors(n_neighbors=16, algorithm="brute").fit(z).kneighbors(z)
    ref = np.sort(np.linalg.eigvalsh(oracle.knn_matrix(d, i, alpha=1.0)))[::-1]
    ours = diffusion_eigenvalues(z, kernel="knn", k=15, alpha=1.0).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    assert ours.min() < -0.05  # the kNN operator is indefinite: DSE takes |lambda|
