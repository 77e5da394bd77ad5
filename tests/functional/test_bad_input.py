"""Bad input gets a ValueError that names the problem (never a hang or a silent NaN)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import dse_monitor as dm

Z = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))
Y = torch.arange(20) % 2

ENTROPIES = [
    dm.diffusion_spectral_entropy,
    dm.diffusion_eigenvalues,
    dm.classic_shannon_entropy,
    dm.adjacency_spectral_entropy,
    dm.matrix_entry_entropy,
]
MUTUAL = [dm.diffusion_spectral_mutual_information, dm.classic_shannon_mutual_information]


@pytest.mark.parametrize("fn", ENTROPIES + MUTUAL)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_rows_are_named(fn, bad):
    z = Z.clone()
    z[3, 1] = bad
    z[7, 0] = bad
    args = (z, Y) if fn in MUTUAL else (z,)
    with pytest.raises(ValueError, match=r"2 row\(s\) with NaN or Inf \(rows 3, 7\)"):
        fn(*args)


def test_huge_finite_values_are_not_mistaken_for_inf():
    # The finiteness check sums the matrix first; a sum that overflows must not be taken for an Inf entry.
    from dse_monitor.functional._checks import check_features

    z = torch.full((6, 3), 1e308, dtype=torch.float64)
    assert not math.isfinite(float(z.sum()))
    assert check_features(z) is z
    z[4, 2] = float("inf")
    with pytest.raises(ValueError, match=r"1 row\(s\) with NaN or Inf \(rows 4\)"):
        check_features(z)


@pytest.mark.parametrize("fn", ENTROPIES)
@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), ()])
def test_wrong_number_of_dimensions(fn, shape):
    with pytest.raises(ValueError, match=r"shape \[N, D\]"):
        fn(torch.zeros(shape))


@pytest.mark.parametrize("fn", ENTROPIES)
def test_empty_set(fn):
    with pytest.raises(ValueError, match="empty"):
        fn(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="no features"):
        fn(np.zeros((4, 0)))


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan"), float("inf"), "silverman"])
def test_bad_sigma(sigma):
    with pytest.raises(ValueError, match="sigma"):
        dm.diffusion_spectral_entropy(Z, sigma=sigma)
    with pytest.raises(ValueError, match="sigma"):
        dm.diffusion_spectral_mutual_information(Z, Y, sigma=sigma)


@pytest.mark.parametrize("t", [0, -1, float("nan")])
def test_bad_t(t):
    with pytest.raises(ValueError, match="t must be"):
        dm.diffusion_spectral_entropy(Z, t=t)
    with pytest.raises(ValueError, match="t must be"):
        dm.diffusion_spectral_mutual_information(Z, Y, t=t)


@pytest.mark.parametrize("fn", MUTUAL)
def test_reference_length_mismatch_raises(fn):
    with pytest.raises(ValueError, match="reference has 19 entries but z has 20 rows"):
        fn(Z, Y[:19])
    with pytest.raises(ValueError, match="groups has 21 entries but z has 20 rows"):
        fn(Z, groups=torch.zeros(21, dtype=torch.long))
    with pytest.raises(ValueError, match="pass a reference"):
        fn(Z)


def test_bad_repetitions_and_clusters():
    with pytest.raises(ValueError, match="num_repetitions"):
        dm.diffusion_spectral_mutual_information(Z, Y, num_repetitions=0)
    with pytest.raises(ValueError, match="n_clusters"):
        dm.reference_groups(torch.randn(20, 4), n_clusters=0)
    with pytest.raises(ValueError, match="needs more than 25 samples"):
        dm.reference_groups(torch.randn(20, 4), n_clusters=25)
    with pytest.raises(ValueError, match="reference_discrete=True needs one label"):
        dm.reference_groups(torch.zeros(20, 2, dtype=torch.long), reference_discrete=True)
    with pytest.raises(ValueError, match="NaN or Inf"):
        dm.reference_groups(torch.full((20,), float("nan")))


def test_bad_knn_bins_max_n_dtype():
    with pytest.raises(ValueError, match="knn"):
        dm.adjacency_spectral_entropy(Z, knn=0)
    with pytest.raises(ValueError, match="num_bins_per_dim"):
        dm.classic_shannon_entropy(Z, 0)
    with pytest.raises(ValueError, match="max_n"):
        dm.diffusion_spectral_entropy(Z, max_n=0)
    with pytest.raises(ValueError, match="float32 or torch.float64"):
        dm.diffusion_spectral_entropy(Z, dtype=torch.int64)


def test_median_sigma_of_identical_points_is_an_error():
    with pytest.raises(ValueError, match="median pairwise distance is 0"):
        dm.diffusion_spectral_entropy(torch.ones(10, 3), sigma="median")


def test_single_point_has_defined_zero_entropy():
    h = dm.diffusion_spectral_entropy(torch.tensor([[1.0, 2.0]]))
    assert h.ndim == 0 and float(h) == 0.0
    assert torch.equal(dm.diffusion_eigenvalues(torch.tensor([[1.0, 2.0]])), torch.ones(1, dtype=torch.float64))


def test_extreme_scales_give_finite_values():
    # Far apart (G underflows to I) and coincident (G = all ones): no NaN anywhere.
    far = torch.eye(16, dtype=torch.float64) * 1e6
    assert math.isclose(float(dm.diffusion_spectral_entropy(far)), 4.0, abs_tol=1e-9)
    same = torch.full((16, 3), 1e6, dtype=torch.float64)
    assert math.isclose(float(dm.diffusion_spectral_entropy(same)), 0.0, abs_tol=1e-9)
    tiny = torch.randn(16, 3, dtype=torch.float64) * 1e-300
    assert math.isfinite(float(dm.diffusion_spectral_entropy(tiny)))
    mi = dm.diffusion_spectral_mutual_information(far, torch.arange(16) % 2)
    assert math.isfinite(float(mi))


@pytest.mark.parametrize("fn", MUTUAL)
def test_mutual_information_rejects_bad_z_and_non_finite_groups(fn):
    with pytest.raises(ValueError, match="empty"):
        fn(np.zeros((0, 3)), np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match=r"shape \[N, D\]"):
        fn(torch.zeros(20), Y)
    groups = torch.cat([torch.zeros(10), torch.ones(9), torch.tensor([float("nan")])])
    with pytest.raises(ValueError, match="groups has NaN or Inf"):
        fn(Z, groups=groups)


def test_labels_with_nan_are_rejected():
    with pytest.raises(ValueError, match="labels contain NaN"):
        dm.reference_groups(np.array([0.0, 1.0, np.nan]), reference_discrete=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_a_clear_error(dtype):
    with pytest.raises(ValueError, match="float32 or torch.float64"):
        dm.diffusion_spectral_entropy(Z, dtype=dtype)


@pytest.mark.parametrize("sigma,dtype", [(1e-200, torch.float64), (1e-25, torch.float32)])
def test_sigma_whose_square_underflows_is_a_clear_error(sigma, dtype):
    with pytest.raises(ValueError, match="too small"):
        dm.diffusion_spectral_entropy(Z, sigma=sigma, dtype=dtype)
