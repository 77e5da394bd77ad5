"""The statistics of the studies: mean +/- std over seeds and the correlation of a metric with accuracy.

One place for both, used by ``compare`` (curves, the information plane, the layer heat map,
``--correlate``) and ``score`` (the cross-model correlation).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["correlation", "mean_std_n"]


def mean_std_n(values: Sequence[float]) -> tuple[float, float, int]:
    """``(mean, sample std, n)``; the std is 0 for one value.

    >>> mean_std_n([1.0, 3.0]), mean_std_n([2.0])
    ((2.0, 1.4142135623730951, 2), (2.0, 0.0, 1))
    """
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0, int(len(a))


def correlation(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float, float]:
    """``(pearson r, its p-value, spearman rho, its p-value)`` of the finite pairs; NaN below 3 pairs or for a constant.

    r = cov(x, y) / (std x std y); rho is r of the ranks. The p-values are scipy.stats'
    two-sided tests of no correlation.

    Example:
        >>> [round(v, 3) for v in correlation([1, 2, 3, 4], [1, 3, 2, 4])]
        [0.8, 0.2, 0.8, 0.2]
        >>> correlation([1, 2], [3, 4])
        (nan, nan, nan, nan)
    """
    from scipy.stats import pearsonr, spearmanr

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite], y[finite]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return (math.nan,) * 4
    (r, r_p), (rho, rho_p) = pearsonr(x, y), spearmanr(x, y)  # tuples in every scipy version
    return float(r), float(r_p), float(rho), float(rho_p)
