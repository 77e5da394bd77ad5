"""The kNN accuracy of a fixed probe: leave-one-out, k nearest neighbours, majority vote.

The ranking is done in two passes so that its cost stays near one float32 matrix product:
candidates from float32 squared distances, then their float64 distances
(|a_i|^2 + |a_j|^2 - 2 a_i.a_j, as scikit-learn computes them), with a per-row certificate
that no other sample can be among the k + 1 nearest (else that row is ranked again over
all samples in float64).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ._checks import NotApplicable, as_tensor, check_features, check_int
from .kernel_neighbours import NeighbourCandidates
from .knn_reduced import float32_matmul

__all__ = ["knn_accuracy"]

#: Distances held at once (rows x N) while ranking.
KNN_CHUNK_ENTRIES = 1 << 24
#: Candidates kept beyond the k + 1 the vote and its tie check need.
EXTRA_CANDIDATES = 4


def knn_accuracy(z: Any, labels: Any, k: int = 10, *, chunk_entries: int = KNN_CHUNK_ENTRIES,
                 candidates: NeighbourCandidates | None = None) -> torch.Tensor:
    """Leave-one-out accuracy of a k-nearest-neighbour majority vote over ``labels``.

    The kNN probe of representation learning (Wu et al., CVPR 2018; Caron et al., ICCV 2021),
    here on the fixed probe itself: accuracy = (1/N) sum_i [vote_k(z_i) = y_i].

    Each sample is classified by the labels of its k nearest other samples (Euclidean,
    uniform weights, a tied vote going to the smallest label): what scikit-learn's
    ``KNeighborsClassifier(n_neighbors=k)`` fitted on the other N - 1 samples predicts
    with its brute-force search (its choice above 15 dimensions), run on one thread.
    Neighbours equidistant at the k-th place (duplicates, common in collapsed features)
    are chosen as that search chooses them: by its max-heap over the samples in order
    (:func:`_heap_neighbours`), not simply the smaller indices. A duplicate of a sample
    is its neighbour at distance 0. Distances are computed a chunk of rows at a time (at
    most ``chunk_entries`` held), never N x N.

    ``candidates``: each row's nearest candidates read off the dense kernel's distance product
    (:func:`.kernel_neighbours.kernel_neighbours`, at least k + 1 a row): they stand in for the
    float32 candidate pass (the same certificate, with their own rounding bound), so that the
    vote costs a ``topk`` beside DSE instead of a second N x N x D product.

    Raises:
        NotApplicable: fewer than k + 1 samples, or a single class.

    Example:
        >>> z = torch.tensor([[0.0], [0.1], [0.2], [5.0], [5.1], [5.2]])
        >>> float(knn_accuracy(z, torch.tensor([0, 0, 0, 1, 1, 1]), k=2))
        1.0
    """
    check_int(k, "k")
    given_dtype = as_tensor(z, "z").dtype
    x = check_features(z, dtype=torch.float64)
    y = as_tensor(labels, "labels").reshape(-1).to(x.device)
    n = x.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"labels must hold one label per sample: {y.shape[0]} labels for {n} samples")
    if n < k + 1:
        raise NotApplicable(f"{n} samples: the kNN accuracy with k={k} needs at least {k + 1}")
    classes, codes = torch.unique(y, return_inverse=True)  # sorted: class j is the j-th smallest label
    if classes.numel() < 2:
        raise NotApplicable("the probe labels hold a single class: the kNN accuracy is trivially 1")
    norms = (x * x).sum(dim=1)  # uncentred, as scikit-learn's rounding sees them
    tie_tol = 1e-10 * (norms + norms.max())  # within scikit-learn's float64 rounding: a tie to break
    rows = _Rows(x - x.mean(dim=0))  # centred: distances unchanged, the float32 product loses less
    # the candidates' bound holds for a product of these very values: not one rounded below their precision
    given = candidates if candidates is not None and candidates.index.shape[0] == n and \
        candidates.index.shape[1] >= min(k + 1, n - 1) and \
        candidates.unit_roundoff <= torch.finfo(given_dtype if given_dtype.is_floating_point else torch.float64).eps / 2 \
        else None
    step = max(1, min(n, chunk_entries // n))
    correct = 0
    for start in range(0, n, step):
        here = torch.arange(start, min(start + step, n), device=x.device)
        idx, d = _nearest(rows, here, min(k + 1, n - 1), tie_tol[here], given)
        tied = (d[:, k] <= d[:, k - 1] + tie_tol[here]) if d.shape[1] > k else torch.zeros_like(here, dtype=torch.bool)
        votes = torch.zeros(here.numel(), classes.numel(), dtype=torch.long, device=x.device)
        votes.scatter_add_(1, codes[idx[:, :k]], torch.ones_like(idx[:, :k]))
        for row in torch.nonzero(tied).flatten().tolist():
            votes[row] = torch.bincount(codes[_heap_neighbours(x, start + row, k)], minlength=classes.numel())
        correct += int((votes.argmax(dim=1) == codes[here]).sum())  # first maximum: the smallest label
    return torch.tensor(correct / n, dtype=torch.float64)


class _Rows:
    """The centred rows in float64 and float32, with their squared norms (computed once for every chunk)."""

    def __init__(self, a: torch.Tensor) -> None:
        self.a, self.a32 = a, a.float()
        self.sq, self.sq32 = (a * a).sum(dim=1), (self.a32 * self.a32).sum(dim=1)
        self.norm_max = float(self.sq.max().sqrt())


def _nearest(rows: _Rows, here: torch.Tensor, need: int, slack: torch.Tensor | float = 0.0,
             given: NeighbourCandidates | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``need`` nearest other rows of ``a`` for each row in ``here``: (indices, float64 squared distances).

    Candidates, ``need + EXTRA_CANDIDATES`` a row, come from float32 values
    ``|a_j|^2 - 2 a_i.a_j`` (the row's own term dropped); their float64 distances are then
    computed from the candidates alone. A row is certified when every sample left out is
    farther than its ``need``-th candidate by more than ``slack`` (the caller's tie
    tolerance): a left-out value is at least the last candidate's float32 value, and a
    float32 value is within ``err = (D + 4) u (|a_i| + max_j |a_j|)^2`` of the true one
    (u = 2^-24; Higham's gamma_D for the dot product, plus the roundings of the inputs and
    the sum). Rows that are not certified are ranked again over all samples in float64.
    ``given``: candidates with approximate full distances instead (:mod:`.kernel_neighbours`).
    """
    a, sq = rows.a, rows.sq
    if given is not None:
        cand, last = given.index[here], given.value[here, -1]
        err = (a.shape[1] + 16) * given.unit_roundoff * (sq[here].sqrt() + rows.norm_max) ** 2
    else:
        m = min(need + EXTRA_CANDIDATES, a.shape[0] - 1)
        with float32_matmul("highest"):  # the bound below is IEEE float32's: no TF32 under Lightning's "high"
            approx = torch.addmm(rows.sq32[None, :], rows.a32[here], rows.a32.T, alpha=-2)
        approx[torch.arange(here.numel()), here] = math.inf  # leave one out
        cand_values, cand = approx.topk(m, dim=1, largest=False)
        last = cand_values[:, -1].double() + sq[here]
        err = (a.shape[1] + 4) * 2.0 ** -24 * (sq[here].sqrt() + rows.norm_max) ** 2
    m = cand.shape[1]
    step = max(1, (1 << 19) // (m * a.shape[1]))  # rows whose gathered candidates stay in cache (4 MiB)
    dots = torch.cat([torch.bmm(a[c], a[h].unsqueeze(2)).squeeze(2)  # float64 a_i.a_j of the candidates only
                      for h, c in zip(here.split(step), cand.split(step))])
    exact, order = (sq[here, None] + sq[cand] - 2 * dots).sort(dim=1, stable=True)
    d, idx = exact[:, :need], cand.gather(1, order)[:, :need]
    certified = last - err > d[:, -1] + err + slack
    redo = torch.nonzero(~certified).flatten()
    if redo.numel():
        full = sq[here[redo], None] + sq[None, :] - 2 * a[here[redo]] @ a.T
        full[torch.arange(redo.numel()), here[redo]] = math.inf
        d_redo, idx_redo = full.topk(need, dim=1, largest=False, sorted=True)
        d[redo], idx[redo] = d_redo, idx_redo
    return idx, d


def _heap_neighbours(x: torch.Tensor, i: int, k: int) -> torch.Tensor:
    """The k neighbours of sample ``i`` among the others as scikit-learn's brute search picks them.

    It pushes the others, in index order, on a max-heap of size k (``sklearn.utils._heap.heap_push``,
    ported here): a candidate enters only if strictly closer than the heap's root, which it
    replaces before sifting down. Among equidistant candidates the survivors depend on that
    heap's layout, so it is replayed. Distances are exact differences, equal for duplicates.
    """
    d = ((x - x[i]) ** 2).sum(dim=1).tolist()
    values, indices = [math.inf] * k, [-1] * k
    for j, v in enumerate(d):
        if j == i or v >= values[0]:
            continue
        cur = 0
        while True:
            left = 2 * cur + 1
            right = left + 1
            if left >= k:
                break
            if right >= k:
                if not values[left] > v:
                    break
                swap = left
            elif values[left] >= values[right]:
                if not v < values[left]:
                    break
                swap = left
            else:
                if not v < values[right]:
                    break
                swap = right
            values[cur], indices[cur] = values[swap], indices[swap]
            cur = swap
        values[cur], indices[cur] = v, j
    return torch.tensor(indices, device=x.device)
