"""Distances, bandwidths and the symmetric diffusion kernel.

The diffusion operator of a point cloud ``z`` (N x D) is built in three steps:

    d_ij = ||z_i - z_j||^2                        (one matrix product)
    G_ij = exp(-d_ij / (2 sigma^2))               (Gaussian affinity)
    K    = Q^-1/2 G Q^-1/2,  q_i = sum_j G_ij     (broadcast scaling, no N^3 product)

K is symmetric positive semi-definite with exactly the eigenvalues of the
row-stochastic diffusion matrix P = Q^-1 G. The reference's constant factor
1/(sigma sqrt(2 pi)) cancels in K and is left out.

For a CPU float32/float64 z of at least 64 rows that needs no gradient, the same K is
built in factored form, with b = a / sigma (a: the centred rows) and r_i = exp(-||b_i||^2 / 2):

    E_ij = exp(b_i.b_j),   G_ij = r_i E_ij r_j,   q = r * (E r),   c = r / sqrt(q),   K_ij = c_i E_ij c_j

four passes over the N x N matrix (exp, one product with a vector, two scalings)
instead of nine. It is used while max ||b||^2 stays below 354 in float64 (far from overflow) and 16.8 in
float32 (its rounding, about eps max ||b||^2, stays small: :func:`in_factored_range`);
outside that, step by step.
"""
from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch

from . import backend
from ._checks import check_positive, subsample_indices  # subsample_indices: also imported from here
from .kernel_neighbours import offer_distances, offer_gram
from .knn import density_scaling

Sigma = float | str

#: Points used to estimate the "median" bandwidth (all pairs of at most this many points).
MEDIAN_SAMPLE = 2000


