"""Representation-health metrics beside DSE: effective rank, spectral decay, kNN accuracy, CKA.

All take features [N, D] (torch or numpy, any device) and compute in float64; each is
one D x D (or N x N, the smaller) Gram eigen-solve or one pass of chunked distances, a
small fraction of an exact DSE solve on the same N (``benchmarks/health.py``). Where a metric does not apply to the
data (too few samples or dimensions, a single class, constant features) it raises
:class:`NotApplicable`, a ``ValueError`` whose message says why, never a plausible number.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ._checks import NotApplicable, as_tensor, check_features
from .diffusion_time import entropy_curve
from .knn_vote import knn_accuracy  # noqa: F401 - re-exported: a health metric

__all__ = ["AlphaReq", "NotApplicable", "alpha_req", "diffusion_entropy_at_times", "knn_accuracy", "linear_cka",
           "rankme", "spectral_gap"]

#: RankMe's smoothing of the normalised singular values (Garrido et al.'s, and reptrix's).
RANKME_EPS = 1e-7
#: The eigenvalues (1-based, inclusive) alpha-ReQ fits: reptrix 0.1.0 ``get_alpha``'s default ``np.arange(10, 100)``.
ALPHA_FIT_RANGE = (11, 100)
#: alpha-ReQ needs min(N, D) at least this: the fit range plus the tail reptrix leaves out of its R^2.
ALPHA_MIN_DIM = 110
#: Distances held at once by :func:`knn_accuracy` (float64 entries: 32 MiB).


def rankme(z: Any) -> torch.Tensor:
    """RankMe (Garrido et al., ICML 2023): the exponential of the entropy of the singular values.

        p_k = s_k / sum_j s_j + 1e-7,    RankMe = exp(-sum_k p_k ln p_k)

    with ``s`` the singular values of the N x D features as given (not centred). It lies
    between 1 (rank one) and min(N, D) (all singular values equal).

    Raises:
        NotApplicable: all features are zero (no singular value to normalise by).

    Example:
        >>> round(float(rankme(torch.eye(4))), 4)
        4.0
        >>> round(float(rankme(torch.ones(6, 3))), 4)
        1.0
    """
    x = check_features(z, dtype=torch.float64)
    s = _singular_values(x)
    total = s.sum()
    if not bool(total > 0):
        raise NotApplicable("all features are 0: RankMe is undefined")
    p = s / total + RANKME_EPS
    return torch.exp(-(p * torch.log(p)).sum())


#: Below this share of the largest Gram eigenvalue, the Gram route's singular values are not accurate.
GRAM_FLOOR = 1e-10


def _singular_values(x: torch.Tensor) -> torch.Tensor:
    """Singular values of ``x`` (descending), from the eigenvalues of its smaller Gram matrix.

    An N x D GEMM and a min(N, D) eigen-solve, several times cheaper than an SVD. Squaring
    loses the small ones (an eigenvalue is known to ~1e-16 of the largest, so a singular value
    below ~1e-8 of the largest is rounding): where the spectrum reaches ``GRAM_FLOOR``, the SVD.
    """
    gram = x.T @ x if x.shape[0] >= x.shape[1] else x @ x.T
    lam = torch.linalg.eigvalsh(gram).flip(0)
    if not bool(lam[-1] > GRAM_FLOOR * lam[0]):
        return torch.linalg.svdvals(x)
    return lam.sqrt()


@dataclass(frozen=True)
class AlphaReq:
    """alpha-ReQ's decay exponent, the R^2 of its fit (over the fit range), and the zeros found there."""

    alpha: float
    r2: float
    zeros_in_fit: int = 0


def alpha_req(z: Any) -> AlphaReq:
    """alpha-ReQ (Agrawal et al., NeurIPS 2022): how fast the covariance eigenspectrum decays.

    With lambda_i the eigenvalues of the centred features' covariance, descending and
    normalised to sum 1, fit ``ln lambda_i = -alpha ln i + c`` over i = 11..100 by
    weighted least squares with weights 1/i (float32-rounded, as reptrix 0.1.0's
    ``get_alpha`` with its default range, which this equals). ``r2`` is the fit's
    (unweighted) R^2 of ``ln lambda`` over the same i. A higher alpha is a faster decay:
    fewer directions carry the variance.

    Returns NaN alpha and r2 (with ``zeros_in_fit`` > 0) when the spectrum has zeros in
    the fit range (numerical rank below 100: the logarithm is undefined).

    Raises:
        NotApplicable: min(N, D) < 110 (fewer eigenvalues than the fit and its tail need).

    Example:
        >>> i = torch.arange(1, 201, dtype=torch.float64)
        >>> z = torch.diag(i ** -1.0) @ torch.linalg.qr(torch.randn(200, 200, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
        >>> z = torch.cat([z, -z]) * 10      # the mean is 0: covariance eigenvalues ~ i^-2
        >>> res = alpha_req(z)
        >>> round(res.alpha, 6), round(res.r2, 6)
        (2.0, 1.0)
    """
    x = check_features(z, dtype=torch.float64)
    n, d = x.shape
    if min(n, d) < ALPHA_MIN_DIM:
        raise NotApplicable(f"min(N, D) = min({n}, {d}) < {ALPHA_MIN_DIM}: alpha-ReQ fits eigenvalues "
                            f"{ALPHA_FIT_RANGE[0]}..{ALPHA_FIT_RANGE[1]} of the covariance")
    s = _singular_values(x - x.mean(dim=0))  # the PCA of reptrix: S^2 / sum S^2
    lo, hi = ALPHA_FIT_RANGE
    # numerical rank: singular values below this are rounding (numpy's matrix_rank tolerance)
    tol = float(s[0]) * max(n, d) * float(torch.finfo(torch.float64).eps)
    zeros = int((s[lo - 1:hi] <= tol).sum())
    if zeros or not bool(s[0] > 0):
        return AlphaReq(float("nan"), float("nan"), zeros or hi - lo + 1)
    lam = s**2 / (s**2).sum()
    i = torch.arange(lo, hi + 1, dtype=torch.float64)
    y = torch.log(lam[lo - 1:hi])
    design = torch.stack([-torch.log(i), torch.ones_like(i)], dim=1)
    w = (1.0 / i.float()).double().unsqueeze(1)  # reptrix: 1.0 / trange.astype(np.float32)
    b = torch.linalg.solve(design.T @ (design * w), (design * w).T @ y)
    residual = y - design @ b
    r2 = 1.0 - float((residual**2).sum() / ((y - y.mean()) ** 2).sum())
    return AlphaReq(float(b[0]), r2)


