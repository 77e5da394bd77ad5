"""Nearest-neighbour candidates read off the dense kernel's own distance product.

The dense diffusion kernel of N points is built from an N x N product (the squared
distances, or the Gram of the scaled rows in the factored form). Ranking each row of
that product costs one ``topk``, while the kNN accuracy's own candidate pass costs a
second N x N x D product. Inside :func:`kernel_neighbours`, every dense Gaussian kernel
built of exactly the ``n`` rows asked for offers its product here; the first one leaves
the ``m`` smallest approximate squared distances of every row (itself left out):

    d_ij ~= ||a_i||^2 + ||a_j||^2 - 2 a_i.a_j     (distance form, a: the centred rows)
    d_ij ~= sigma^2 (||b_i||^2 + ||b_j||^2 - 2 b_i.b_j),  b = a / sigma   (factored form)

Each approximate value is within ``(D + 16) u (||a_i|| + max_j ||a_j||)^2`` of the exact
one (u: the product's unit roundoff; Higham's gamma_D for the dot product plus the
roundings of the inputs, the scaling and the sums), which is what
:func:`.knn_vote.knn_accuracy` needs to certify its ranking. A product that may have run
in reduced precision (TF32 on CUDA) is not taken: its rounding has no such bound.

>>> from dse_monitor.functional.kernel import diffusion_kernel
>>> z = torch.randn(100, 8, generator=torch.Generator().manual_seed(0))
>>> with kernel_neighbours(100, 5) as tap:
...     _ = diffusion_kernel(z, 2.0)
>>> tap.candidates.index.shape, bool((tap.candidates.index != torch.arange(100)[:, None]).all())
(torch.Size([100, 5]), True)
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

__all__ = ["NeighbourCandidates", "kernel_neighbours", "offer_distances", "offer_gram"]

#: Rows ranked at once (a chunk's scores stay small: no N x N temporary).
ROWS_PER_CHUNK = 256


@dataclass
class NeighbourCandidates:
    """The ``m`` nearest candidates of every row: ``index`` [N, m], ``value`` [N, m] approximate squared
    distances (float64, ascending), ``unit_roundoff`` of the product they came from."""

    index: torch.Tensor
    value: torch.Tensor
    unit_roundoff: float


class _Tap:
    def __init__(self, n: int, m: int) -> None:
        self.n, self.m = n, m
        self.candidates: Optional[NeighbourCandidates] = None

    def wants(self, product: torch.Tensor) -> bool:
        if self.candidates is not None or product.shape != (self.n, self.n) or self.m >= self.n:
            return False
        if product.dtype not in (torch.float32, torch.float64):
            return False
        # TF32 (or bf16) products on CUDA round far more than float32: no bound to certify with
        return product.device.type == "cpu" or product.dtype == torch.float64 or _ieee_float32_matmul()

    def rank(self, rows_to_distances) -> None:
        index, value = [], []
        for start in range(0, self.n, ROWS_PER_CHUNK):
            stop = min(start + ROWS_PER_CHUNK, self.n)
            d = rows_to_distances(start, stop)
            d[torch.arange(stop - start), torch.arange(start, stop)] = float("inf")  # leave one out
            v, i = d.topk(self.m, dim=1, largest=False, sorted=True)
            index.append(i)
            value.append(v.double())
        self.candidates = NeighbourCandidates(torch.cat(index), torch.cat(value), torch.finfo(d.dtype).eps / 2)


def _ieee_float32_matmul() -> bool:
    """Whether CUDA float32 products run in IEEE float32 (no TF32); False when that cannot be told."""
    try:
        fp32 = getattr(getattr(torch.backends.cuda.matmul, "fp32_precision", None), "lower", None)
        if fp32 is not None:  # the newer API; reading the older one after it was used raises
            return torch.backends.cuda.matmul.fp32_precision.lower() == "ieee"
        return torch.get_float32_matmul_precision() == "highest" and not torch.backends.cuda.matmul.allow_tf32
    except Exception:  # noqa: BLE001 - then the candidates are not taken: knn_acc makes its own
        return False


_TAP: contextvars.ContextVar[Optional[_Tap]] = contextvars.ContextVar("dse_kernel_neighbours", default=None)


@contextlib.contextmanager
def kernel_neighbours(n: int, m: int) -> Iterator[_Tap]:
    """Collect the ``m`` nearest candidates of every row from the first dense kernel of ``n`` rows built
    inside the block (``tap.candidates``; None when no such kernel was built)."""
    tap = _Tap(int(n), int(m))
    token = _TAP.set(tap)
    try:
        yield tap
    finally:
        _TAP.reset(token)


def offer_distances(d: torch.Tensor) -> None:
    """The squared distances of the distance form, before they become affinities."""
    tap = _TAP.get()
    if tap is not None and tap.wants(d):
        tap.rank(lambda start, stop: d[start:stop].clone())


def offer_gram(e: torch.Tensor, half_sq: torch.Tensor, sigma: float) -> None:
    """The Gram ``e = b b^T`` and ``||b||^2 / 2`` of the factored form, before ``e`` is overwritten."""
    tap = _TAP.get()
    if tap is not None and tap.wants(e):
        scale = float(sigma) ** 2

        def rows(start: int, stop: int) -> torch.Tensor:
            s = (half_sq[start:stop, None] + half_sq[None, :]).sub_(e[start:stop])
            return s.mul_(2 * scale)

        tap.rank(rows)
