"""The adaptive-bandwidth kNN kernel and density normalisation (alpha).

kNN kernel (Zelnik-Manor & Perona), as manylatents 0.1.8 builds it:

    N_k(i)  = the k nearest other rows of i (exact, squared distances; ties by index)
    sigma_i = d(i, k-th neighbour)                          (0 -> 1e-10, manylatents' guard)
    W_ij    = exp(-d_ij^2 / (sigma_i sigma_j))  for j in N_k(i) or i in N_k(j)   (union)
    W_ii    = 1

at most 2k + 1 non-zeros a row, stored sparse (never N x N). Density normalisation
(Coifman-Lafon) of any symmetric affinity W, then the symmetric normalisation:

    q = W 1,   W_alpha = Q^-alpha W Q^-alpha,   d = W_alpha 1,   K = D^-1/2 W_alpha D^-1/2

K = C W C is a diagonal scaling of W, ``c = q^-alpha d^-1/2`` with ``d = q^-alpha (W q^-alpha)``;
alpha = 0 gives ``c = q^-1/2``, the paper's operator. K has the eigenvalues of the row-
stochastic ``D^-1 W_alpha``. The kNN W is not positive semi-definite: K has negative
eigenvalues (10-15% of sum |lambda| measured on Gaussian and clustered data at k = 10, 15),
and DSE takes their absolute values, as the reference and manylatents do.
"""
from __future__ import annotations

import warnings

import torch

from .knn_search import check_k, knn_search  # noqa: F401 - check_k: imported from here by other modules

#: The kernels of the diffusion operator.
KERNELS = ("gaussian", "knn")
#: manylatents' default neighbourhood size.
DEFAULT_K = 15
#: A k-th neighbour distance of 0 (at least k duplicates of a row) is replaced by this, as
#: manylatents 0.1.8 does: the row's duplicates get affinity 1, its other neighbours ~0.
ZERO_SIGMA = 1e-10


def check_kernel(kernel: str) -> str:
    """``kernel`` if it is one of :data:`KERNELS`, else a ``ValueError`` listing them.

    >>> check_kernel("knn")
    'knn'
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    return kernel


def check_alpha(alpha: float) -> float:
    """``alpha`` as a float in [0, 1], else a ``ValueError`` naming it.

    >>> check_alpha(1)
    1.0
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (0.0 <= alpha <= 1.0):
        raise ValueError(
            f"alpha must be a number in [0, 1] (0: no density normalisation, the paper's; 1: Laplace-Beltrami, "
            f"manylatents' default), got {alpha!r}"
        )
    return float(alpha)


def density_scaling(q: torch.Tensor, w_times, alpha: float) -> torch.Tensor:
    """``c`` with ``K = C W C`` from the degrees ``q = W 1`` and the product ``v -> W v``.

    >>> w = torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    >>> density_scaling(w.sum(1), lambda v: w @ v, 0.0)
    tensor([0.8165, 0.8165], dtype=torch.float64)
    """
    if alpha == 0:
        return q.rsqrt()
    p = q.pow(-alpha)
    return p * (p * w_times(p)).rsqrt()


def knn_affinity(x: torch.Tensor, k: int = DEFAULT_K, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The symmetric kNN affinity ``W`` of the rows of ``x`` (module docstring) as a sparse CSR matrix.

    Values in ``dtype`` (default: ``x``'s), computed in float64.

    >>> w = knn_affinity(torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64), 1).to_dense()
    >>> w.diagonal().tolist(), bool((w == w.T).all())
    ([1.0, 1.0, 1.0], True)
    """
    n = x.shape[0]
    idx, d2 = knn_search(x, k)
    sigma = d2[:, -1].sqrt()
    sigma = torch.where(sigma == 0, torch.full_like(sigma, ZERO_SIGMA), sigma)
    rows = torch.arange(n, device=x.device).repeat_interleave(k)
    cols = idx.reshape(-1)
    w = torch.exp(-d2.reshape(-1) / (sigma[rows] * sigma[cols]))
    # union of both directions; a pair found from both sides has the same value (d_ij = d_ji exactly)
    diag = torch.arange(n, device=x.device)
    key = torch.cat([rows * n + cols, cols * n + rows, diag * n + diag])
    val = torch.cat([w, w, torch.ones(n, dtype=w.dtype, device=w.device)])
    key, order = torch.sort(key, stable=True)
    val = val[order]
    first = torch.ones_like(key, dtype=torch.bool)
    first[1:] = key[1:] != key[:-1]
    key, val = key[first], val[first]
    r, c = key // n, key % n
    crow = torch.zeros(n + 1, dtype=torch.long, device=x.device)
    crow[1:] = torch.cumsum(torch.bincount(r, minlength=n), 0)
    return csr(crow, c, val.to(dtype or x.dtype), n)


def csr(crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor, n: int) -> torch.Tensor:
    """An n x n CSR tensor, without torch's beta-state and invariant-check warnings (built here, valid)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, val, (n, n), check_invariants=False)


def csr_rows(w: torch.Tensor) -> torch.Tensor:
    """The row index of every stored entry of a CSR ``w``."""
    crow = w.crow_indices()
    return torch.repeat_interleave(torch.arange(w.shape[0], device=crow.device), crow[1:] - crow[:-1])


def sparse_times(w: torch.Tensor):
    """``v -> W v`` for a CSR ``W`` and a vector ``v`` of its dtype."""
    return lambda v: (w @ v[:, None]).squeeze(1)


def knn_kernel(
    x: torch.Tensor, k: int = DEFAULT_K, alpha: float = 1.0, *, dense: bool = False, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """The diffusion kernel ``K = C W C`` of the kNN affinity (module docstring), sparse CSR or dense.

    Computed in float64, stored in ``dtype`` (default: ``x``'s).

    >>> x = torch.randn(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> kd = knn_kernel(x, 5, 1.0, dense=True)
    >>> torch.allclose(kd, knn_kernel(x, 5, 1.0).to_dense()), bool(abs(torch.linalg.eigvalsh(kd).max() - 1) < 1e-12)
    (True, True)
    """
    w = knn_affinity(x, k, torch.float64)
    crow, col, val, row = w.crow_indices(), w.col_indices(), w.values(), csr_rows(w)
    q = torch.zeros(w.shape[0], dtype=val.dtype, device=val.device).index_add_(0, row, val)
    c = density_scaling(q, sparse_times(w), check_alpha(alpha))
    dtype = dtype or x.dtype
    val = (val * c[row] * c[col]).to(dtype)
    if dense:
        out = torch.zeros(w.shape, dtype=dtype, device=x.device)
        out[row, col] = val
        return out
    return csr(crow, col, val, w.shape[0])
