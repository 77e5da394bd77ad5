"""Reduced-precision candidates for the exact neighbour search, and their certificate.

The search ranks the columns j of a row i by ``R_ij = ||a_j||^2 - 2 a_i.a_j`` (a: centred
rows; ``R_ij = ||a_i - a_j||^2 - ||a_i||^2``). A cheap pass computes ``r_ij`` with the product
in reduced precision (TF32 tensor cores on CUDA, inputs with ``b`` = 10 mantissa bits) and
keeps the M smallest per row, ``v_M`` the largest kept. The candidates are then ranked by
their float64 distances ``delta_ij`` (ties by index); ``delta_k`` is the k-th. With
``|r_ij - R_ij| <= E_i`` for every j, a column j left out has ``r_ij >= v_M``, hence

    delta_ij >= (1 - g64) (||x_i - x_j||^2) >= (1 - g64) (v_M - E_i + ||a_i||^2 - F_i)  =: L_i

and ``L_i > delta_k`` certifies that no column left out is as near as the k-th chosen, so the
chosen k are the exact k nearest, ties by index. A row whose certificate fails is searched
again exactly. The bound: the inputs are rounded here to the nearest value with b mantissa
bits, which a TF32 unit takes exactly (whatever its own rounding), so u = 2^-(b+1);
u_acc = 2^-22 for the float32 accumulation (4x float32's unit roundoff: tensor cores align
and truncate; any order of summing W terms errs by at most gamma = W u_acc / (1 - W u_acc)
times the sum of their |.|); u' = 2x the unit roundoff u_a of a's dtype; A = max_j ||a_j||.
The product is one matrix product of W = D + 2 (+ zero columns to a multiple of 8) terms,
``[a'_i, 1, 1] . [-2 a'_j, hi_j, lo_j]`` with ``hi_j + lo_j`` the float norm ``sq'_j`` split
in two b-bit parts (``|hi + lo - sq'| <= 2^-(2b+2) sq'``): no bias to add, no pass to copy it.
Every input has b bits, so every product is exact in float32, and

    |2 P'_ij - 2 a_i.a_j| <= 2 (2u + u^2) ||a_i|| A            (the rounded inputs)
    |sq'_j - ||a_j||^2| <= (D + 4) u' A^2                       (the float norm, then its square)
    accumulation <= gamma (2 (1 + u)^2 ||a_i|| A + 1.01 A^2)
    E_i = SAFETY [ ((D + 4) u' + u^2 + 1.01 gamma) A^2 + 2 c_P ||a_i|| A ],   c_P = 2u + u^2 + gamma (1 + u)^2
    F_i = 2.01 u_a (||a_i|| + A)^2            (centring a = fl(x - mean): ||e_i|| <= u_a ||a_i||)
    g64 = 1.01 (D + 3) 2^-53                  (float64 distances of the candidates)

Cauchy-Schwarz bounds ``sum |a_ik a_jk|`` by ``||a_i|| ||a_j||``. SAFETY = 1.25 covers the
float64 evaluation of L_i and what the model leaves out (a bf16x3 product for torch's "high"
precision drops lo*lo terms, 2^-16 relatively).
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

import torch

#: Mantissa bits of a TF32 input (float32 has 23).
TF32_BITS = 10
#: Unit of the float32 accumulation assumed in the bound (4x float32's unit roundoff).
U_ACC = 2.0**-22
#: Factor on the candidate pass's error bound E_i (see the module docstring).
SAFETY = 1.25
#: Candidates kept per row beyond k + 1: a row is certified where its (k+1+EXTRA)-th
#: reduced-precision value, less the bound, lies beyond its k-th exact distance. With 20
#: Gaussian clusters (centres 3 N(0, I)) at D = 256 and 50,000 rows a cluster (the N = 10^6
#: benchmark), M = 64 certified all of 300 rows (M = 32: 15%).
EXTRA = 64


#: The precision is one process-wide setting: searches in several threads (DSMI's subsets) take
#: turns, or one could restore another's setting and leave TF32 on, or search under it.
_PRECISION_LOCK = threading.RLock()


@contextmanager
def float32_matmul(precision: str):
    """``torch.set_float32_matmul_precision(precision)`` inside, the caller's setting restored after;
    one thread at a time.

    >>> with float32_matmul("high"):
    ...     torch.get_float32_matmul_precision()
    'high'
    """
    with _PRECISION_LOCK:
        before = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision(precision)
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(before)


def round_mantissa(a: torch.Tensor, bits: int) -> torch.Tensor:
    """``a`` (float32 or float64) rounded to ``bits`` mantissa bits (nearest, halves away from 0).

    Software emulation of a reduced-precision input (TF32: 10 bits, bfloat16: 7); relative error
    at most 2^-(bits+1).

    >>> round_mantissa(torch.tensor([1.0 + 2**-11, 1.0 + 3 * 2**-11, -3.0]), 10).tolist()
    [1.0009765625, 1.001953125, -3.0]
    """
    int_type, mantissa = {torch.float32: (torch.int32, 23), torch.float64: (torch.int64, 52)}[a.dtype]
    shift = mantissa - bits
    if shift <= 0:
        return a.clone()
    raw = a.contiguous().view(int_type)
    rounded = (raw + (1 << (shift - 1))) & ~((1 << shift) - 1)  # on the magnitude bits: sign kept
    return rounded.view(a.dtype)


def augmented_factors(a: torch.Tensor, bits: int, columns: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``left [N, W]``, ``right [W, columns]`` with ``(left @ right)_ij = sq'_j - 2 a'_i.a'_j`` (module
    docstring), every entry on the b-bit grid; columns past N get a huge ranking value (never chosen).

    >>> a = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    >>> left, right = augmented_factors(a, 10, 4)
    >>> (left @ right).tolist()[0][:2], left.shape[1] % 8
    ([-1.0, 4.0], 0)
    """
    n, dim = a.shape
    width = -(-(dim + 2) // 8) * 8  # 16-byte rows: the tensor cores' fast layouts
    ar = round_mantissa(a, bits)
    sq = torch.linalg.vector_norm(a, dim=1).square()
    hi = round_mantissa(sq, bits)
    left = torch.zeros(n, width, dtype=a.dtype, device=a.device)
    left[:, :dim], left[:, dim : dim + 2] = ar, 1
    right = torch.zeros(width, columns, dtype=a.dtype, device=a.device)
    right[:dim, :n] = -2 * ar.T
    right[dim, :n], right[dim + 1, :n] = hi, round_mantissa(sq - hi, bits)
    right[dim, n:] = 2.0**120  # on every grid, finite: no inf * 0 in a tensor core
    return left, right


def candidate_bound(norms: torch.Tensor, dim: int, bits: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(E_i, F_i) of the module docstring from the float64 row norms ``||a_i||`` (upper bounds).

    >>> e, f = candidate_bound(torch.tensor([1.0, 2.0], dtype=torch.float64), 8, 10, torch.float32)
    >>> bool(e[1] > e[0] > 0), bool(f[1] > f[0] > 0)
    (True, True)
    """
    u, u_a = 2.0 ** -(bits + 1), torch.finfo(dtype).eps / 2
    up, width = 2 * u_a, -(-(dim + 2) // 8) * 8
    gamma = width * U_ACC / (1 - width * U_ACC)
    c_p = 2 * u + u * u + gamma * (1 + u) ** 2
    big = norms.max()
    e = SAFETY * (((dim + 4) * up + u * u + 1.01 * gamma) * big**2 + 2 * c_p * norms * big)
    f = 2.01 * u_a * (norms + big) ** 2
    return e, f


def certified(v_m: torch.Tensor, delta_k: torch.Tensor, norms: torch.Tensor, dim: int, bits: int,
              dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    """Rows whose k chosen candidates are certainly the exact k nearest (module docstring).

    ``v_m``: the M-th reduced-precision value, ``delta_k``: the k-th float64 distance of the
    chosen, ``norms``: ``||a_i||`` in float64. ``scale`` multiplies the bound (1: as derived;
    the tests shrink it to see rows go wrong).

    >>> n = torch.tensor([1.0], dtype=torch.float64)
    >>> certified(torch.tensor([5.0]), torch.tensor([2.0]), n, 4, 10, torch.float32).tolist()
    [True]
    """
    e, f = candidate_bound(norms, dim, bits, dtype)
    g64 = 1.01 * (dim + 3) * 2.0**-53
    lower = (v_m.double() - scale * e + norms.square() * (1 - 1e-12) - scale * f) * (1 - g64)
    return lower > delta_k
