"""Is sigma on the scale of the features? The median distance, a safe median sigma, a verdict.

DSE is not scale-invariant. With ``r = median pairwise distance / sigma`` (the
*sigma ratio*), measured on real feature sets of 359-1,000 points (digits pixels, a
ResNet's penultimate features at init, 2-D and 1-D projections, a swiss roll, 10
clusters, 256-D Gaussian noise; ``examples/sigma_scale.py`` reruns a smaller grid):

* ``r <= 0.1``: every set had DSE below 1.2% of log2 N, whatever its structure (it
  grows about like r^2 there: every point is within sigma of every other); each left
  the 2% band near 0 between r = 0.1 and 0.22, and none was in it at r >= 0.22;
* ``r >= 3``: the most spread set (256-D noise) sat at 99.4% of log2 N; the others
  saturate later (r ~ 5 for digits pixels, 20-70 for low-dimensional sets, never for
  tight clusters), and none was in the 2% band at r <= 2.15 (at most 93%). Points all
  at one distance from each other saturate first (no point has a closer neighbour):
  with g = exp(-r^2 / 2) their spectrum is 1 and (1 - g) / (1 + (N - 1) g), N - 1 times,
  which gives at most 94.4% of log2 N at r = 2 and 98% only from r ~ 2.4-2.6, for N
  from 100 to 10^4.

Hence :func:`scale_diagnosis` calls a DSE within ``tol`` of 0 or of log2 N the scale's
doing only when ``r < 1/3`` or ``r > 2``: beyond those ratios every set measured sat in
(or next to) the band, and between them none did, so a DSE in a band there is the
features' own structure (e.g. a real collapse), not the bandwidth.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ._checks import check_features, check_positive
from .kernel import squared_distances, subsample_indices

#: Pairwise distances below this fraction of the points' RMS norm count as 0: they are
#: rounding (float32 features resolve ~1.2e-7 of their magnitude), not spread.
DISTANCE_RESOLUTION = 1e-6

#: Rows whose pairs give the median distance (above this, a seeded sample).
SCALE_SAMPLE = 1000

#: Sigma ratios outside [LOW_RATIO, HIGH_RATIO] are "far from 1" (see module docstring).
LOW_RATIO = 1 / 3
HIGH_RATIO = 2.0

Direction = Literal["below", "above"]


def _squared_pair_distances(
    z: Any, max_points: int, seed: int, dtype: torch.dtype | None
) -> tuple[torch.Tensor, float]:
    """Squared distances of all pairs of (a seeded sample of at most ``max_points`` of) the rows,
    and the rows' RMS norm."""
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 2:
        raise ValueError(f"max_points must be an integer >= 2 (pairs are needed), got {max_points!r}")
    x = check_features(z, dtype=dtype)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"a median pairwise distance needs at least 2 points, got {n}")
    # The draw of resolve_sigma("median"): with the same max_points, the same sample.
    pts = x if n <= max_points else x[subsample_indices(n, max_points, seed)]
    with torch.no_grad():
        pts = pts.detach()
        d = squared_distances(pts)
        iu = torch.triu_indices(d.shape[0], d.shape[0], offset=1, device=d.device)
        rms = float(torch.linalg.vector_norm(pts)) / math.sqrt(pts.shape[0])
    return d[iu[0], iu[1]], rms


def _zero_floor_sq(rms: float) -> float:
    """Squared distances at or below this are rounding, not spread."""
    return (DISTANCE_RESOLUTION * rms) ** 2


def _median(squared: torch.Tensor, rms: float) -> float:
    # sqrt is monotone: the median of the squares is the square of the median (same element).
    med_sq = float(squared.median())
    return 0.0 if med_sq <= _zero_floor_sq(rms) else math.sqrt(med_sq)


def median_pairwise_distance(
    z: Any, *, max_points: int = SCALE_SAMPLE, seed: int = 0, dtype: torch.dtype | None = None
) -> float:
    """Median Euclidean distance ``median_{i<j} ||z_i - z_j||`` among the rows of ``z``.

    Exact (all N(N-1)/2 pairs) for ``N <= max_points``; above, all pairs of a seeded
    sample of ``max_points`` rows. The default, 1,000 rows (499,500 pairs), came within
    0.05% of the all-pairs median at N = 4,000 and costs 0.8% of one exact DSE there
    (``benchmarks/diagnostics.py``; all pairs would cost 4.3%); ``max_points=MEDIAN_SAMPLE`` (2,000) draws the
    sample of ``resolve_sigma("median")`` and returns exactly its value. For an even
    number of pairs it is the lower of the two middle values (``torch.median``). A median below
    ``DISTANCE_RESOLUTION`` (1e-6) times the RMS norm of the rows is rounding and is
    returned as exactly 0: more than half the pairs coincide.

    ``median / sigma`` is the *sigma ratio* of :func:`scale_diagnosis`.

    Example:
        >>> z = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])   # distances 5, 5, 10
        >>> median_pairwise_distance(z)
        5.0
        >>> median_pairwise_distance(torch.ones(4, 3))                # all points coincide
        0.0
    """
    squared, rms = _squared_pair_distances(z, max_points, seed, dtype)
    return _median(squared, rms)


