"""Approximate DSE of an operator with negative eigenvalues (the kNN kernel), with bounds.

DSE takes |lambda|: with ``u_i = |lambda_i|``, ``S = sum_i u_i^t`` and
``F = sum_i u_i^t log2 u_i^t``,

    H = -sum_i a_i log2 a_i = log2 S - F / S,   a_i = u_i^t / S

(the reference's ``+ eps`` moves H by at most N eps 60 bits, added to the bounds). For t = 1,
S = sum |lambda| is no longer the trace, so :mod:`.lanczos`'s bounds do not apply. Here:

1. block Lanczos deflation (:func:`.lanczos.block_lanczos_deflation`): Ritz pairs at both
   ends of the spectrum, ``theta_j``; they give S_top and F_top exactly.
2. the remainder B (N - k eigenvalues x, |x| <= c = min(1, sqrt(m2))) has exactly known
   ``m0 = N - k``, ``m1 = sum x = tr K - sum theta`` and ``m2 = sum x^2``. In ``y = x^2``
   (sum y = m2, y in [0, c^2]) ``u^t = y^(t/2)`` is concave (t = 1) or linear (t = 2) and
   ``h(y) = (t/2) y^(t/2) log2 y`` is convex, so (Jensen and the chord)

       A = sum u^t in [max(|m1|, m2 / c), min(sqrt(m0 m2), m0 c)]   (t = 2: A = m2)
       F_rem in [m0 h(m2 / m0), (m2 / c^2) h(c^2)]

3. H is decreasing in F; in S on [S_top + A_lo, S_top + A_hi] it has at most one interior
   minimum, at S = -F ln 2. The bounds are H's minimum and maximum over that box, widened
   by the deflation's pinching slack ``2 L sum_j ||R e_j||`` as in :mod:`.lanczos`.

These bounds use two moments and no shape of the remainder: they hold, but are wide
(a few bits where most of the spectrum stays in the remainder, as for kNN kernels). The
estimate is stochastic Lanczos quadrature of ``A`` and ``F`` on the remainder (Rademacher
probes, control variates m1, m2), combined as ``log2 S - F / S``.
"""
from __future__ import annotations

import contextlib
import math
import time

import torch

from ._checks import EPS
from ._threads import one_thread
from .block_lanczos import Deflation, block_lanczos_deflation
from .estimate import BOOKKEEPING_THREADS_N, DEFAULT_BLOCK, DEFAULT_MAX_RANK, DEFAULT_STEPS, EntropyEstimate
from .slq import control_variate_mean, slq_quadratic_forms
from .spectrum import entropy_of_spectrum

LN2 = math.log(2.0)
#: The deflation's options and their defaults (those of :func:`.lanczos.approximate_entropy`).
DEFLATION = {"block": DEFAULT_BLOCK, "max_rank": DEFAULT_MAX_RANK, "bound_tol": 0.05, "lock_tol": 1e-3, "slack": 2e-3}


def _sums(u: torch.Tensor, t: int) -> tuple[float, float]:
    """``sum u^t`` and ``sum u^t log2 u^t`` (0 log 0 = 0), float64."""
    p = u.double().clamp(0, 1) ** t
    return float(p.sum()), float(torch.where(p > 0, p * torch.log2(p.clamp_min(1e-300)), torch.zeros_like(p)).sum())


def _h(y: float, t: int) -> float:
    return 0.0 if y <= 0 else 0.5 * t * y ** (0.5 * t) * math.log2(y)


def _entropy(s: float, f: float) -> float:
    return math.log2(s) - f / s


def box_bounds(s_lo: float, s_hi: float, f_lo: float, f_hi: float) -> tuple[float, float]:
    """Smallest and largest ``log2 S - F / S`` over S in [s_lo, s_hi], F in [f_lo, f_hi] (F <= 0).

    >>> lo, hi = box_bounds(1.0, 2.0, -1.0, -0.5)
    >>> lo <= _entropy(1.5, -0.7) <= hi
    True
    """
    lows = [_entropy(s_lo, f_hi), _entropy(s_hi, f_hi)]
    star = -f_hi * LN2
    if s_lo < star < s_hi:
        lows.append(_entropy(star, f_hi))
    return min(lows), max(_entropy(s_lo, f_lo), _entropy(s_hi, f_lo))


