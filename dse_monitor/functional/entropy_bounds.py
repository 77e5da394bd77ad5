"""The summand phi of the entropy sum, and guaranteed bounds on the sum from three moments.

    phi(x) = -(x^t / S + eps) log2(x^t / S + eps)

For points in [0, c] of known count m0, sum m1 and sum of squares m2, the two Gauss-Radau
rules with a fixed node at 0 and at c are the smallest and largest possible sum of phi
when phi''' keeps one sign on [0, c] (t in {1, 2}). ``_lipschitz`` bounds |phi'| on
[0, 1]: a move of the spectrum by d in l1 moves the sum by at most L d. How
:func:`.lanczos.approximate_entropy` combines them: the docstring of :mod:`.lanczos`.
"""
from __future__ import annotations

import math

import torch

from ._checks import EPS

LOG2E = 1.0 / math.log(2.0)


def phi(x: torch.Tensor, s: float, t: float) -> torch.Tensor:
    """``-(x^t/S + eps) log2(x^t/S + eps)`` elementwise (x clamped at 0), float64.

    >>> round(float(phi(torch.tensor([0.5], dtype=torch.float64), 1.0, 1).sum()), 6)
    0.5
    """
    a = x.double().clamp_min(0) ** t / s + EPS
    return -(a * torch.log2(a))


def _phi_scalar(x: float, s: float, t: float) -> float:
    a = max(x, 0.0) ** t / s + EPS
    return -a * math.log2(a)


def radau_bounds(m0: float, m1: float, m2: float, c: float, s: float, t: float) -> tuple[float, float]:
    """Smallest and largest ``sum_i phi(x_i)`` over point sets in [0, c] with moments m0, m1, m2.

    Two-node Gauss-Radau rules with a fixed node at 0 and at c; valid because phi''' keeps
    one sign on [0, c] for t in {1, 2} (then the rules are the extremal measures).

    >>> x = torch.tensor([0.0, 0.01, 0.02, 0.3], dtype=torch.float64)
    >>> lo, hi = radau_bounds(4, float(x.sum()), float((x * x).sum()), 0.3, 1.0, 1)
    >>> lo <= float(phi(x, 1.0, 1).sum()) <= hi
    True
    """
    if m0 <= 0:
        return 0.0, 0.0
    c = max(c, 0.0)
    m1 = min(max(m1, 0.0), c * m0)
    m2 = min(max(m2, m1 * m1 / m0), c * m1)
    vals = []
    for a in (0.0, c):
        nu1 = m1 - a * m0
        nu2 = m2 - 2 * a * m1 + a * a * m0
        if abs(nu1) <= 1e-300 or nu2 <= 1e-300:
            vals.append(m0 * _phi_scalar(a if abs(nu1) <= 1e-300 else m1 / m0, s, t))
            continue
        w1 = min(nu1 * nu1 / nu2, m0)
        x1 = min(max(a + nu2 / nu1, 0.0), c)
        vals.append((m0 - w1) * _phi_scalar(a, s, t) + w1 * _phi_scalar(x1, s, t))
    return min(vals), max(vals)


def _lipschitz(s: float, t: float) -> float:
    # |phi'(x)| = (t x^(t-1) / S) |log2(x^t/S + eps) + 1/ln 2| on [0, 1]
    return t * (-math.log2(EPS) + abs(math.log2(s)) + LOG2E + 1.0) / s
