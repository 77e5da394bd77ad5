"""Distances, bandwidths and the symmetric diffusion kernel.

The diffusion operator of a point cloud ``z`` (N x D) is built in three steps:

    d_ij = ||z_i - z_j||^2                        (one matrix product)
    G_ij = exp(-d_ij / (2 sigma^2))               (Gaussian affinity)
    K    = Q^-1/2 G Q^-1/2,  q_i = sum_j G_ij     (broadcast scaling, no N^3 product)

K is symmetric positive semi-definite with exactly the eigenvalues of the
row-stochastic diffusion matrix P = Q^-1 G. The reference's constant factor
1/(sigma sqrt(2 pi)) cancels in K and is left out.
"""
from __future__ import annotations

import random
from functools import partial

import numpy as np
import torch

from . import backend
from ._checks import check_positive

Sigma = float | str

#: Points used to estimate the "median" bandwidth (all pairs of at most this many points).
MEDIAN_SAMPLE = 2000


def subsample_indices(n: int, k: int, seed: int) -> list[int]:
    """Indices of a seeded sample of ``k`` out of ``n``, drawn as the reference package draws.

    ``random.Random(seed).sample(range(n), k)``: the same draw as the reference's
    ``random.seed(seed); random.sample(range(n), k)``, without touching global state.

    >>> subsample_indices(10, 3, seed=0)
    [6, 9, 0]
    """
    return random.Random(seed).sample(range(n), k)


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
    an = backend.as_numpy(a.contiguous())
    d = backend.numpy_call(lambda: np.matmul(an, an.T))
    return d.mul_(-2).add_(sq[:, None]).add_(sq[None, :])


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


def affinity_to_diffusion_kernel(g: torch.Tensor) -> torch.Tensor:
    """``K = Q^-1/2 G Q^-1/2`` by broadcasting (in place when no gradient is needed).

    Works on a single [N, N] matrix or a batch [B, N, N].
    """
    s = g.sum(dim=-1).rsqrt()
    if not (torch.is_grad_enabled() and g.requires_grad):
        return g.mul_(s.unsqueeze(-1)).mul_(s.unsqueeze(-2))
    return g * s.unsqueeze(-1) * s.unsqueeze(-2)


def gaussian_affinity(d: torch.Tensor, sigma: float) -> torch.Tensor:
    """``G = exp(-d / (2 sigma^2))`` from squared distances (in place when possible)."""
    if 2 * sigma**2 < torch.finfo(d.dtype).tiny:
        raise ValueError(
            f"sigma={sigma!r} is too small for {d.dtype}: 2 sigma^2 underflows to 0. "
            "Use a larger sigma (every point is then far from every other) or sigma='median'."
        )
    if not (torch.is_grad_enabled() and d.requires_grad):
        return d.mul_(-0.5 / sigma**2).exp_()
    return torch.exp(d * (-0.5 / sigma**2))


def diffusion_kernel(z: torch.Tensor, sigma: float) -> torch.Tensor:
    """The symmetric diffusion kernel ``K`` of the rows of ``z`` (see module docstring).

    >>> k = diffusion_kernel(torch.eye(3, dtype=torch.float64) * 100, sigma=1.0)
    >>> torch.allclose(k, torch.eye(3, dtype=torch.float64))
    True
    """
    return affinity_to_diffusion_kernel(gaussian_affinity(squared_distances(z), sigma))