def indefinite_entropy(
    op, t: float = 1, *, seed: int = 0, n_probes: int = 24, lanczos_steps: int = 2 * DEFAULT_STEPS, **options
) -> EntropyEstimate:
    """DSE (bits) of a symmetric operator whose spectrum lies in [-1, 1], with bounds (module docstring).

    ``options``: ``block``, ``max_rank``, ``bound_tol``, ``lock_tol``, ``slack`` as in
    :func:`.lanczos.approximate_entropy` (``probe_dtype`` is ignored: the products are
    sparse and stay float64). Twice the Lanczos steps by default: |x| is not
    smooth at 0, and 20 steps biased the estimate by -0.018 bits (se 0.002; N = 3,000, k = 15,
    Gaussian data), 40 steps by less than 0.001; 24 probes keep the stored bases at 7.7 kB a row.

    Example:
        >>> from dse_monitor.functional.sparse_operator import SparseKernelOperator
        >>> z = torch.randn(600, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> op = SparseKernelOperator.build(z, k=10, alpha=1.0)
        >>> exact = float(entropy_of_spectrum(torch.linalg.eigvalsh(op.to_dense())))
        >>> est = indefinite_entropy(op)
        >>> est.lower <= exact <= est.upper and abs(est.value - exact) < 0.02
        True
    """
    if t not in (1, 2):
        raise ValueError(f"solver='lanczos' supports t = 1 and t = 2; got t={t!r}. Use solver='exact'.")
    unknown = sorted(set(options) - set(DEFLATION) - {"probe_dtype"})
    if unknown:
        raise TypeError(f"indefinite_entropy got unknown option(s) {unknown}; known: {sorted(DEFLATION)}")
    opt = {**DEFLATION, **{k: v for k, v in options.items() if k in DEFLATION}}
    block, max_rank, bound_tol, lock_tol, slack = (opt[k] for k in DEFLATION)
    t = int(t)
    start = time.perf_counter()
    n = op.n
    gen = torch.Generator().manual_seed(seed)
    if n <= 2 * block + 8:
        with one_thread():
            val = float(entropy_of_spectrum(torch.linalg.eigvalsh(op.to_dense().double()), t))
        return EntropyEstimate(val, 0.0, val, val, "lanczos", n, 0, 0, f"{op.mode}-dense-solve",
                               time.perf_counter() - start)
    s_min = op.trace if t == 1 else op.frobenius_sq  # sum |x| >= sum x; t = 2: S exactly
    lip = t * (54 + max(abs(math.log2(s_min)), math.log2(n)) + 2 / LN2 + math.log2(n)) / s_min
    budget = slack / (2 * lip)
    products0 = op.products

    def parts(d: Deflation):
        s_top, f_top = _sums(d.theta.abs(), t)
        m0 = n - d.theta.numel()
        m1 = op.trace - float(d.theta.sum())
        m2 = max(op.frobenius_sq - 2 * float((d.ku**2).sum()) + float((d.theta**2).sum()), 0.0)
        return s_top, f_top, m0, m1, m2

    def bounds(d: Deflation) -> tuple[float, float]:
        s_top, f_top, m0, m1, m2 = parts(d)
        c = min(1.0, math.sqrt(m2))
        if m2 <= 0 or m0 <= 0:
            a_lo = a_hi = f_lo = f_hi = 0.0
        else:
            a_hi = m2 if t == 2 else min(math.sqrt(m0 * m2), m0 * c)
            a_lo = m2 if t == 2 else min(max(abs(m1), m2 / c), a_hi)
            f_lo, f_hi = m0 * _h(m2 / m0, t), m2 / c**2 * _h(c**2, t)
        lo, hi = box_bounds(s_top + a_lo, s_top + a_hi, f_top + f_lo, f_top + f_hi)
        pad = 2 * lip * float(d.resid.sum()) + 1e-9 + 60 * n * EPS
        return max(lo - pad, 0.0), min(hi + pad, math.log2(n) + 60 * n * EPS)

    def stop(d: Deflation) -> bool:
        lo, hi = bounds(d)
        return hi - lo <= bound_tol

    op.product_threads = torch.get_num_threads()
    with one_thread() if n < BOOKKEEPING_THREADS_N else contextlib.nullcontext():
        defl = block_lanczos_deflation(
            op, block=block, max_rank=min(max_rank, n - 1), lock_tol=lock_tol, budget=budget, gen=gen, stop=stop
        )
        lo, hi = bounds(defl)
        s_top, f_top, m0, m1, m2 = parts(defl)

        def functionals(nodes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
            p = nodes.abs().clamp(0, 1) ** t
            plogp = torch.where(p > 0, p * torch.log2(p.clamp_min(1e-300)), torch.zeros_like(p))
            return torch.stack([(weights * p).sum(dim=1), (weights * plogp).sum(dim=1)], dim=1)

        # one reorthogonalisation pass: the estimates equalled two passes' to 1e-4 bits (N = 3,000, six
        # cases) at 0.8x the time; none biased them by 0.007-0.035 bits
        g, gm1, gm2 = slq_quadratic_forms(op, defl.u, n_probes, lanczos_steps, gen, 1.0, t, fn=functionals, passes=1)
    a, se_a = (m2, 0.0) if t == 2 else control_variate_mean(g[:, 0], gm1, gm2, m1, m2)
    f, se_f = control_variate_mean(g[:, 1], gm1, gm2, m1, m2)
    s = s_top + max(a, 1e-300)
    raw = _entropy(s, f_top + f)
    se = abs(se_f) / s + abs((1 / LN2 + (f_top + f) / s) / s) * se_a
    info = {"krylov_dim": defl.krylov_dim, "products": op.products - products0, "raw_estimate": raw,
            "remainder_mass": a / s, "max_residual": float(defl.resid.max()) if defl.theta.numel() else 0.0}
    return EntropyEstimate(min(max(raw, lo), hi), se, lo, hi, "lanczos", defl.theta.numel(), n_probes,
                           lanczos_steps, f"{op.mode}-float64", time.perf_counter() - start, info)
