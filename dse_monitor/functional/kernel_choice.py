"""Which kernel a diffusion operator uses: the Gaussian (``sigma``) or the adaptive kNN (``k``).

The functional API takes ``kernel``, ``k`` and ``alpha``; inside, the choice travels as
``alpha`` and ``knn`` (the k of the kNN kernel, or None for the Gaussian one).
"""
from __future__ import annotations

import torch

from .kernel import diffusion_kernel
from .knn import DEFAULT_K, check_alpha, check_k, check_kernel, knn_kernel

__all__ = ["DEFAULT_K", "diffusion_kernel_of", "kernel_choice"]


def kernel_choice(kernel: str, k: int, alpha: float, n: int | None = None) -> int | None:
    """Validate ``kernel``, ``k`` (against N points where given) and ``alpha``; the kNN's k, or None.

    >>> kernel_choice("gaussian", 15, 0.0), kernel_choice("knn", 15, 1.0, n=100)
    (None, 15)
    >>> kernel_choice("knn", 15, 1.0, n=10)
    Traceback (most recent call last):
    ...
    ValueError: k=15 neighbours need at least k + 1 = 16 points, but the kNN kernel got N=10; pass k <= 9 or more points.
    """
    check_kernel(kernel)
    check_alpha(alpha)
    if kernel != "knn":
        return None
    if n is None or n > 1:
        check_k(k, n if n is not None else k + 1)
    return k


def diffusion_kernel_of(x: torch.Tensor, sigma: float, alpha: float = 0.0, knn: int | None = None) -> torch.Tensor:
    """The dense diffusion kernel of the rows of ``x``: Gaussian (``sigma``) or kNN (``knn`` neighbours)."""
    if knn is not None:
        return knn_kernel(x, knn, alpha, dense=True)
    return diffusion_kernel(x, sigma, alpha)


def check_groups_for_knn(groups: torch.Tensor, k: int) -> None:
    """A ``ValueError`` when a group of more than one member has at most ``k`` (its own kNN kernel needs more)."""
    ids, counts = torch.unique(groups, return_counts=True)
    small = (counts > 1) & (counts <= k)  # a single member's entropy is 0 without a kernel
    if bool(small.any()):
        i = int(torch.nonzero(small)[0])
        raise ValueError(
            f"kernel='knn' with k={k} needs more than k members in every group (each group's entropy uses its "
            f"own kNN kernel), but group {ids[i].item()!r} has {int(counts[i])}; pass a smaller k, fewer groups "
            "(n_clusters) or more samples."
        )
