"""The diffusion kernel with its rows split over processes: each holds or streams only its own rows.

    K = Q^-1/2 G Q^-1/2,   G_ij = exp(-||z_i - z_j||^2 / (2 sigma^2)),   q_i = sum_j G_ij

Rank r of a :class:`~.row_group.RowGroup` of W processes owns the rows ``R_r = [r N // W,
(r + 1) N // W)``; every rank holds all N features (N x D, small next to the kernel). Built
from its rows alone plus one gather each:

    q = [q_R0, ..., q_RW-1]            (each rank's row sums, gathered: the columns' scaling)
    tr K = sum_r sum_{i in R_r} K_ii,   ||K||_F^2 = sum_r ||K_Rr,:||_F^2   (partials gathered, summed in rank order)

and a product with a block of b vectors as rows, ``X`` [b, N] (K is symmetric, so the columns
of ``X K`` in ``R_r`` are ``X K_Rr,:^T``):

    X K = [X K_R0,:^T, ..., X K_RW-1,:^T]    (local product, then one all-gather)

Memory per rank: ``|R_r| x N`` kernel entries (dense) or ``block_size`` of its rows at a time
(streamed), instead of N x N. Every rank receives the same gathered bytes, so the Lanczos
bookkeeping of :func:`.lanczos.approximate_entropy`, seeded alike, runs identically on every
rank; a fingerprint of the operand travels with each product and a divergence raises on all
ranks at once instead of deadlocking them.

Example (one process: the group of one, equal to the ordinary operator):
    >>> from .operator import KernelOperator
    >>> from .row_group import RowGroup
    >>> z = torch.randn(200, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> rows = RowShardedOperator.build(z, 2.0, RowGroup.single())
    >>> x = torch.randn(3, 200, dtype=torch.float64)
    >>> torch.allclose(rows.rmatmat(x), KernelOperator.build(z, 2.0).rmatmat(x))
    True
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ._checks import check_int
from ._threads import torch_threads
from .kernel import gaussian_affinity, in_factored_range, scaled_rows
from .knn import density_scaling
from .operator import DEFAULT_BLOCK_SIZE, _sum_of_squares, round_rows_to_float32
from .row_group import RowGroup


@dataclass
class RowShardedOperator:
    """This rank's rows of the symmetric diffusion kernel, with the products and traces of the whole.

    The interface of :class:`~.operator.KernelOperator` that the Lanczos solver uses (``n``,
    ``trace``, ``frobenius_sq``, ``rmatmat``, ``matmat``, ``round_to_float32``, ``to_dense``);
    every call that involves the whole kernel is a collective: all ranks must make it, in
    the same order, with the same operands.
    """

    n: int
    trace: float
    frobenius_sq: float
    mode: str  # "dense" (K_R,: stored) or "streamed" (recomputed from the features per product)
    dtype: torch.dtype
    device: torch.device
    group: RowGroup
    start: int
    stop: int
    z: torch.Tensor  # all N centred features (factored form: scaled by 1 / sigma)
    scale: torch.Tensor  # all N of c (K = C G C; q^-1/2 without density normalisation), storage dtype
    local_k: torch.Tensor | None = None  # K[start:stop, :], dense mode
    sigma: float = 1.0
    block_size: int = DEFAULT_BLOCK_SIZE
    products: int = 0
    product_threads: int = 0
    outer: torch.Tensor | None = None  # factored form: r = exp(-||b||^2 / 2), G = diag(r) exp(b b^T) diag(r)

    @classmethod
    def build(
        cls, z: torch.Tensor, sigma: float, group: RowGroup, *, streamed: bool = False,
        block_size: int = DEFAULT_BLOCK_SIZE, dtype: torch.dtype | None = None, alpha: float = 0.0,
    ) -> "RowShardedOperator":
        """This rank's share of the kernel of the rows of ``z`` (validated, the same on every rank)."""
        dtype = dtype or z.dtype
        check_int(block_size, "block_size")
        x = z.detach().to(dtype)
        n = x.shape[0]
        start, stop = group.share(n)
        centre = x.mean(dim=0, keepdim=True)
        b, half_sq = scaled_rows(x, centre, sigma)
        factored = in_factored_range(half_sq)  # as the whole kernel is built: one exp pass a block
        op = cls(n, 0.0, 0.0, "streamed" if streamed else "dense", dtype, x.device, group, start, stop,
                 b if factored else x - centre, torch.empty(0, dtype=dtype), sigma=sigma, block_size=block_size,
                 outer=half_sq.neg().exp_() if factored else None)
        with torch.no_grad():
            failed = None  # a rank that fails still joins every gather (NaN), so that all ranks raise together
            try:
                if streamed:
                    q_own = torch.cat([g.double().sum(dim=1) for _, g in op._affinity_blocks()])
                else:  # G of the own rows, scaled into K in place below: the share's only N-wide storage
                    op.local_k = op._affinity(start, stop)
                    q_own = op.local_k.double().sum(dim=1)
            except Exception as err:  # noqa: BLE001 - e.g. out of memory on this rank alone
                failed, op.local_k = err, None
                q_own = torch.full((stop - start,), float("nan"), dtype=torch.float64, device=x.device)
            q = group.gather_columns(q_own[None], n)[0]
            if not bool(torch.isfinite(q).all()):
                _raise_together(failed, "build its kernel rows")
            c = q.rsqrt() if not alpha else density_scaling(q, op._affinity_times, alpha)
            op.scale = c.to(dtype)
            try:
                if streamed:
                    frob = sum(_sum_of_squares(op._scaled(lo, g)) for lo, g in op._affinity_blocks())
                    diag = c[start:stop].square().sum()  # G_ii = 1
                else:
                    op.local_k.mul_(op.scale[start:stop, None]).mul_(op.scale[None, :])
                    frob = _sum_of_squares(op.local_k)
                    diag = op.local_k.diagonal(offset=start).double().sum()
            except Exception as err:  # noqa: BLE001
                failed, diag, frob = err, float("nan"), float("nan")
            totals = group.sum(torch.tensor([float(diag), frob], dtype=torch.float64, device=x.device))
            if not bool(torch.isfinite(totals).all()):
                _raise_together(failed, "scale its kernel rows")
        op.trace, op.frobenius_sq = float(totals[0]), float(totals[1])
        return op

    # ------------------------------------------------------------------ the rows
    def _affinity(self, lo: int, hi: int) -> torch.Tensor:
        """``G[lo:hi, :]`` (global row indices) from the centred features, in the storage dtype."""
        z = self.z
        if self.outer is not None:
            return (z[lo:hi] @ z.T).exp_().mul_(self.outer[lo:hi, None]).mul_(self.outer[None, :])
        sq = (z * z).sum(dim=1)
        d = z[lo:hi] @ z.T
        d.mul_(-2).add_(sq[lo:hi, None]).add_(sq[None, :]).clamp_min_(0)
        d[:, lo:hi].fill_diagonal_(0)
        return gaussian_affinity(d, self.sigma)

    def _affinity_blocks(self):
        for lo in range(self.start, self.stop, self.block_size):
            yield lo, self._affinity(lo, min(lo + self.block_size, self.stop))

    def _scaled(self, lo: int, g: torch.Tensor) -> torch.Tensor:
        return g.mul_(self.scale[lo : lo + g.shape[0], None]).mul_(self.scale[None, :])

    def _affinity_times(self, v: torch.Tensor) -> torch.Tensor:
        """``G v`` (float64, all N rows): the own rows' part, gathered (density normalisation)."""
        if self.local_k is not None:  # still G here: called before the scaling
            own = self.local_k.double() @ v
        else:
            own = torch.cat([g.double() @ v for _, g in self._affinity_blocks()])
        return self.group.gather_columns(own[None], self.n)[0]

    # ------------------------------------------------------------------ products
    def rmatmat(self, xt: torch.Tensor) -> torch.Tensor:
        """``xt @ K`` for ``xt`` [b, N] (the same on every rank), in ``xt``'s dtype: one all-gather."""
        self.products += 1
        y = xt.to(self.dtype)
        failed = None
        with torch.no_grad(), torch_threads(self.product_threads):
            try:
                if self.mode == "dense":
                    own = y @ self.local_k.T  # [b, rows]: the columns R of x K, K symmetric
                else:
                    ys = (y * self.scale[None, :]).contiguous()
                    own = torch.cat([ys @ g.T for _, g in self._affinity_blocks()], dim=1)
                    own.mul_(self.scale[None, self.start : self.stop])
                fingerprint = xt.double().sum(dim=1)
            except Exception as err:  # noqa: BLE001 - joins the gather with NaN: every rank raises below
                failed = err
                own = xt.new_full((xt.shape[0], self.stop - self.start), float("nan"), dtype=self.dtype)
                fingerprint = xt.new_full((xt.shape[0],), float("nan"), dtype=torch.float64)
            try:
                return self.group.gather_columns(own.to(xt.dtype), self.n, fingerprint.to(xt.dtype))
            except RuntimeError:
                if failed is not None:
                    raise failed
                raise

    def matmat(self, x: torch.Tensor) -> torch.Tensor:
        """``K @ x`` for ``x`` [N, b] (a collective, see :meth:`rmatmat`)."""
        return self.rmatmat(x.T).T

    def round_to_float32(self) -> "RowShardedOperator":
        """Store this rank's dense float64 rows as float32, in their own memory (trace and
        ``frobenius_sq`` keep the float64 values); returns self."""
        if self.mode != "dense" or self.local_k is None:
            raise ValueError("round_to_float32 needs a dense operator; a streamed one has no stored kernel")
        self.local_k = round_rows_to_float32(self.local_k)
        self.dtype = self.local_k.dtype
        return self

    def to_dense(self) -> torch.Tensor:
        """The full N x N matrix on every rank (a collective; tests and tiny problems only)."""
        return self.matmat(torch.eye(self.n, dtype=torch.float64, device=self.device)).to(self.dtype)

    @property
    def storage_bytes(self) -> int:
        """Bytes this rank holds for the operator: its kernel rows (dense) or one block of them
        (streamed), plus the N x D features and the N scaling factors."""
        item = torch.empty((), dtype=self.dtype).element_size()
        rows = self.stop - self.start if self.mode == "dense" else min(self.block_size, self.stop - self.start)
        return rows * self.n * item + self.z.numel() * self.z.element_size() + self.scale.numel() * item


def _raise_together(failed: BaseException | None, what: str) -> None:
    """Raise on every rank once a rank could not ``what``: its own error there, a RuntimeError elsewhere."""
    if failed is not None:
        raise failed
    raise RuntimeError(f"another rank failed to {what} (its error is reported there); this DSE is skipped on "
                       "every rank")
