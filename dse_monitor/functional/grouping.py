"""Turning a reference variable B into groups, exactly as the reference package does."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._checks import as_tensor, check_int


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def reference_groups(
    reference: Any, *, n_clusters: int = 10, reference_discrete: bool | None = None, seed: int = 0
) -> torch.Tensor:
    """Group ids [N] (int64) of a reference variable, for mutual information.

    - discrete labels (one column of integers, or ``reference_discrete=True``): as they are;
    - one continuous column: min-max scaled and cut into ``n_clusters`` equal bins
      (ids 1..n_clusters, as ``np.digitize`` numbers them);
    - vectors [N, D'] (inputs with more dimensions are flattened): spectral clustering,
      ``SpectralClustering(n_clusters, affinity='nearest_neighbors',
      assign_labels='cluster_qr', random_state=seed)``; ``seed=0`` reproduces the
      reference's clusters.

    Clustering is the expensive part: compute the groups once and pass them as
    ``groups=`` to the mutual-information functions.

    Example:
        >>> reference_groups(torch.tensor([3, 1, 3, 2]))
        tensor([3, 1, 3, 2])
        >>> reference_groups(torch.tensor([0.0, 0.45, 0.55, 1.0]), n_clusters=2)
        tensor([1, 1, 2, 2])
    """
    ref = as_tensor(reference, "reference")
    if ref.ndim == 0 or ref.shape[0] == 0:
        raise ValueError(f"reference must hold one entry per sample; got shape {tuple(ref.shape)}")
    device = ref.device
    arr = _as_numpy(ref)
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    elif arr.ndim > 2:
        arr = arr.reshape(arr.shape[0], -1)
    n, width = arr.shape
    if reference_discrete is None:
        reference_discrete = width == 1 and np.issubdtype(arr.dtype, np.integer)
    if reference_discrete:
        if width != 1:
            raise ValueError(
                f"reference_discrete=True needs one label per sample (shape [N] or [N, 1]); got {tuple(ref.shape)}"
            )
        labels = arr.reshape(-1)
        if np.issubdtype(labels.dtype, np.integer):
            return torch.as_tensor(labels.astype(np.int64), device=device)
        if np.issubdtype(labels.dtype, np.floating) and not np.isfinite(labels).all():
            raise ValueError("reference labels contain NaN or Inf; repair them before grouping.")
        # Non-integer labels (0.5, 'cat', True) are groups by value, numbered in sorted order as the
        # reference's np.unique orders them: casting them to int would merge 0.0 and 0.5.
        return torch.as_tensor(np.unique(labels, return_inverse=True)[1].reshape(-1).astype(np.int64), device=device)
    check_int(n_clusters, "n_clusters")
    if not np.isfinite(arr).all():
        raise ValueError("reference has NaN or Inf entries; repair them before grouping.")
    if width == 1:
        with np.errstate(invalid="ignore", divide="ignore"):
            scaled = (arr - arr.min(axis=0)) / (arr.max(axis=0) - arr.min(axis=0))
        codes = np.digitize(scaled, bins=np.linspace(0, 1, n_clusters + 1)[:-1])
        return torch.as_tensor(codes.reshape(-1).astype(np.int64), device=device)
    if n <= n_clusters:
        raise ValueError(
            f"spectral clustering into n_clusters={n_clusters} needs more than {n_clusters} samples; got {n}. "
            "Lower n_clusters or pass more samples."
        )
    from sklearn.cluster import SpectralClustering  # imported lazily: only vectors need it

    labels = SpectralClustering(
        n_clusters=n_clusters, affinity="nearest_neighbors", assign_labels="cluster_qr", random_state=seed
    ).fit(arr).labels_
    return torch.as_tensor(labels.astype(np.int64), device=device)
