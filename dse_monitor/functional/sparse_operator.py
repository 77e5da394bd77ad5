"""The kNN diffusion kernel as a sparse linear operator for the approximate solver.

    K = C W C   (W: the kNN affinity, at most 2k + 1 non-zeros a row; see :mod:`.knn`)

stored as one CSR matrix in float64 on the features' device. The approximate solver
(:mod:`.lanczos`) needs products ``X K`` and two exact scalars, here read off the stored
entries (float64 sums):

    tr K = sum_i K_ii,   ||K||_F^2 = sum_ij K_ij^2

A product costs N (2k + 1) multiply-adds instead of the dense operator's N^2, and memory
is O(N k). K has negative eigenvalues (``indefinite``), so the solver takes the path of
:mod:`.indefinite`, whose bounds allow for them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .estimate import EntropyEstimate
from .knn import DEFAULT_K, check_k, csr_rows, knn_kernel


@dataclass
class SparseKernelOperator:
    """Products with the sparse kNN kernel and its exact traces (the interface of :class:`.operator.KernelOperator`).

    Example:
        >>> z = torch.randn(200, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> op = SparseKernelOperator.build(z, k=10, alpha=1.0)
        >>> dense = op.to_dense()
        >>> x = torch.randn(3, 200, dtype=torch.float64)
        >>> torch.allclose(op.rmatmat(x), x @ dense), abs(op.trace - float(dense.trace())) < 1e-12
        (True, True)
    """

    n: int
    trace: float
    frobenius_sq: float
    matrix: torch.Tensor  # CSR, float64
    device: torch.device
    mode: str = "sparse"
    dtype: torch.dtype = torch.float64
    indefinite: bool = True  # negative eigenvalues: the solver must not assume K >= 0
    products: int = 0
    product_threads: int = 0

    @classmethod
    def build(cls, z: torch.Tensor, k: int = DEFAULT_K, alpha: float = 1.0) -> "SparseKernelOperator":
        """The operator of the rows of ``z`` (validated): exact neighbours, then :func:`.knn.knn_kernel`."""
        check_k(k, z.shape[0])
        with torch.no_grad():
            m = knn_kernel(z.detach(), k, alpha, dtype=torch.float64)
            val = m.values()
            col = m.col_indices()
            row = csr_rows(m)
            trace = float(val[row == col].sum())
            frob = float(val.square().sum())
        return cls(z.shape[0], trace, frob, m, z.device)

    def rmatmat(self, xt: torch.Tensor) -> torch.Tensor:
        """``xt @ K`` for ``xt`` [b, N], as ``(K xt^T)^T`` (K is symmetric), in ``xt``'s dtype."""
        self.products += 1
        with torch.no_grad():
            return (self.matrix @ xt.to(torch.float64).T.contiguous()).T.to(xt.dtype)

    def matmat(self, x: torch.Tensor) -> torch.Tensor:
        """``K @ x`` for ``x`` [N, b]."""
        return self.rmatmat(x.T).T

    def to_dense(self) -> torch.Tensor:
        """The full N x N matrix (tests and small problems only)."""
        return self.matrix.to_dense()


def sparse_entropy(x: torch.Tensor, k: int, alpha: float, t: float, *, seed: int = 0, **options) -> EntropyEstimate:
    """Approximate DSE of the kNN kernel of the rows of ``x``, with bounds (:mod:`.indefinite`)."""
    from .indefinite import indefinite_entropy

    options.pop("probe_dtype", None)
    return indefinite_entropy(SparseKernelOperator.build(x, k, alpha), t, seed=seed, **options)