@dataclass(frozen=True)
class MedianSigma:
    """A positive bandwidth from the median distance, and the rule that gave it.

    Attributes:
        sigma: the bandwidth (positive).
        median: the median pairwise distance (0 when more than half the pairs coincide).
        rule: ``"median"`` (sigma = median), or the fallback used when the median is 0:
            ``"median_nonzero"``, ``"rms_norm"`` or ``"sqrt_dim"`` (see :func:`median_sigma`).
    """

    sigma: float
    median: float
    rule: str

    @property
    def fell_back(self) -> bool:
        """True when the median was 0 and a fallback rule chose sigma."""
        return self.rule != "median"

    def describe(self) -> str:
        """One sentence saying which rule chose sigma and why (for a log or a warning)."""
        why = {
            "median": f"sigma = {self.sigma:.4g}, the median pairwise distance",
            "median_nonzero": "the median pairwise distance is 0 (more than half the pairs coincide): "
            f"sigma = {self.sigma:.4g}, the median of the nonzero distances",
            "rms_norm": "all points coincide (median pairwise distance 0): "
            f"sigma = {self.sigma:.4g}, the RMS norm of the features (their own scale)",
            "sqrt_dim": "all points coincide at 0 (median pairwise distance 0, zero features): "
            f"sigma = {self.sigma:.4g} = sqrt(D), the paper's scale-free choice",
        }
        return why[self.rule]


def median_sigma(
    z: Any, *, max_points: int = SCALE_SAMPLE, seed: int = 0, dtype: torch.dtype | None = None
) -> MedianSigma:
    """The median pairwise distance as a bandwidth, with a stated rule when it would be 0.

    The rule, in order (distances below ``DISTANCE_RESOLUTION`` times the RMS norm of
    the rows count as 0, as in :func:`median_pairwise_distance`):

    1. ``"median"``: the median pairwise distance, when it is positive;
    2. ``"median_nonzero"``: else the median of the nonzero distances (more than half
       the pairs coincide, e.g. many dead inputs, but the others spread);
    3. ``"rms_norm"``: else (all points coincide at one vector u) ``sqrt(mean ||z_i||^2)
       = ||u||``, the scale of the activations, which is where the spread will start;
    4. ``"sqrt_dim"``: else (all features are 0) ``sqrt(D)``, the paper's choice.

    Meant for ``sigma="median_init"``: call it once at a layer's first measurement and
    freeze ``.sigma``; ``.describe()`` says which rule chose it. With the same
    ``max_points`` and ``seed``, ``.median`` is :func:`median_pairwise_distance`'s value,
    so the first measurement's sigma_ratio is exactly 1.

    Example:
        >>> median_sigma(torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]]))
        MedianSigma(sigma=5.0, median=5.0, rule='median')
        >>> median_sigma(torch.full((5, 2), 3.0)).rule                      # collapsed at (3, 3)
        'rms_norm'
        >>> median_sigma(torch.zeros(5, 16))
        MedianSigma(sigma=4.0, median=0.0, rule='sqrt_dim')
    """
    squared, rms = _squared_pair_distances(z, max_points, seed, dtype)
    med = _median(squared, rms)
    if med > 0:
        return MedianSigma(med, med, "median")
    nonzero = squared[squared > _zero_floor_sq(rms)]
    if nonzero.numel():
        return MedianSigma(math.sqrt(float(nonzero.median())), 0.0, "median_nonzero")
    if rms > 0:
        return MedianSigma(rms, 0.0, "rms_norm")
    return MedianSigma(math.sqrt(check_features(z, dtype=dtype).shape[1]), 0.0, "sqrt_dim")


def normalised_entropy(dse_bits: float, n: int) -> float:
    """``DSE / log2 N`` in [0, 1] (``dse_norm``): 0 = one cluster at sigma's scale, 1 = all apart.

    Example:
        >>> normalised_entropy(4.5, 512)
        0.5
    """
    n = _check_n(n)
    return float(dse_bits) / math.log2(n)


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n (the number of points DSE was measured on) must be an integer >= 2, got {n!r}")
    return n


