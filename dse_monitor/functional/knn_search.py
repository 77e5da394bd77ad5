"""The exact k-nearest-neighbour search of the kNN kernel (:mod:`.knn`): blocks of squared
distances, a two-step selection, certified reduced-precision candidates on CUDA, ties by index.
"""
from __future__ import annotations

import contextlib
import math

import torch

from .knn_reduced import EXTRA, TF32_BITS, augmented_factors, certified, float32_matmul

#: Columns per group in the neighbour search's first selection step (see :func:`knn_search`).
GROUP = 32
#: Bytes of one block of squared distances in the neighbour search: on the CPU small enough
#: to stay in the last-level cache's neighbourhood (a 268 MB block ran 1.8x slower than
#: 25 MB ones at N = 20,000, D = 64: fresh pages), on CUDA large enough to fill the device.
SEARCH_BLOCK_BYTES = {"cpu": 32 * 2**20, "cuda": 1024 * 2**20}


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


def knn_search(
    x: torch.Tensor, k: int, *, block_rows: int | None = None, reduced_bits: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
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

    float32 rows on CUDA (``reduced_bits=None``) take a faster route to the same result:
    candidates from a TF32 product, ranked by float64 distance, each row certified by a
    rigorous error bound or searched again as above (:mod:`.knn_reduced`). ``reduced_bits=0``
    forces the plain search; ``b > 0`` the candidate route with inputs rounded to b mantissa
    bits (nearest), multiplied in the rows' precision (on CUDA with b = 10: by TF32 tensor
    cores); the CPU tests take that route so.

    >>> idx, d2 = knn_search(torch.tensor([[0.0], [1.0], [3.0], [1.0]]), 2)
    >>> idx.tolist(), d2.tolist()
    ([[1, 3], [3, 0], [1, 3], [1, 0]], [[1.0, 1.0], [0.0, 1.0], [4.0, 4.0], [0.0, 1.0]])
    >>> knn_search(torch.tensor([[0.0], [1.0], [3.0], [1.0]]), 2, reduced_bits=4)[0].tolist()
    [[1, 3], [3, 0], [1, 3], [1, 0]]
    """
    n = x.shape[0]
    check_k(k, n)
    a = (x - x.mean(dim=0, keepdim=True)).detach()
    budget = SEARCH_BLOCK_BYTES.get(x.device.type, SEARCH_BLOCK_BYTES["cuda"])
    rows = block_rows or max(1, min(n, budget // (a.element_size() * n)))
    if reduced_bits is None:
        reduced_bits = TF32_BITS if x.device.type == "cuda" and a.dtype == torch.float32 else 0
    if reduced_bits and a.dtype in (torch.float32, torch.float64):
        idx, _ = _certified_candidates(x.detach(), a, k, rows, reduced_bits)
    else:
        idx = _exact_rows(x.detach(), a, k, torch.arange(n, device=x.device), rows)
    d2 = _pair_distances(x, idx)
    order = _lexsort(d2, idx)
    return idx.gather(1, order), d2.gather(1, order)


def _padded(a: torch.Tensor, sq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``a.T`` and ``sq`` padded to whole groups of columns: padding columns 0 with ``sq`` inf (never chosen)."""
    n, groups = a.shape[0], -(-a.shape[0] // GROUP)
    at = torch.zeros(a.shape[1], groups * GROUP, dtype=a.dtype, device=a.device)
    at[:, :n] = a.T
    return at, torch.cat([sq, torch.full((groups * GROUP - n,), math.inf, dtype=sq.dtype, device=a.device)])


def _blocks(a: torch.Tensor, at: torch.Tensor, sq: torch.Tensor | None, query: torch.Tensor, rows: int):
    """(query rows, ``sq_j - 2 a_i.a_j`` of those rows against every column, itself at inf), a block at a time;
    ``sq`` None: ``a @ at`` is that already (:func:`.knn_reduced.augmented_factors`)."""
    buf = torch.empty(min(rows, query.numel()), at.shape[1], dtype=a.dtype, device=a.device)  # reused: no fresh pages
    for start in range(0, query.numel(), rows):
        q = query[start : start + rows]
        if sq is None:
            d = torch.mm(a[q], at, out=buf[: q.numel()])
        else:
            d = torch.addmm(sq[None, :], a[q], at, alpha=-2, out=buf[: q.numel()])  # ||x_j||^2 - 2 x_i.x_j
        d[torch.arange(q.numel(), device=a.device), q] = math.inf  # itself; the ranking of a row needs no ||x_i||^2
        yield q, d


def _smallest(d: torch.Tensor, take: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``take`` smallest entries of each row of ``d`` (values ascending, their columns), by group minima."""
    groups = d.shape[1] // GROUP
    best = torch.topk(d.view(d.shape[0], groups, GROUP).amin(dim=2), min(take, groups), dim=1, largest=False).indices
    cols = (best[:, :, None] * GROUP + torch.arange(GROUP, device=d.device)).flatten(1)
    vals, pos = torch.topk(d.gather(1, cols), take, dim=1, largest=False, sorted=True)
    return vals, cols.gather(1, pos)


def _exact_rows(x: torch.Tensor, a: torch.Tensor, k: int, query: torch.Tensor, rows: int) -> torch.Tensor:
    """The k nearest of the ``query`` rows by the plain search (:func:`knn_search`), float32 products in IEEE precision."""
    sq = torch.linalg.vector_norm(a, dim=1).square()
    # rounding of a ranking value sq_j - 2 a_i.a_j: sqrt(D) eps |.| (a sum's typical error; the
    # worst case D eps flagged 6.5% of float32 rows at N = 20,000, D = 64), x4: closer values may
    # be misordered, and their rows are chosen again by exact distance
    big = sq.max()
    tol = 4 * (a.shape[1] + 2) ** 0.5 * torch.finfo(a.dtype).eps * (big + 2 * (sq * big).sqrt())
    at, sq = _padded(a, sq)
    idx = torch.empty(query.numel(), k, dtype=torch.long, device=x.device)
    take = min(k + 1, a.shape[0] - 1)
    with _ieee_on_cuda(x):
        for done, (q, d) in zip(range(0, query.numel(), rows), _blocks(a, at, sq, query, rows)):
            vals, cols = _smallest(d, take)
            idx[done : done + q.numel()] = _near_ties_by_index(x, d, vals, cols, k, q, tol[q])
    return idx


def _ieee_on_cuda(x: torch.Tensor):
    # a caller's TF32 setting (Lightning's "high" precision) would make the plain search inexact
    return float32_matmul("highest") if x.device.type == "cuda" else contextlib.nullcontext()


def _certified_candidates(x: torch.Tensor, a: torch.Tensor, k: int, rows: int, bits: int, *,
                          extra: int = EXTRA, bound_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest of every row by reduced-precision candidates, certified or redone (:mod:`.knn_reduced`);
    also the rows redone. ``k + 1 + extra`` candidates a row; ``bound_scale`` < 1 shrinks the error bound
    (for the tests: rows go wrong)."""
    n = a.shape[0]
    take = min(k + 1 + extra, n - 1)
    hardware = x.device.type == "cuda" and bits == TF32_BITS and a.dtype == torch.float32
    # inputs rounded to nearest here: TF32 takes them exactly, u = 2^-(bits+1); the norms inside the product
    left, right = augmented_factors(a, bits, -(-n // GROUP) * GROUP)
    cand = torch.empty(n, take, dtype=torch.long, device=x.device)
    v_m = torch.empty(n, dtype=a.dtype, device=x.device)
    with float32_matmul("high") if hardware else contextlib.nullcontext():
        for q, d in _blocks(left, right, None, torch.arange(n, device=x.device), rows):
            vals, cols = _smallest(d, take)
            cand[q], v_m[q] = cols, vals[:, -1]
    del left, right
    d2 = _pair_distances(x, cand)
    order = _lexsort(d2, cand)[:, :k]
    idx, delta_k = cand.gather(1, order), d2.gather(1, order[:, -1:]).squeeze(1)
    if take == n - 1:  # every other row is a candidate: nothing left out
        return idx, torch.empty(0, dtype=torch.long, device=x.device)
    norms = torch.linalg.vector_norm(a.double(), dim=1) * (1 + 1e-12)
    redo = torch.nonzero(~certified(v_m, delta_k, norms, a.shape[1], bits, a.dtype, bound_scale)).flatten()
    if redo.numel():
        idx[redo] = _exact_rows(x, a, k, redo, rows)
    return idx, redo


def _near_ties_by_index(
    x: torch.Tensor, d: torch.Tensor, vals: torch.Tensor, cand: torch.Tensor, k: int, query: torch.Tensor,
    tol: torch.Tensor
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
    exact = (x[query[near[rows]]].double() - x[cols].double()).square().sum(dim=1)
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
