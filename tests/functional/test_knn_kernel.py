"""The kNN kernel's sparse operator, its approximate solver, alpha on every path, and bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from manylatents_oracle import load
from sklearn.neighbors import NearestNeighbors

from dse_monitor.functional import (
    diffusion_eigenvalues,
    diffusion_spectral_entropy,
    diffusion_spectral_entropy_details,
    diffusion_spectral_mutual_information,
    diffusion_spectral_mutual_information_terms,
)
from dse_monitor.functional.knn import ZERO_SIGMA, knn_kernel, knn_search
from dse_monitor.functional.operator import KernelOperator
from dse_monitor.functional.sparse_operator import SparseKernelOperator
from dse_monitor.functional.spectrum import entropy_of_spectrum


def _clusters(n: int, d: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(8, d, generator=g, dtype=torch.float64) * 3
    return (centres[torch.randint(0, 8, (n,), generator=g)] + torch.randn(n, d, generator=g, dtype=torch.float64))


def test_sparse_operator_has_the_dense_operators_spectrum_at_2000():
    # the sparse operator, seen only through its products, against manylatents' dense N x N
    # construction from exact (float64) neighbours
    z = _clusters(2000).float().double()
    op = SparseKernelOperator.build(z, k=15, alpha=1.0)
    eye = torch.eye(2000, dtype=torch.float64)
    sparse = torch.cat([op.rmatmat(eye[i : i + 500]) for i in range(0, 2000, 500)])
    d, i = NearestNeighbors(n_neighbors=16, algorithm="brute").fit(z.numpy()).kneighbors(z.numpy())
    dense = load().knn_matrix(d, i, alpha=1.0)
    lam_sparse = torch.linalg.eigvalsh(sparse).numpy()
    lam_dense = np.linalg.eigvalsh(dense)
    assert np.abs(lam_sparse - lam_dense).max() < 1e-10
    assert abs(op.trace - np.trace(dense)) < 1e-10 and abs(op.frobenius_sq - (dense**2).sum()) < 1e-9


@pytest.mark.parametrize("t", [1, 2])
def test_lanczos_on_the_sparse_operator_bounds_the_exact_value(t):
    z = _clusters(1500)
    exact = float(diffusion_spectral_entropy(z, t=t, kernel="knn", alpha=1.0))
    est = diffusion_spectral_entropy_details(z, t=t, kernel="knn", alpha=1.0, solver="lanczos").estimate
    assert est.storage == "sparse-float64"
    assert est.lower <= exact <= est.upper
    assert abs(est.value - exact) < 0.02


def test_auto_takes_the_exact_path_on_a_small_knn_kernel():
    z = _clusters(300)
    res = diffusion_spectral_entropy_details(z, t=3, kernel="knn", solver="auto")
    assert res.solver == "exact" and res.eigenvalues.min() < 0  # |lambda| enters the entropy
    assert float(res.value) == float(entropy_of_spectrum(res.eigenvalues, 3))


def test_alpha_zero_is_todays_operator_bit_for_bit():
    z = _clusters(200)
    assert torch.equal(diffusion_spectral_entropy(z, 3.0), diffusion_spectral_entropy(z, 3.0, alpha=0.0))
    assert torch.equal(diffusion_eigenvalues(z, 3.0), diffusion_eigenvalues(z, 3.0, alpha=0))


def test_alpha_on_the_factored_streamed_and_lanczos_paths():
    z = _clusters(400)  # >= 64 rows on the CPU: the factored kernel
    exact = float(diffusion_spectral_entropy(z, 4.0, alpha=1.0))
    small = float(diffusion_spectral_entropy(z[:40], 4.0, alpha=1.0))  # step by step
    assert abs(small - float(diffusion_spectral_entropy(z[:40].clone(), 4.0, alpha=1.0, dtype=torch.float32))) < 1e-4
    dense = KernelOperator.build(z, 4.0, alpha=1.0)
    streamed = KernelOperator.build(z, 4.0, alpha=1.0, streamed=True, block_size=64)
    x = torch.randn(400, 3, dtype=torch.float64)
    assert torch.allclose(dense.matmat(x), streamed.matmat(x), atol=1e-13)
    assert abs(dense.trace - streamed.trace) < 1e-10 and abs(dense.frobenius_sq - streamed.frobenius_sq) < 1e-10
    for streamed_path in (False, True):
        est = diffusion_spectral_entropy_details(z, 4.0, alpha=1.0, solver="lanczos", streamed=streamed_path).estimate
        assert est.lower <= exact <= est.upper


def test_dsmi_subsets_build_their_own_knn_kernels():
    z = _clusters(240)
    labels = torch.arange(240) % 3
    terms = diffusion_spectral_mutual_information_terms(z, labels, kernel="knn", k=10, alpha=1.0, t=3)
    for g, h in zip(terms.group_ids.tolist(), terms.conditional):
        alone = diffusion_spectral_entropy(z[labels == g], t=3, kernel="knn", k=10, alpha=1.0)
        assert abs(float(h) - float(alone)) < 1e-12


def test_neighbour_ties_are_broken_by_index():
    z = torch.tensor([[0.0], [2.0], [-1.0], [1.0], [-2.0], [5.0]], dtype=torch.float64)
    idx, d2 = knn_search(z, 2, block_rows=2)
    assert idx[0].tolist() == [2, 3]  # 2 and 3 tie at distance 1: both, index order
    assert knn_search(z, 3)[0][0].tolist() == [2, 3, 1]  # 1 and 4 tie at distance 2: the smaller index
    assert d2[0].tolist() == [1.0, 1.0]


def test_duplicate_rows_get_manylatents_guard_for_a_zero_kth_distance():
    # 16 copies of one point: its k-th neighbour (k = 15) is at distance 0; sigma becomes 1e-10,
    # the copies get affinity 1 among themselves and ~0 to the rest (manylatents does the same)
    rest = _clusters(100, 4)
    z = torch.cat([(rest[0] + 0.01).expand(16, 4), rest])  # next to a point: in its neighbourhood
    k = knn_kernel(z, 15, 1.0, dense=True)
    assert bool(torch.isfinite(k).all())
    idx, d2 = knn_search(z, 15)
    n = len(z)
    d = np.concatenate([np.zeros((n, 1)), d2.sqrt().numpy()], 1)
    i = np.concatenate([np.arange(n)[:, None], idx.numpy()], 1)
    assert np.abs(load().knn_matrix(d, i, alpha=1.0) - k.numpy()).max() < 1e-14
    assert ZERO_SIGMA == 1e-10
    value = float(diffusion_spectral_entropy(z, kernel="knn", alpha=1.0))
    assert np.isfinite(value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kernel": "gauss"}, r"kernel must be one of \('gaussian', 'knn'\), got 'gauss'"),
        ({"kernel": "knn", "k": 20}, r"k=20 neighbours need at least k \+ 1 = 21 points, .*N=20; pass k <= 19"),
        ({"kernel": "knn", "k": 0}, r"k must be a positive integer .*got 0"),
        ({"kernel": "knn", "k": 2.5}, r"k must be a positive integer .*got 2.5"),
        ({"alpha": 1.5}, r"alpha must be a number in \[0, 1\] .*got 1.5"),
        ({"alpha": -0.1}, r"alpha must be a number in \[0, 1\] .*got -0.1"),
        ({"kernel": "knn", "alpha": True}, r"alpha must be a number in \[0, 1\] .*got True"),
    ],
)
def test_bad_kernel_settings_are_named(kwargs, message):
    z = _clusters(20)
    for fn in (diffusion_spectral_entropy, diffusion_eigenvalues):
        with pytest.raises(ValueError, match=message):
            fn(z, **kwargs)
    if kwargs.get("k") != 20:  # DSMI names the group that is too small instead (next test)
        with pytest.raises(ValueError, match=message):
            diffusion_spectral_mutual_information(z, torch.arange(20) % 2, **kwargs)


def test_dsmi_with_a_group_smaller_than_k_says_so():
    z = _clusters(100)
    labels = torch.zeros(100, dtype=torch.long)
    labels[:10] = 1
    with pytest.raises(ValueError, match=r"group 1 has 10; pass a smaller k"):
        diffusion_spectral_mutual_information(z, labels, kernel="knn", k=15)


@pytest.mark.parametrize("kind", ["grid", "duplicates", "normal32"])
def test_neighbour_search_equals_a_brute_force_sort_by_distance_then_index(kind):
    # integer grids tie exactly, duplicated rows tie at every distance, float32 ranks near ties in
    # rounding: the chosen set must still be the first k of a stable sort by exact distance
    g = torch.Generator().manual_seed(1)
    n, k = 150, 12
    if kind == "grid":
        x = torch.randint(0, 4, (n, 3), generator=g).double()
    elif kind == "duplicates":
        x = torch.randn(n, 5, generator=g, dtype=torch.float64)
        x[n // 2 :] = x[: n - n // 2].clone()
    else:
        x = torch.randn(n, 64, generator=g).float()
    idx, d2 = knn_search(x, k, block_rows=37)
    exact = (x.double()[:, None, :] - x.double()[None, :, :]).square().sum(-1)
    exact.fill_diagonal_(float("inf"))
    for i in range(n):
        want = sorted(range(n), key=lambda j: (float(exact[i, j]), j))[:k]
        assert idx[i].tolist() == want, i
    assert torch.allclose(d2, exact.gather(1, idx), rtol=1e-13, atol=0)
