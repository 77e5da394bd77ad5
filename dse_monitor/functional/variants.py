"""The reference package's other spectral entropies, kept for comparison studies.

- adjacency spectral entropy: the entropy of the spectrum of the Gaussian affinity
  ``G`` itself, of its anisotropic normalisation ``Q^-1/2 G Q^-1/2``, or of a
  kNN-binarised adjacency;
- matrix-entry entropy: the entropy of the entries of the diffusion matrix.
"""
from __future__ import annotations

from typing import Any

import torch

from ._checks import prepare_features
from .kernel import Sigma, affinity_to_diffusion_kernel, diffusion_kernel, gaussian_affinity, resolve_sigma, squared_distances
from .spectrum import entropy_of_spectrum, general_eigvals_abs, shannon_bits, symmetric_eigvals


def _is_symmetric(a: torch.Tensor) -> bool:
    # The reference's test (np.allclose(A, A.T)) decides between eigvalsh and eigvals.
    return bool(torch.allclose(a, a.T, rtol=1e-5, atol=1e-8))


def adjacency_spectral_entropy(
    z: Any,
    sigma: Sigma = 10.0,
    *,
    anisotropic: bool = False,
    knn: int | None = None,
    max_n: int | None = 10_000,
    seed: int = 0,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Entropy (bits) of the spectrum of an adjacency matrix of the rows of ``z``.

        H = -sum_i a_i log2 a_i,   a_i = |mu_i| / sum_j |mu_j|,

    ``mu`` the eigenvalues of: the Gaussian affinity ``G`` (default); its anisotropic
    normalisation ``Q^-1/2 G Q^-1/2`` (``anisotropic=True``, the DSE kernel, t = 1);
    or, with ``knn=k``, the binarised adjacency ``A_ij = [d_ij <= d_i(k)]`` where
    ``d_i(k)`` is row i's k-th smallest distance, itself included (not symmetric in
    general, so its complex eigenvalues' moduli are used, as the reference does).

    Example:
        >>> z = torch.eye(4) * 1000
        >>> round(float(adjacency_spectral_entropy(z)), 6)
        2.0
        >>> round(float(adjacency_spectral_entropy(z, knn=1)), 6)
        2.0
    """
    x = prepare_features(z, dtype=dtype, max_n=max_n, seed=seed)
    if knn is not None:
        if isinstance(knn, bool) or not isinstance(knn, int) or not 1 <= knn <= x.shape[0]:  # an upper bound too
            raise ValueError(f"knn must be an integer in [1, N={x.shape[0]}], got {knn!r}")
        # Binarising at the k-th distance makes ties decisive (duplicate rows): compute the
        # distances exactly as the reference does, with scikit-learn, not our centred product.
        from sklearn.metrics import pairwise_distances

        dist = torch.as_tensor(pairwise_distances(x.detach().cpu().numpy()), dtype=x.dtype, device=x.device)
        kth = dist.kthvalue(knn, dim=1).values
        adj = (dist <= kth[:, None]).to(x.dtype)
        lam = symmetric_eigvals(adj) if _is_symmetric(adj) else general_eigvals_abs(adj)
    else:
        g = gaussian_affinity(squared_distances(x), resolve_sigma(sigma, x, seed))
        if anisotropic:
            g = affinity_to_diffusion_kernel(g)
        lam = symmetric_eigvals(g)
    return entropy_of_spectrum(lam, 1)


def matrix_entry_entropy(
    z: Any, sigma: Sigma = 10.0, *, max_n: int | None = 10_000, seed: int = 0, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Entropy (bits) of the entries of the row-normalised diffusion kernel.

        M = R^-1 K,  r_i = sum_j K_ij,  p_ij = |M_ij| / sum |M|,  H = -sum p log2 p,

    with ``K = Q^-1/2 G Q^-1/2`` (the reference's ``matrix_entry_entropy=True``).
    It lies in [log2 N, 2 log2 N].

    Example:
        >>> round(float(matrix_entry_entropy(torch.eye(4) * 1000)), 6)
        2.0
    """
    x = prepare_features(z, dtype=dtype, max_n=max_n, seed=seed)
    k = diffusion_kernel(x, resolve_sigma(sigma, x, seed))
    m = (k / k.sum(dim=1, keepdim=True)).abs().flatten()
    return shannon_bits(m / m.sum())
