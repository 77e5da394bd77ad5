"""Parity with the reference package dse-dsmi 1.1 in float64 (the numerical oracle)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import dse_monitor as dm
from dse_monitor.functional.subset_grams import SharedGrams

TOL = 1e-8


def make_data(kind: str, n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "isotropic":
        return rng.normal(size=(n, d))
    if kind == "clustered":
        centers = rng.normal(scale=8.0, size=(5, d))
        return centers[rng.integers(0, 5, n)] + rng.normal(scale=0.5, size=(n, d))
    if kind == "manifold":  # a noisy circle embedded in d dimensions
        theta = rng.uniform(0, 2 * np.pi, n)
        base = np.stack([np.cos(theta), np.sin(theta)], 1) * 10
        rot = np.linalg.qr(rng.normal(size=(d, d)))[0][:2]
        return base @ rot + rng.normal(scale=0.1, size=(n, d))
    if kind == "uniform":
        return rng.uniform(0, 1, size=(n, d))
    raise ValueError(kind)


CASES = [
    # kind, n, d, sigma, t, seed
    ("isotropic", 200, 16, 10.0, 1, 0),
    ("isotropic", 150, 64, 5.0, 2, 1),
    ("isotropic", 120, 3, 1.0, 3, 2),
    ("clustered", 250, 32, 10.0, 1, 3),
    ("clustered", 180, 8, 3.0, 2, 4),
    ("manifold", 220, 20, 2.0, 1, 5),
    ("manifold", 160, 10, 0.5, 3, 6),
    ("uniform", 300, 256, 10.0, 1, 7),
    ("uniform", 100, 5, 0.05, 1, 8),
    ("clustered", 90, 100, 50.0, 2, 9),
]


@pytest.mark.parametrize("kind,n,d,sigma,t,seed", CASES)
def test_dse_matches_reference(ref, kind, n, d, sigma, t, seed):
    z = make_data(kind, n, d, seed)
    expected = ref[0].diffusion_spectral_entropy(z, gaussian_kernel_sigma=sigma, t=t)
    got = dm.diffusion_spectral_entropy(z, sigma=sigma, t=t)
    assert got.dtype == torch.float64 and got.ndim == 0
    assert abs(float(got) - expected) < TOL


def test_dse_subsample_above_max_n_matches_reference(ref):
    z = make_data("clustered", 400, 8, 11)
    expected = ref[0].diffusion_spectral_entropy(z, gaussian_kernel_sigma=4.0, max_N=150, random_seed=3)
    got = dm.diffusion_spectral_entropy(z, sigma=4.0, max_n=150, seed=3)
    assert abs(float(got) - expected) < TOL
    # and the subsample matters: the full set gives another value
    assert abs(float(dm.diffusion_spectral_entropy(z, sigma=4.0, max_n=None)) - expected) > 1e-3


@pytest.mark.parametrize("kind,n,d,bins,seed", [("isotropic", 200, 4, 2, 0), ("clustered", 300, 3, 3, 1),
                                                  ("uniform", 250, 40, 2, 2), ("manifold", 150, 2, 5, 3)])
def test_cse_matches_reference(ref, kind, n, d, bins, seed):
    z = make_data(kind, n, d, seed)
    expected = ref[0].diffusion_spectral_entropy(z, classic_shannon_entropy=True, num_bins_per_dim=bins)
    assert abs(float(dm.classic_shannon_entropy(z, bins)) - expected) < TOL


def test_cse_with_constant_column_matches_reference(ref):
    z = make_data("isotropic", 100, 3, 0)
    z[:, 1] = 4.0
    expected = ref[0].diffusion_spectral_entropy(z, classic_shannon_entropy=True)
    assert abs(float(dm.classic_shannon_entropy(z)) - expected) < TOL


@pytest.mark.parametrize("kwargs", [dict(), dict(anisotropic=True), dict(knn=5), dict(knn=1)])
@pytest.mark.parametrize("kind,seed", [("clustered", 0), ("manifold", 1), ("isotropic", 2)])
def test_adjacency_entropy_matches_reference(ref, kwargs, kind, seed):
    z = make_data(kind, 120, 6, seed)
    expected = ref[0].adjacency_spectral_entropy(
        z, gaussian_kernel_sigma=3.0, anisotropic=kwargs.get("anisotropic", False),
        use_knn="knn" in kwargs, knn=kwargs.get("knn", 10))
    assert abs(float(dm.adjacency_spectral_entropy(z, sigma=3.0, **kwargs)) - expected) < TOL


@pytest.mark.parametrize("kind,sigma,seed", [("clustered", 3.0, 0), ("isotropic", 10.0, 1), ("manifold", 1.0, 2)])
def test_matrix_entry_entropy_matches_reference(ref, kind, sigma, seed):
    z = make_data(kind, 100, 5, seed)
    expected = ref[0].diffusion_spectral_entropy(z, gaussian_kernel_sigma=sigma, matrix_entry_entropy=True)
    assert abs(float(dm.matrix_entry_entropy(z, sigma=sigma)) - expected) < TOL


@pytest.mark.parametrize("kind,n,d,classes,sigma,t,reps,seed", [
    ("clustered", 300, 16, 5, 10.0, 1, 5, 0),
    ("isotropic", 240, 8, 3, 3.0, 2, 3, 1),
    ("manifold", 200, 12, 4, 2.0, 1, 2, 7),
    ("uniform", 150, 30, 10, 1.0, 3, 5, 3),
])
def test_dsmi_labels_matches_reference_draw_for_draw(ref, kind, n, d, classes, sigma, t, reps, seed):
    z = make_data(kind, n, d, seed)
    y = np.random.default_rng(seed + 100).integers(0, classes, n)
    expected, clusters = ref[1].diffusion_spectral_mutual_information(
        z, y, gaussian_kernel_sigma=sigma, t=t, num_repetitions=reps, random_seed=seed)
    terms = dm.diffusion_spectral_mutual_information_terms(
        z, y, sigma=sigma, t=t, num_repetitions=reps, seed=seed)
    got = terms.value
    assert abs(float(got) - expected) < TOL
    # The conditional term, group by group, equals the reference's DSE of that group.
    for gid, cond in zip(terms.group_ids.tolist(), terms.conditional):
        h = ref[0].diffusion_spectral_entropy(z[y == gid], gaussian_kernel_sigma=sigma, t=t)
        assert abs(float(cond) - h) < TOL
    assert torch.allclose(terms.weights.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_dsmi_kept_draws_follow_the_seed_and_the_sizes(ref):
    # The draws are kept for the process: alternating seeds and sizes must still be the reference's.
    for n, seed in ((120, 0), (120, 1), (130, 0), (120, 0)):
        z = make_data("clustered", n, 6, 2)
        y = np.random.default_rng(5).integers(0, 3, n)
        expected, _ = ref[1].diffusion_spectral_mutual_information(z, y, gaussian_kernel_sigma=4.0, random_seed=seed)
        assert abs(float(dm.diffusion_spectral_mutual_information(z, y, sigma=4.0, seed=seed)) - expected) < TOL


@pytest.mark.parametrize("dtype, tol", [(torch.float64, TOL), (torch.float32, 1e-4)])
def test_dsmi_with_grams_built_on_earlier_draws_matches_reference(ref, dtype, tol, monkeypatch):
    # groups of about 200: their draws are built on one another's Gram (see test_subset_grams)
    built = []
    dependent_kernel = SharedGrams._dependent_kernel

    def counted(self, subset, base):
        k = dependent_kernel(self, subset, base)
        built.append(k is not None)
        return k

    monkeypatch.setattr(SharedGrams, "_dependent_kernel", counted)
    z = make_data("clustered", 600, 16, 8)
    y = np.random.default_rng(9).integers(0, 3, 600)
    expected, _ = ref[1].diffusion_spectral_mutual_information(z, y, gaussian_kernel_sigma=12.0)
    assert abs(float(dm.diffusion_spectral_mutual_information(z, y, sigma=12.0, dtype=dtype)) - expected) < tol
    assert sum(built) >= 5  # the shared path ran (max ||b||^2 is 11 here, inside float32's range too)


def test_dsmi_equal_sized_groups_share_draws_like_reference(ref):
    z = make_data("clustered", 200, 6, 5)
    y = np.repeat(np.arange(4), 50)  # four groups of the same size
    expected, _ = ref[1].diffusion_spectral_mutual_information(z, y, gaussian_kernel_sigma=4.0)
    terms = dm.diffusion_spectral_mutual_information_terms(z, y, sigma=4.0)
    got = terms.value
    assert abs(float(got) - expected) < TOL
    assert torch.equal(terms.unconditional_draws[0], terms.unconditional_draws[3])


def test_dsmi_continuous_scalar_reference_matches(ref):
    z = make_data("manifold", 200, 4, 3)
    s = np.random.default_rng(0).uniform(-1, 1, (200, 1))
    expected, clusters = ref[1].diffusion_spectral_mutual_information(z, s, gaussian_kernel_sigma=2.0, n_clusters=4)
    groups = dm.reference_groups(s, n_clusters=4)
    assert np.array_equal(groups.numpy(), clusters.reshape(-1))
    got = dm.diffusion_spectral_mutual_information(z, s, sigma=2.0, n_clusters=4)
    assert abs(float(got) - expected) < TOL


def test_dsmi_vectors_reproduce_reference_clusters_and_value(ref):
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.normal(loc=c, size=(60, 30)) for c in (0, 6, 12)])  # inputs
    z = x[:, :5] * 2 + rng.normal(size=(180, 5))  # representations
    expected, clusters = ref[1].diffusion_spectral_mutual_information(z, x, gaussian_kernel_sigma=5.0, n_clusters=3)
    groups = dm.reference_groups(x, n_clusters=3)
    assert np.array_equal(groups.numpy(), clusters)
    got = dm.diffusion_spectral_mutual_information(z, groups=groups, sigma=5.0)
    assert abs(float(got) - expected) < TOL


def test_csmi_matches_reference(ref):
    z = make_data("clustered", 250, 4, 2)
    y = np.random.default_rng(2).integers(0, 4, 250)
    expected, _ = ref[1].diffusion_spectral_mutual_information(z, y, classic_shannon_entropy=True)
    assert abs(float(dm.classic_shannon_mutual_information(z, y)) - expected) < TOL


def test_dsmi_single_member_group_contributes_zero(ref):
    z = make_data("isotropic", 60, 4, 0)
    y = np.zeros(60, dtype=int)
    y[:30] = 1
    y[0] = 2  # a group of one
    expected, _ = ref[1].diffusion_spectral_mutual_information(z, y, gaussian_kernel_sigma=2.0)
    terms = dm.diffusion_spectral_mutual_information_terms(z, y, sigma=2.0)
    got = terms.value
    assert abs(float(got) - expected) < TOL
    single = terms.group_ids.tolist().index(2)
    assert float(terms.conditional[single]) == 0.0 and float(terms.unconditional[single]) == 0.0


def test_knn_adjacency_with_duplicate_rows_matches_reference(ref):
    z = make_data("isotropic", 40, 5, 12)
    z = np.concatenate([z, z[:15]])  # duplicates make the k-th distance a tie
    for k in (1, 3):
        expected = ref[0].adjacency_spectral_entropy(z, use_knn=True, knn=k)
        assert abs(float(dm.adjacency_spectral_entropy(z, knn=k)) - expected) < TOL


def test_non_integer_discrete_labels_are_grouped_by_value_like_reference(ref):
    z = make_data("clustered", 120, 4, 13)
    labels = np.repeat([0.0, 0.5, 1.0, 1.5], 30)
    expected, _ = ref[1].diffusion_spectral_mutual_information(z, labels, reference_discrete=True, gaussian_kernel_sigma=2.0)
    groups = dm.reference_groups(labels, reference_discrete=True)
    assert len(set(groups.tolist())) == 4
    got = dm.diffusion_spectral_mutual_information(z, labels, reference_discrete=True, sigma=2.0)
    assert abs(float(got) - expected) < TOL


@pytest.mark.parametrize("seed", [0, 3])
def test_dsmi_with_subsampled_groups_matches_reference_for_any_seed(ref, seed, monkeypatch):
    # Groups and draws larger than max_n are subsampled inside the reference's DSE with its
    # default seed 0, whatever random_seed the caller gave.
    z = make_data("clustered", 300, 5, 14)
    y = np.random.default_rng(14).integers(0, 3, 300)
    defaults = list(ref[0].diffusion_spectral_entropy.__defaults__)
    defaults[2] = 50  # the reference's max_N, lowered so that the case is small
    monkeypatch.setattr(ref[0].diffusion_spectral_entropy, "__defaults__", tuple(defaults))
    expected, _ = ref[1].diffusion_spectral_mutual_information(z, y, gaussian_kernel_sigma=3.0, random_seed=seed)
    got = dm.diffusion_spectral_mutual_information(z, y, sigma=3.0, seed=seed, max_n=50)
    assert abs(float(got) - expected) < TOL


def test_cse_and_csmi_subsample_above_max_n_like_reference(ref):
    z = make_data("isotropic", 400, 12, 15)
    expected = ref[0].diffusion_spectral_entropy(z, classic_shannon_entropy=True, max_N=150)
    assert abs(float(dm.classic_shannon_entropy(z, max_n=150)) - expected) < TOL
