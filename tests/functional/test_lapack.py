"""The GIL-free LAPACK eigen-solve: numpy's routine, numpy's triangle, numpy's errors."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from dse_monitor.functional import lapack

pytestmark = pytest.mark.skipif(not lapack.AVAILABLE, reason="SciPy's Cython LAPACK table is missing")


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("n", [1, 2, 7, 300])
def test_eigenvalues_equal_numpys_and_read_the_lower_triangle(n, dtype, tol):
    rng = np.random.default_rng(n)
    a = rng.standard_normal((n, n))
    sym = ((a + a.T) / 2).astype(dtype)
    got = lapack.eigvalsh(sym)
    assert got.dtype == dtype and got.shape == (n,)
    scale = max(1.0, float(np.abs(sym).max()) * n)
    assert np.abs(got - np.linalg.eigvalsh(sym)).max() <= tol * scale
    lower = np.tril(sym) + np.triu(rng.standard_normal((n, n)).astype(dtype), 1)  # junk above the diagonal
    assert np.abs(lapack.eigvalsh(lower) - np.linalg.eigvalsh(lower)).max() <= tol * scale
    assert np.array_equal(lapack.eigvalsh(sym), got)  # the input is not overwritten, results repeat


def test_threads_get_the_same_values_and_a_failure_raises_like_numpy():
    mats = [np.cov(np.random.default_rng(i).standard_normal((50, 200))) for i in range(8)]
    with ThreadPoolExecutor(2) as pool:
        threaded = list(pool.map(lapack.eigvalsh, mats))
    assert all(np.array_equal(t, lapack.eigvalsh(m)) for t, m in zip(threaded, mats))
    with pytest.raises(np.linalg.LinAlgError, match="dsyevd failed"):
        lapack.eigvalsh(np.full((5, 5), np.nan))