def scale_diagnosis(
    dse_bits: float,
    n: int,
    sigma_ratio: float,
    *,
    tol: float = 0.02,
    low_ratio: float = LOW_RATIO,
    high_ratio: float = HIGH_RATIO,
) -> Direction | None:
    """Is a flat DSE the bandwidth's doing? ``"below"``, ``"above"`` or None.

        "below"  if  DSE <= tol * log2 N        and  0 < sigma_ratio < low_ratio   (1/3)
        "above"  if  DSE >= (1 - tol) * log2 N  and  sigma_ratio > high_ratio  (2)

    ``sigma_ratio = median pairwise distance / sigma`` (features far *below* sigma /
    far *above* it). The thresholds 1/3 and 2 come from measurements on real feature
    sets (module docstring): inside [1/3, 2] no set came within 2% of 0 or log2 N, so a
    DSE there is a property of the features (e.g. a real collapse) and gives None. A
    ratio of exactly 0 (more than half the pairs coincide: most inputs give one and the
    same feature vector) is the layer's collapse, not sigma's: None too.

    Example:
        >>> scale_diagnosis(0.002, 359, sigma_ratio=0.02)    # every point within sigma
        'below'
        >>> scale_diagnosis(8.48, 359, sigma_ratio=40.0)     # no point near another
        'above'
        >>> scale_diagnosis(0.002, 359, sigma_ratio=0.8) is None   # collapsed at its own scale
        True
    """
    n = _check_n(n)
    dse_bits = float(dse_bits)
    if not math.isfinite(dse_bits):
        raise ValueError(f"dse_bits must be finite, got {dse_bits!r}")
    if isinstance(sigma_ratio, bool) or not isinstance(sigma_ratio, (int, float)) or not (
        math.isfinite(sigma_ratio) and sigma_ratio >= 0
    ):
        raise ValueError(f"sigma_ratio (median distance / sigma) must be a finite number >= 0, got {sigma_ratio!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 0.5:
        raise ValueError(f"tol must be a fraction of log2 N in (0, 0.5), got {tol!r}")
    check_positive(low_ratio, "low_ratio")
    if check_positive(high_ratio, "high_ratio") <= low_ratio:
        raise ValueError(f"high_ratio ({high_ratio}) must exceed low_ratio ({low_ratio})")
    top = math.log2(n)
    if dse_bits <= tol * top and 0 < sigma_ratio < low_ratio:
        return "below"
    if dse_bits >= (1 - tol) * top and sigma_ratio > high_ratio:
        return "above"
    return None


def scale_warning(
    direction: Direction, *, layer: str, dse_bits: float, n: int, median: float, sigma: float,
    suggested_sigma: float | None = None,
) -> str:
    """The warning for a :func:`scale_diagnosis` verdict: the numbers, the cause and the fix.

    ``suggested_sigma`` defaults to ``median`` (pass ``median_sigma(z).sigma`` when the
    median may be 0).

    Example:
        >>> print(scale_warning("below", layer="penultimate", dse_bits=0.0065, n=359, median=0.2137, sigma=10.0))
        DSE of layer 'penultimate' is 0.0065 bits (0.1% of log2 N = 8.49) because sigma = 10 is far above the \
features' median pairwise distance 0.2137 (sigma_ratio 0.021): every point is within sigma of every other, so \
the curve stays near 0 whatever the features' structure. Fix: sigma=0.2137 (this median), or sigma="median_init" \
(the median at the first measurement, frozen for the run).
    """
    if direction not in ("below", "above"):
        raise ValueError(f"direction must be 'below' or 'above', got {direction!r}")
    top = math.log2(_check_n(n))
    suggested, which = (median, "this median") if suggested_sigma is None else (suggested_sigma, "suggested")
    ratio = median / sigma
    if direction == "below":
        cause = (f"sigma = {sigma:.4g} is far above the features' median pairwise distance {median:.4g} "
                 f"(sigma_ratio {ratio:.2g}): every point is within sigma of every other, so the curve "
                 "stays near 0 whatever the features' structure")
    else:
        cause = (f"sigma = {sigma:.4g} is far below the features' median pairwise distance {median:.4g} "
                 f"(sigma_ratio {ratio:.2g}): no point is within sigma of another, so the curve stays "
                 "at log2 N whatever the features' structure")
    return (f"DSE of layer {layer!r} is {dse_bits:.4g} bits ({100 * dse_bits / top:.1f}% of log2 N = {top:.2f}) "
            f"because {cause}. Fix: sigma={suggested:.4g} ({which}), or sigma=\"median_init\" "
            "(the median at the first measurement, frozen for the run).")


def collapsed_init_note(layer: str, sigma: float) -> str:
    """What a "below" verdict at initialisation means with the paper's absolute sigma.

    Example:
        >>> print(collapsed_init_note("penultimate", 10.0))
        layer 'penultimate' starts in the collapsed-initialisation regime the paper studies: at init every probe \
point is within sigma = 10 of every other (sigma_ratio << 1), so DSE starts near 0 and is expected to rise as \
training spreads the features. A warning follows only if it stays there.
    """
    return (f"layer {layer!r} starts in the collapsed-initialisation regime the paper studies: at init every probe "
            f"point is within sigma = {sigma:.4g} of every other (sigma_ratio << 1), so DSE starts near 0 and is "
            "expected to rise as training spreads the features. A warning follows only if it stays there.")
