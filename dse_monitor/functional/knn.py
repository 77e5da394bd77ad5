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

import math
import warnings

import torch

#: The kernels of the diffusion operator.
KERNELS = ("gaussian", "knn")
#: manylatents' default neighbourhood size.
DEFAULT_K = 15
#: A k-th neighbour distance of 0 (at least k duplicates of a row) is replaced by this, as
#: manylatents 0.1.8 does: the row's duplicates get affinity 1, its other neighbours ~0.
ZERO_SIGMA = 1e-10
#: Columns per group in the neighbour search's first selection step (see :func:`knn_search`).
GROUP = 32
#: Bytes of one block of squared distances in the neighbour search: on the CPU small enough
#: to stay in the last-level cache's neighbourhood (a 268 MB block ran 1.8x slower than
#: 25 MB ones at N = 20,000, D = 64: fresh pages), on CUDA large enough to fill the device.
SEARCH_BLOCK_BYTES = {"cpu": 32 * 2**20, "cuda": 1024 * 2**20}


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


def check_k(k: int, n: int) -> int:
    """``k`` if 1 <= k < n (n: the points of one kernel), else a ``ValueError`` naming the fix.

    >>> check_k(15, 100)
    15
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer (neighbours of each point), got {k!r}")
    if k >= n:
        raise ValueError(
            f"k={k} neighbours need at least k + 1 = {k + 1} points, but the kNN kernel got N={n}; "
            f"pass k <= {max(n - 1, 1)} or more points."
        )
    return k


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


def knn_search(x: torch.Tensor, k: int, *, block_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest other rows of every row of ``x``: (indices [N, k], squared distances [N, k]).

    Exact, on ``x``'s device, one block of rows at a time (never N x N): the block's
    ``||x_j||^2 - 2 x_i.x_j`` (centred rows, one matrix product), the row itself excluded by
    index. Selection in two steps: the minima of groups of ``GROUP`` columns, the k + 1
    groups with the smallest minima (they hold the k + 1 smallest entries: a group left out
    has k + 1 others whose minima are no larger), then ``torch.topk`` over those groups'
    entries; 3.4x cheaper than ``topk`` over the whole row (N = 20,000). Where the k-th and
    (k+1)-th values are equal within the product's rounding, the row's neighbours are chosen
    again by exact distance, ties by index, as a stable sort would.
    The distances of the chosen pairs are computed again directly, ``sum (x_i - x_j)^2`` in
    float64, so they carry no cancellation error. Sorted by (distance, index).

    >>> idx, d2 = knn_search(torch.tensor([[0.0], [1.0], [3.0], [1.0]]), 2)
    >>> idx.tolist(), d2.tolist()
    ([[1, 3], [3, 0], [1, 3], [1, 0]], [[1.0, 1.0], [0.0, 1.0], [4.0, 4.0], [0.0, 1.0]])
    """
    n = x.shape[0]
    check_k(k, n)
    a = (x - x.mean(dim=0, keepdim=True)).detach()
    sq = torch.linalg.vector_norm(a, dim=1).square()
    budget = SEARCH_BLOCK_BYTES.get(x.device.type, SEARCH_BLOCK_BYTES["cuda"])
    rows = block_rows or max(1, min(n, budget // (a.element_size() * n)))
    # rounding of a ranking value sq_j - 2 a_i.a_j: sqrt(D) eps |.| (a sum's typical error; the
    # worst case D eps flagged 6.5% of float32 rows at N = 20,000, D = 64), x4: closer values may
    # be misordered, and their rows are chosen again by exact distance
    big = sq.max()
    tol = 4 * (a.shape[1] + 2) ** 0.5 * torch.finfo(a.dtype).eps * (big + 2 * (sq * big).sqrt())
    idx = torch.empty(n, k, dtype=torch.long, device=x.device)
    groups = -(-n // GROUP)
    at = torch.zeros(a.shape[1], groups * GROUP, dtype=a.dtype, device=x.device)  # padding columns: 0 ...
    at[:, :n] = a.T
    sq = torch.cat([sq, torch.full((groups * GROUP - n,), math.inf, dtype=sq.dtype, device=x.device)])  # ... inf
    buf = torch.empty(rows, groups * GROUP, dtype=a.dtype, device=x.device)  # reused: no fresh pages per block
    take = min(k + 1, n - 1)
    offsets = torch.arange(GROUP, device=x.device)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        r = torch.arange(stop - start, device=x.device)
        d = torch.addmm(sq[None, :], a[start:stop], at, alpha=-2, out=buf[: stop - start])  # ||x_j||^2 - 2 x_i.x_j
        d[r, r + start] = math.inf  # itself; the ranking of a row needs no ||x_i||^2
        best = torch.topk(d.view(stop - start, groups, GROUP).amin(dim=2), min(take, groups), dim=1,
                          largest=False).indices
        cols = (best[:, :, None] * GROUP + offsets).flatten(1)
        vals, pos = torch.topk(d.gather(1, cols), take, dim=1, largest=False, sorted=True)
        idx[start:stop] = _near_ties_by_index(x.detach(), d, vals, cols.gather(1, pos), k, start, tol[start:stop])
    d2 = _pair_distances(x, idx)
    order = _lexsort(d2, idx)
    return idx.gather(1, order), d2.gather(1, order)


def _near_ties_by_index(
    x: torch.Tensor, d: torch.Tensor, vals: torch.Tensor, cand: torch.Tensor, k: int, start: int, tol: torch.Tensor
) -> torch.Tensor:
    """The first k candidates; where the k-th and (k+1)-th ranking values lie within rounding
    (``tol``, per row) of each other, the row's k nearest by exact distance, ties by index.

    Those rows are redone together (no loop over rows: a GPU would wait on each): every column
    whose ranking value may fall within the k nearest gets its exact distance, and a stable
    sort by (row, distance, column) picks the first k of each row.
    """
    out = cand[:, :k].clone()
    if vals.shape[1] <= k:
        return out
    near = torch.nonzero(vals[:, k] - vals[:, k - 1] <= 2 * tol).flatten()
    if near.numel() == 0:
        return out
    limit = vals[near, k - 1] + 2 * tol[near]
    rows, cols = torch.nonzero(d[near] <= limit[:, None], as_tuple=True)  # row-major: columns ascending
    exact = (x[start + near[rows]].double() - x[cols].double()).square().sum(dim=1)
    order = torch.argsort(exact, stable=True)
    order = order[torch.argsort(rows[order], stable=True)]
    rows, cols = rows[order], cols[order]
    rank = torch.arange(rows.numel(), device=rows.device) - torch.searchsorted(rows, rows, right=False)
    keep = rank < k  # every such row has at least k columns in its window
    out[near[rows[keep]], rank[keep]] = cols[keep]
    return out


def _pair_distances(x: torch.Tensor, idx: torch.Tensor, rows: int = 4096) -> torch.Tensor:
    # float64 differences a block of rows at a time: rows x k x D temporaries
    out = torch.empty(idx.shape, dtype=torch.float64, device=x.device)
    xd = x.detach()
    for start in range(0, x.shape[0], rows):
        xi = xd[start : start + rows].double()
        diff = xi[:, None, :] - xd[idx[start : start + rows]].double()
        out[start : start + rows] = torch.einsum("rkd,rkd->rk", diff, diff)
    return out


def _lexsort(d2: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Per-row order by distance, then index."""
    by_index = torch.argsort(idx, dim=1, stable=True)
    by_distance = torch.argsort(d2.gather(1, by_index), dim=1, stable=True)
    return by_index.gather(1, by_distance)


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