def linear_cka(x: Any, y: Any) -> torch.Tensor:
    """Linear centred kernel alignment (Kornblith et al., ICML 2019), biased HSIC estimator.

        CKA = ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F)
            = <H K H, H L H>_F / (||H K H||_F ||H L H||_F),   K = X X^T, L = Y Y^T

    with X_c, Y_c the column-centred features of the same N samples (H = I - 11^T / N).
    1 when Y is X up to rotation, isotropic scale and translation; in [0, 1]. The
    cheaper of the two forms is used (features when D is small, Gram matrices else).

    Raises:
        NotApplicable: the features of x or y are constant over the samples.

    Example:
        >>> x = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
        >>> q = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(1)))[0]
        >>> round(float(linear_cka(x, 3 * x @ q + 1)), 6)
        1.0
    """
    a = check_features(x, "x", dtype=torch.float64)
    b = check_features(y, "y", dtype=torch.float64).to(a.device)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"x and y must describe the same samples: {a.shape[0]} rows vs {b.shape[0]}")
    a, b = a - a.mean(dim=0), b - b.mean(dim=0)
    n, da, db = a.shape[0], a.shape[1], b.shape[1]
    if da * db + da * da + db * db <= n * (da + db + 1):  # D x D products are the cheaper
        hsic = (b.T @ a).square().sum()
        self_a, self_b = a.T @ a, b.T @ b
    else:
        self_a, self_b = a @ a.T, b @ b.T
        hsic = (self_a * self_b).sum()  # <K_c, L_c>_F = ||Y_c^T X_c||_F^2
    norm_a, norm_b = torch.linalg.matrix_norm(self_a), torch.linalg.matrix_norm(self_b)
    if not bool(norm_a > 0) or not bool(norm_b > 0):
        raise NotApplicable("the features are constant over the probe: CKA is undefined")
    return hsic / (norm_a * norm_b)


def spectral_gap(eigenvalues: Any) -> torch.Tensor:
    """The spectral gap of a diffusion operator, ``1 - |lambda_2|``, from its spectrum.

    The mixing rate of the random walk P = Q^-1 G (Coifman & Lafon, "Diffusion maps", 2006).

    ``lambda_2`` is the eigenvalue second largest in modulus (the largest is 1). A gap near
    0 means the diffusion mixes slowly: the points form nearly disconnected groups at the
    kernel's scale; near 1, one well-connected group.

    Raises:
        NotApplicable: a spectrum of one eigenvalue (one point).

    Example:
        >>> spectral_gap(torch.tensor([1.0, 0.75, 0.5]))
        tensor(0.2500)
    """
    lam = as_tensor(eigenvalues, "eigenvalues").reshape(-1).abs()
    if lam.numel() < 2:
        raise NotApplicable("one eigenvalue (one point): the spectral gap is undefined")
    return 1 - lam.topk(2).values[1]


def diffusion_entropy_at_times(eigenvalues: Any, t_values: Sequence[float]) -> dict[float, torch.Tensor]:
    """DSE at each diffusion time of ``t_values`` from one spectrum (no further solve; Liao et al., 2023).

        DSE(t) = -sum_i a_i log2 a_i,   a_i = |lambda_i|^t / sum_j |lambda_j|^t

    (:func:`~dse_monitor.functional.entropy_curve`, keyed by t.)

    Example:
        >>> lam = torch.tensor([1.0, 0.5, 0.5, 0.0], dtype=torch.float64)
        >>> {t: round(float(v), 4) for t, v in diffusion_entropy_at_times(lam, [1, 2]).items()}
        {1: 1.5, 2: 1.2516}
    """
    values = entropy_curve(eigenvalues, [float(t) for t in t_values])
    return {t: values[..., i] for i, t in enumerate(t_values)}