def squared_distances(z: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``d_ij = ||z_i - z_j||^2`` among the rows of ``z``.

        a = z - mean(z),   d_ij = max(0, ||a_i||^2 + ||a_j||^2 - 2 a_i.a_j),   d_ii = 0

    Centring first keeps the cancellation small (distances do not change under a
    shift, rounding error does). Without a gradient the product is one ``addmm_`` into
    the broadcast norms, in a single N x N buffer, or numpy's symmetric product where
    :mod:`.backend` measured it faster on this machine; differentiable otherwise.

    >>> squared_distances(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
    tensor([[ 0., 25.],
            [25.,  0.]])
    """
    a = z - z.mean(dim=0, keepdim=True)
    if not torch.is_grad_enabled() or not a.requires_grad:
        sq = torch.linalg.vector_norm(a, dim=1).square()  # no N x D temporary
        use_numpy = a.shape[0] >= 64 and backend.eligible(a) and backend.choose(
            "distances", a.shape[0], (a.dtype, a.shape[1].bit_length()), partial(_distances_proxy, a.dtype, a.shape[1])
        ) == "numpy"
        d = _distances_numpy(a, sq) if use_numpy else _distances_torch(a, sq)
        return d.clamp_min_(0).fill_diagonal_(0)
    sq = (a * a).sum(dim=1)  # twice differentiable also where a row equals the mean
    d = (sq[:, None] + sq[None, :] - 2 * (a @ a.T)).clamp_min(0)
    return d * (1 - torch.eye(d.shape[0], dtype=d.dtype, device=d.device))


def _distances_torch(a: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
    return (sq[:, None] + sq[None, :]).addmm_(a, a.T, alpha=-2)


def _distances_numpy(a: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
    # numpy computes ``a @ a.T`` of one buffer with a symmetric rank-k update (syrk):
    # half the multiply-adds of the general product torch calls.
    return _gram_numpy(a).mul_(-2).add_(sq[:, None]).add_(sq[None, :])


def _distances_proxy(dtype: torch.dtype, dim: int, n: int):
    a = torch.randn(n, dim, generator=torch.Generator().manual_seed(n), dtype=dtype)
    sq = torch.linalg.vector_norm(a, dim=1).square()

    def run(lib: str) -> torch.Tensor:
        return _distances_torch(a, sq) if lib == "torch" else _distances_numpy(a, sq)

    return run


def resolve_sigma(sigma: Sigma, z: torch.Tensor, seed: int = 0) -> float:
    """Turn ``sigma`` into a positive float.

    ``float``: used as is (absolute, on raw distances; the reference's default is 10).
    ``"sqrt_dim"``: sqrt(D), the paper's choice in its toy and cross-model studies.
    ``"median"``: the median pairwise Euclidean distance (over all pairs of at most
    2,000 points, seeded subsample above that).

    >>> resolve_sigma("sqrt_dim", torch.zeros(5, 16))
    4.0
    """
    if isinstance(sigma, str):
        if sigma == "sqrt_dim":
            return float(z.shape[1]) ** 0.5
        if sigma == "median":
            n = z.shape[0]
            pts = z if n <= MEDIAN_SAMPLE else z[subsample_indices(n, MEDIAN_SAMPLE, seed)]
            with torch.no_grad():
                d = squared_distances(pts.detach())
                iu = torch.triu_indices(d.shape[0], d.shape[0], offset=1, device=d.device)
                pair = d[iu[0], iu[1]]
            med = float(pair.median().sqrt()) if pair.numel() else 0.0
            if med <= 0:
                raise ValueError(
                    "sigma='median' needs at least two distinct points; the median pairwise "
                    "distance is 0. Pass a positive float instead."
                )
            return med
        raise ValueError(f"sigma must be a positive float, 'sqrt_dim' or 'median'; got {sigma!r}")
    return check_positive(sigma, "sigma")


def affinity_to_diffusion_kernel(g: torch.Tensor, alpha: float = 0.0) -> torch.Tensor:
    """``K = Q^-1/2 G Q^-1/2`` by broadcasting (in place when no gradient is needed).

    Works on a single [N, N] matrix or a batch [B, N, N]. ``alpha`` > 0: density
    normalisation first, ``K = C G C`` with ``c`` from :func:`.knn.density_scaling`.
    """
    if alpha:
        s = density_scaling(g.sum(dim=-1), lambda v: (g @ v.unsqueeze(-1)).squeeze(-1), alpha)
    else:
        s = g.sum(dim=-1).rsqrt()
    if not (torch.is_grad_enabled() and g.requires_grad):
        return g.mul_(s.unsqueeze(-1)).mul_(s.unsqueeze(-2))
    return g * s.unsqueeze(-1) * s.unsqueeze(-2)


def gaussian_affinity(d: torch.Tensor, sigma: float) -> torch.Tensor:
    """``G = exp(-d / (2 sigma^2))`` from squared distances (in place when possible)."""
    _check_sigma_fits(sigma, d.dtype)
    if not (torch.is_grad_enabled() and d.requires_grad):
        return d.mul_(-0.5 / sigma**2).exp_()
    return torch.exp(d * (-0.5 / sigma**2))


def _check_sigma_fits(sigma: float, dtype: torch.dtype) -> None:
    if 2 * sigma**2 < torch.finfo(dtype).tiny:
        raise ValueError(
            f"sigma={sigma!r} is too small for {dtype}: 2 sigma^2 underflows to 0. "
            "Use a larger sigma (every point is then far from every other) or sigma='median'."
        )


def diffusion_kernel(z: torch.Tensor, sigma: float, alpha: float = 0.0) -> torch.Tensor:
    """The symmetric diffusion kernel ``K`` of the rows of ``z`` (see module docstring).

    ``alpha``: density normalisation (:mod:`.knn`), 0 (the paper's) by default.

    >>> k = diffusion_kernel(torch.eye(3, dtype=torch.float64) * 100, sigma=1.0)
    >>> torch.allclose(k, torch.eye(3, dtype=torch.float64))
    True
    """
    if z.shape[0] >= 64 and backend.eligible(z):
        k = _factored_diffusion_kernel(z, sigma, alpha)
        if k is not None:
            return k
    d = squared_distances(z)
    offer_distances(d)
    return affinity_to_diffusion_kernel(gaussian_affinity(d, sigma), alpha)


def _factored_diffusion_kernel(z: torch.Tensor, sigma: float, alpha: float = 0.0) -> torch.Tensor | None:
    # The factored form of the module docstring; None outside its range (see below).
    b, half_sq = scaled_rows(z, z.mean(dim=0, keepdim=True), sigma)
    if not in_factored_range(half_sq):
        return None
    e = gram(b)
    offer_gram(e, half_sq, sigma)
    return factored_kernel(e, half_sq, alpha)


def scaled_rows(z: torch.Tensor, centre: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``b = (z - centre) / sigma`` and ``||b_i||^2 / 2``, the inputs of :func:`factored_kernel`."""
    _check_sigma_fits(sigma, z.dtype)
    b = (z - centre).mul_(1.0 / sigma)
    return b, torch.linalg.vector_norm(b, dim=1).square_().mul_(0.5)


#: The factored form's entries carry a rounding error of about eps * max ||b||^2 (three
#: exps of arguments up to ||b||^2 instead of one of -d / 2 sigma^2); kept below this.
#: In float32 that is max ||b||^2 <= 16.8: tight clusters far from the mean measured
#: 2e-5 bits against 8e-6 step by step at ||b||^2 = 20, D = 512 (both within 1e-4).
FACTORED_ROUNDING = 2e-6


def in_factored_range(half_sq: torch.Tensor) -> bool:
    """Whether the factored form is accurate and far from overflow for these ``||b_i||^2 / 2``.

    max ||b||^2 must stay below half of log(largest float) (b_i.b_j <= max ||b||^2 is
    exponentiated) and below ``FACTORED_ROUNDING / eps``: 354 in float64, 16.8 in float32.
    """
    info = torch.finfo(half_sq.dtype)
    limit = min(0.5 * math.log(info.max), FACTORED_ROUNDING / info.eps)
    return bool(half_sq.numel()) and 2 * float(half_sq.max()) < limit


def factored_kernel(e: torch.Tensor, half_sq: torch.Tensor, alpha: float = 0.0) -> torch.Tensor:
    """``K_ij = c_i exp(e_ij) c_j`` from the Gram ``e = b b^T`` (overwritten) and ``||b_i||^2 / 2``.

        r = exp(-||b||^2 / 2),   q = r * (exp(e) r),   c = r / sqrt(q)

    (``alpha`` > 0: ``c = r * density_scaling(q, v -> r * (exp(e) (r v)))``, :mod:`.knn`.)

    >>> b = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    >>> k = factored_kernel(b @ b.T, (b * b).sum(1) / 2)
    >>> torch.allclose(k, diffusion_kernel(b, 1.0))
    True
    """
    e = e.exp_()
    r = half_sq.neg().exp_()
    if alpha:
        c = density_scaling((e @ r).mul_(r), lambda v: (e @ (r * v)).mul_(r), alpha).mul_(r)
    else:
        c = (e @ r).mul_(r).rsqrt_().mul_(r)
    return e.mul_(c[:, None]).mul_(c[None, :])


def gram(a: torch.Tensor) -> torch.Tensor:
    """``a @ a.T`` of a CPU tensor without gradient: torch's product or numpy's symmetric
    one (syrk, half the multiply-adds), whichever :mod:`.backend` measured faster here.
    """
    if backend.choose("gram", a.shape[0], (a.dtype, a.shape[1].bit_length()), partial(_gram_proxy, a.dtype, a.shape[1])) == "numpy":
        return _gram_numpy(a)
    return a @ a.T


def _gram_numpy(a: torch.Tensor) -> torch.Tensor:
    an = backend.as_numpy(a.contiguous())
    return backend.numpy_call(lambda: np.matmul(an, an.T))


def _gram_proxy(dtype: torch.dtype, dim: int, n: int):
    a = torch.randn(n, dim, generator=torch.Generator().manual_seed(n), dtype=dtype)
    return lambda lib: a @ a.T if lib == "torch" else _gram_numpy(a)

