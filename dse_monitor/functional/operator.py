"""The diffusion kernel as a linear operator: dense, or streamed from the features.

    K = Q^-1/2 G Q^-1/2,   G_ij = exp(-||z_i - z_j||^2 / (2 sigma^2)),   q_i = sum_j G_ij

The approximate solver (:mod:`.lanczos`) only needs products ``K @ X`` and three exact
scalars of the operator, all accumulated in float64:

    tr K     = sum_i K_ii            (= sum_i 1/q_i, since G_ii = 1)
    ||K||_F^2 = sum_ij K_ij^2        (= tr K^2, as K is symmetric)
    n        = N

``dense``: K is formed once (N^2 entries of the storage dtype). ``streamed``: K is never
formed; every product recomputes G one block of ``block_size`` rows at a time from the
features, so memory stays O(N*D + N*block_size) at the price of one pass over all
pairs (N^2 D multiply-adds) per product.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ._checks import check_int
from ._threads import torch_threads
from .kernel import diffusion_kernel, gaussian_affinity, in_factored_range, scaled_rows
from .knn import density_scaling
from .memory import DEFAULT_BLOCK_SIZE, available_memory, check_exact_fits, dense_bytes, exact_bytes, plan_storage

__all__ = ["DEFAULT_BLOCK_SIZE", "KernelOperator", "available_memory", "check_exact_fits", "dense_bytes",
           "exact_bytes", "plan_storage", "round_rows_to_float32"]

#: Rows of a float32 kernel upcast to float64 at a time for its sum of squares.
_SQUARES_ROWS = 256
#: Entries of one dot product in the float64 sum of squares.
_DOT_CHUNK = 1 << 26


def _sum_of_squares(k: torch.Tensor) -> float:
    """``sum_ij k_ij^2`` accumulated in float64, with no N x N temporary.

    A float64 matrix is dot products of slices of its flat view (BLAS, in place); ``k.square()``
    in blocks of 2,048 rows allocated 100 MB per block, and on a 2-core VM the page
    faults of those fresh blocks took 0.1-0.5 s at N = 6,000 where the dot takes 9 ms.
    Lower precisions are upcast a few rows at a time.
    """
    total = 0.0
    if k.dtype == torch.float64:
        flat = k.reshape(-1)
        for start in range(0, flat.numel(), _DOT_CHUNK):  # CUDA's dot takes at most 2^31 - 1 entries
            part = flat[start : start + _DOT_CHUNK]
            total += float(torch.dot(part, part))
        return total
    for start in range(0, k.shape[0], _SQUARES_ROWS):
        flat = k[start : start + _SQUARES_ROWS].double().reshape(-1)
        total += float(torch.dot(flat, flat))
    return total


@dataclass
class KernelOperator:
    """Symmetric diffusion kernel ``K`` of the rows of ``z``: products and exact traces.

    Build it with :meth:`build`. ``matmat(X)`` returns ``K @ X`` in float64 for any
    float64 ``X`` [N, b]; ``trace`` and ``frobenius_sq`` are tr K and tr K^2.

    Example:
        >>> z = torch.randn(300, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> dense = KernelOperator.build(z, 2.0)
        >>> streamed = KernelOperator.build(z, 2.0, streamed=True, block_size=64)
        >>> x = torch.randn(300, 3, dtype=torch.float64)
        >>> torch.allclose(dense.matmat(x), streamed.matmat(x))
        True
        >>> abs(dense.trace - streamed.trace) < 1e-9
        True
    """

    n: int
    trace: float
    frobenius_sq: float
    mode: str  # "dense" or "streamed"
    dtype: torch.dtype  # storage / compute dtype of the kernel entries
    device: torch.device
    dense_k: torch.Tensor | None = None
    z: torch.Tensor | None = None
    scale: torch.Tensor | None = None  # streamed: K = diag(scale) B diag(scale), B the streamed blocks
    outer: torch.Tensor | None = None  # streamed factored form: r = exp(-||b||^2 / 2), G = diag(r) E diag(r)
    sigma: float = 1.0
    block_size: int = DEFAULT_BLOCK_SIZE
    products: int = 0  # number of K @ X passes done (for benchmarks)
    product_threads: int = 0  # torch threads for the products (0: the calling thread's count)

    @classmethod
    def build(
        cls,
        z: torch.Tensor,
        sigma: float,
        *,
        streamed: bool = False,
        block_size: int = DEFAULT_BLOCK_SIZE,
        dtype: torch.dtype | None = None,
        alpha: float = 0.0,
    ) -> "KernelOperator":
        """Dense or streamed operator of the rows of ``z`` (already validated) with bandwidth ``sigma``
        (``alpha``: density normalisation, :mod:`.knn`)."""
        dtype = dtype or z.dtype
        check_int(block_size, "block_size")
        x = z.detach().to(dtype)
        n = x.shape[0]
        if not streamed:
            with torch.no_grad():
                k = diffusion_kernel(x, sigma, alpha)
            trace = float(k.diagonal().double().sum())
            return cls(n, trace, _sum_of_squares(k), "dense", dtype, x.device, dense_k=k, sigma=sigma,
                       block_size=block_size)
        centre = x.mean(dim=0, keepdim=True)
        b, half_sq = scaled_rows(x, centre, sigma)
        factored = in_factored_range(half_sq)  # G = diag(r) exp(b b^T) diag(r): one exp pass a block
        op = cls(n, 0.0, 0.0, "streamed", dtype, x.device, z=b if factored else x - centre, sigma=sigma,
                 block_size=block_size, outer=half_sq.neg().exp_() if factored else None)
        with torch.no_grad():
            q = op._affinity_times(torch.ones(n, 1, dtype=torch.float64, device=x.device))[:, 0]
            s = q.rsqrt() if not alpha else density_scaling(q, op._affinity_times, alpha)
            # K = diag(s) G diag(s) = diag(c) B diag(c), c = s r (factored) or s, B the blocks streamed
            op.scale = (s * op.outer.double() if factored else s).to(dtype)
            frob = 0.0
            for start, g in op._affinity_blocks():
                frob += _sum_of_squares(g.mul_(op.scale[start : start + g.shape[0], None]).mul_(op.scale[None, :]))
        op.trace = float((1.0 / q).sum()) if not alpha else float(s.square().sum())  # G_ii = 1
        op.frobenius_sq = frob
        return op

    def _affinity_blocks(self):
        """Row blocks of G (the distance form) or of E = exp(b b^T) with G = diag(r) E diag(r) (factored)."""
        z = self.z
        if self.outer is not None:
            for start in range(0, self.n, self.block_size):
                yield start, (z[start : start + self.block_size] @ z.T).exp_()
            return
        sq = (z * z).sum(dim=1)
        for start in range(0, self.n, self.block_size):
            stop = min(start + self.block_size, self.n)
            d = z[start:stop] @ z.T
            d.mul_(-2).add_(sq[start:stop, None]).add_(sq[None, :]).clamp_min_(0)
            d[:, start:stop].fill_diagonal_(0)
            yield start, gaussian_affinity(d, self.sigma)

    def _affinity_times(self, v: torch.Tensor) -> torch.Tensor:
        """``G v`` in float64 for ``v`` [N] or [N, c], block by block."""
        r = None if self.outer is None else self.outer.double().reshape(-1, *([1] * (v.ndim - 1)))
        w = v if r is None else r * v
        out = torch.empty_like(v)
        for start, g in self._affinity_blocks():
            out[start : start + g.shape[0]] = g.double() @ w
        return out if r is None else out.mul_(r)

    def matmat(self, x: torch.Tensor) -> torch.Tensor:
        """``K @ x`` for ``x`` [N, b]; computed in the storage dtype, returned in ``x``'s dtype.

        Computed as ``(x^T K)^T`` (K is symmetric), see :meth:`rmatmat`.
        """
        return self.rmatmat(x.T).T

    def rmatmat(self, xt: torch.Tensor) -> torch.Tensor:
        """``xt @ K`` for ``xt`` [b, N] (b vectors as rows), returned in ``xt``'s dtype.

        The skinny operand on the left is the layout every BLAS runs at full speed: MKL's
        float64 ``K @ x`` with a row-major K and 32 columns ran 2.2-2.7x slower than
        ``x^T @ K`` on an AMD EPYC. Products stay in torch even where numpy's BLAS alone
        is faster (float32, N = 6,000: 18 ms vs 22-26 ms there): OpenBLAS's threads spin
        after each call and slowed the torch work between products, so a whole
        approximate run took 2.8 s with numpy's products and 1.7 s with torch's.
        """
        self.products += 1
        y = xt.to(self.dtype)
        with torch.no_grad(), torch_threads(self.product_threads):
            if self.mode == "dense":
                return (y @ self.dense_k).to(xt.dtype)
            out = torch.empty(y.shape, dtype=self.dtype, device=self.device)  # [b, N]
            y = (y * self.scale[None, :]).contiguous()
            for start, g in self._affinity_blocks():  # g = G[start:stop, :], and G^T = G
                stop = start + g.shape[0]
                out[:, start:stop] = y @ g.T
            out.mul_(self.scale[None, :])
        return out.to(xt.dtype)

    def round_to_float32(self) -> "KernelOperator":
        """Store the dense float64 kernel as float32 from now on, in its own memory; returns self.

        Products then cost about 0.6x (measured at N = 6,000 on a 2-core AMD EPYC: 20-26 ms
        vs 36-40 ms). ``trace`` and ``frobenius_sq`` keep the float64 kernel's values, and any
        other reference to the float64 ``dense_k`` sees overwritten bytes (:func:`round_rows_to_float32`).

        >>> op = KernelOperator.build(torch.eye(3, dtype=torch.float64), 1.0)
        >>> before = op.dense_k.clone()
        >>> torch.equal(op.round_to_float32().dense_k, before.float()), op.dtype
        (True, torch.float32)
        """
        if self.mode != "dense" or self.dense_k is None:
            raise ValueError("round_to_float32 needs a dense operator; a streamed one has no stored kernel")
        self.dense_k = round_rows_to_float32(self.dense_k)
        self.dtype = self.dense_k.dtype
        return self

    def to_dense(self) -> torch.Tensor:
        """The full matrix (tests and small problems only)."""
        if self.dense_k is not None:
            return self.dense_k
        return self.matmat(torch.eye(self.n, dtype=self.dtype, device=self.device))


def round_rows_to_float32(k: torch.Tensor) -> torch.Tensor:
    """A contiguous float64 ``k`` [r, N] rounded to float32 in its own bytes (``k`` is overwritten).

    Row i of the float32 matrix is written over bytes that held rows below i / 2, so rows
    [r0, r1) are copied once every row they overwrite has been read (r1 <= 2 r0); a fresh
    copy instead spent 0.25-0.3 s in page faults (N = 6,000, 144 MB).
    """
    if k.dtype == torch.float32:
        return k
    if k.dtype != torch.float64 or not k.is_contiguous():
        raise ValueError(f"round_to_float32 takes a contiguous float64 kernel, not {k.dtype}")
    rows, n = k.shape
    slots = k.view(-1).view(torch.float32)  # 2 r N float32 slots over the same bytes
    with torch.no_grad():
        if rows:
            slots[:n].copy_(k[0].to(torch.float32))  # row 0 overlaps its own source
        r0 = 1
        while r0 < rows:
            r1 = min(rows, 2 * r0, r0 + 256)
            slots[r0 * n : r1 * n].view(r1 - r0, n).copy_(k[r0:r1])
            r0 = r1
    return slots[: rows * n].view(rows, n)
