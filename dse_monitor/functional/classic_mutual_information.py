"""Classic Shannon mutual information (CSMI): DSMI's formula with the binning entropy, the baseline
the paper compares DSMI with (the same groups, subsets and draws as :mod:`.mutual_information`).
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch

from ._checks import check_features, check_int, check_max_n
from ._deprecation import warn_deprecated
from .entropy import classic_shannon_entropy
from .mutual_information import MutualInformationTerms, _mutual_information, _resolve_groups
from .subset_entropies import index_on

__all__ = ["classic_shannon_mutual_information", "classic_shannon_mutual_information_terms"]


def classic_shannon_mutual_information(
    z: Any, reference: Any = None, *, num_bins_per_dim: int = 2, reference_discrete: bool | None = None,
    n_clusters: int = 10, groups: Any = None, num_repetitions: int = 5, seed: int = 0, max_n: int | None = 10_000,
    dtype: torch.dtype | None = None,
    return_terms: bool | None = None,
) -> torch.Tensor:
    """Classic Shannon mutual information CSMI(Z; B): DSMI's formula with CSE.

        CSMI(Z; B) = sum_b p(b) [ mean_r CSE(Z_r^(b)) - CSE(Z | B = b) ]

    Arguments as in :func:`diffusion_spectral_mutual_information`; the binning is
    that of :func:`classic_shannon_entropy` (min-max scaled within each subset).
    ``return_terms`` is deprecated: the terms come from
    :func:`classic_shannon_mutual_information_terms`.

    Example:
        >>> z = torch.tensor([[0.0, 0.0]] * 6 + [[1.0, 1.0]] * 6)
        >>> labels = torch.tensor([0] * 6 + [1] * 6)
        >>> round(float(classic_shannon_mutual_information(z, labels)), 2)
        0.97
    """
    if return_terms is not None:
        warn_deprecated("classic_shannon_mutual_information(return_terms=...)",
                        "classic_shannon_mutual_information_terms(...)")
    terms = classic_shannon_mutual_information_terms(
        z, reference, num_bins_per_dim=num_bins_per_dim, reference_discrete=reference_discrete, n_clusters=n_clusters,
        groups=groups, num_repetitions=num_repetitions, seed=seed, max_n=max_n, dtype=dtype,
    )
    return (terms.value, terms) if return_terms else terms.value


def classic_shannon_mutual_information_terms(
    z: Any, reference: Any = None, *, num_bins_per_dim: int = 2, reference_discrete: bool | None = None,
    n_clusters: int = 10, groups: Any = None, num_repetitions: int = 5, seed: int = 0, max_n: int | None = 10_000,
    dtype: torch.dtype | None = None,
) -> MutualInformationTerms:
    """CSMI as :func:`classic_shannon_mutual_information` computes it, with its terms per group
    (the fields of :func:`diffusion_spectral_mutual_information_terms`).

    Example:
        >>> z = torch.tensor([[0.0, 0.0]] * 6 + [[1.0, 1.0]] * 6)
        >>> terms = classic_shannon_mutual_information_terms(z, torch.tensor([0] * 6 + [1] * 6))
        >>> terms.group_ids.tolist(), terms.weights.tolist(), round(float(terms.value), 2)
        ([0, 1], [0.5, 0.5], 0.97)
    """
    x = check_features(z, dtype=dtype)
    num_repetitions = check_int(num_repetitions, "num_repetitions")
    g = _resolve_groups(x.shape[0], reference, groups, n_clusters, reference_discrete, seed)

    def run(subsets: Iterable[np.ndarray]) -> list[torch.Tensor]:
        return [classic_shannon_entropy(x[index_on(s, x.device)], num_bins_per_dim, max_n=None, dtype=x.dtype)
                for s in subsets]

    return _mutual_information(x.shape[0], g, run, num_repetitions, seed, check_max_n(max_n))
