"""Diffusion spectral mutual information (DSMI); its binning baseline CSMI is in :mod:`.classic_mutual_information`.

    MI(Z; B) = sum_b p(b) [ mean_r H(Z_r^(b)) - H(Z | B = b) ]

``Z | B = b`` are the rows of group b; ``Z_r^(b)`` is the r-th of ``num_repetitions``
random subsets of the same size |b|, so both terms see the same N (entropy grows
with N). The subsets are drawn exactly as the reference package draws them
(Python's ``random`` re-seeded with ``seed`` for every group), so results agree
with it term by term, not only in distribution. Groups of equal size therefore
share their subsets; each distinct subset is solved once.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ._checks import as_tensor, check_features, check_int, check_max_n, check_positive
from ._deprecation import warn_deprecated
from .grouping import reference_groups
from .kernel import Sigma, resolve_sigma
from .kernel_choice import DEFAULT_K, check_groups_for_knn, kernel_choice
from .solver import check_options, check_solver
from .row_group import RowGroup
from .shared_subsets import shared_subset_entropies
from .subset_entropies import SubsetEntropies, diffusion_subset_entropies


@dataclass(frozen=True)
class MutualInformationTerms:
    """The pieces of a mutual-information estimate, one entry per group (sorted ids).

    ``value = sum(weights * (unconditional - conditional))``.
    """

    value: torch.Tensor
    group_ids: torch.Tensor
    weights: torch.Tensor
    conditional: torch.Tensor
    unconditional: torch.Tensor
    unconditional_draws: torch.Tensor  # [G, num_repetitions]
    #: Why the requested solver was left (an exact solve did not fit in memory), else None.
    fallback: str | None = None


@lru_cache(maxsize=32)
def _draws(n: int, k: int, num_repetitions: int, seed: int, max_n: int | None) -> tuple[np.ndarray, ...]:
    """The reference's random subsets for a group of size k out of n, each sorted.

    It re-seeds Python's ``random`` with ``seed`` before each group's draws; a subset
    larger than ``max_n`` is then subsampled inside its DSE call, which re-seeds the
    same generator with its own default seed, 0 (whatever ``seed`` is). Kept for the
    process: a monitor asks for the same draws every epoch, and drawing them in Python
    took 3% of a one-thread DSMI call and 7% of a two-thread one (N = 5,000, 10 classes).
    """
    rng = random.Random(seed)
    out = []
    for _ in range(num_repetitions):
        idx = rng.sample(range(n), k)
        if max_n is not None and k > max_n:
            rng.seed(0)
            idx = [idx[j] for j in rng.sample(range(k), max_n)]
        out.append(_sorted_indices(idx))
    return tuple(out)


def _sorted_indices(idx: Sequence[int] | np.ndarray) -> np.ndarray:
    # kept writeable (torch warns on read-only arrays); nothing writes into them
    return np.sort(np.asarray(idx, dtype=np.int64))


def _mutual_information(
    n: int,
    groups: torch.Tensor,
    subset_entropies: SubsetEntropies,
    num_repetitions: int,
    seed: int,
    max_n: int | None,
) -> MutualInformationTerms:
    labels = groups.detach().cpu().numpy().reshape(-1)
    ids, counts = np.unique(labels, return_counts=True)
    members = [np.flatnonzero(labels == g) for g in ids]
    for i, m in enumerate(members):
        if max_n is not None and len(m) > max_n:
            members[i] = m[random.Random(0).sample(range(len(m)), max_n)]  # the reference's inner seed
    members = [_sorted_indices(m) for m in members]
    draws: dict[int, tuple[np.ndarray, ...]] = {}
    index: dict[bytes, int] = {}

    def distinct_subsets() -> Iterator[np.ndarray]:
        # Members first, then the draws. Equal-sized groups share their draws; each distinct
        # subset is solved once.
        def every() -> Iterator[np.ndarray]:
            yield from members
            for k in dict.fromkeys(counts.tolist()):
                draws[k] = _draws(n, k, num_repetitions, seed, max_n)
                yield from draws[k]

        for subset in every():
            key = subset.tobytes()
            if key not in index:
                index[key] = len(index)
                yield subset

    values = subset_entropies(distinct_subsets())

    def h(subset: np.ndarray) -> torch.Tensor:
        return values[index[subset.tobytes()]]

    conditional = torch.stack([h(m) for m in members])
    per_draw = torch.stack([torch.stack([h(d) for d in draws[int(k)]]) for k in counts])
    unconditional = per_draw.mean(dim=1)
    weights = torch.as_tensor(counts / counts.sum(), dtype=conditional.dtype, device=conditional.device)
    value = (weights * (unconditional - conditional)).sum()
    return MutualInformationTerms(
        value, torch.as_tensor(ids), weights, conditional, unconditional, per_draw
    )


def _resolve_groups(
    n: int, reference: Any, groups: Any, n_clusters: int, reference_discrete: bool | None, seed: int
) -> torch.Tensor:
    if groups is None:
        if reference is None:
            raise ValueError("pass a reference (labels, scalars or vectors) or precomputed groups=")
        ref = as_tensor(reference, "reference")
        if ref.ndim == 0 or ref.shape[0] != n:
            raise ValueError(
                f"reference has {ref.shape[0] if ref.ndim else 0} entries but z has {n} rows; "
                "they must describe the same samples in the same order."
            )
        return reference_groups(ref, n_clusters=n_clusters, reference_discrete=reference_discrete, seed=seed)
    g = as_tensor(groups, "groups").reshape(-1)
    if g.is_floating_point() and not bool(torch.isfinite(g).all()):
        raise ValueError("groups has NaN or Inf entries; pass one finite group id per sample.")
    if g.shape[0] != n:
        raise ValueError(f"groups has {g.shape[0]} entries but z has {n} rows; pass one group id per sample.")
    return g


def diffusion_spectral_mutual_information(
    z: Any, reference: Any = None, *, sigma: Sigma = 10.0, t: float = 1, reference_discrete: bool | None = None,
    n_clusters: int = 10, groups: Any = None, num_repetitions: int = 5, seed: int = 0, max_n: int | None = 10_000,
    dtype: torch.dtype | None = None, solver: str = "exact", memory_fallback: bool = False,
    streamed: bool | None = None, lanczos_options: dict[str, Any] | None = None,
    kernel: str = "gaussian", k: int = DEFAULT_K, alpha: float = 0.0, return_terms: bool | None = None,
) -> torch.Tensor:
    """Diffusion spectral mutual information DSMI(Z; B) in bits.

        DSMI(Z; B) = sum_b p(b) [ mean_r DSE(Z_r^(b)) - DSE(Z | B = b) ]

    where ``Z_r^(b)`` are ``num_repetitions`` random subsets of Z of size |b|.

    Args:
        z: features [N, D] (torch tensor on any device, or numpy array).
        reference: B: integer labels [N], one continuous column, or vectors [N, ...]
            (see :func:`reference_groups`). Ignored when ``groups`` is given.
        sigma, t: as in :func:`diffusion_spectral_entropy` (a string sigma is
            resolved once on the whole of ``z``).
        reference_discrete, n_clusters: how ``reference`` becomes groups.
        groups: precomputed group ids [N] (e.g. from :func:`reference_groups`).
        num_repetitions: random subsets per group for the unconditional term.
        seed: seed of the subsets (and of the clustering).
        max_n: cap on the points of any one entropy, as in DSE.
        dtype: compute dtype (float64 by default).
        solver, streamed, lanczos_options: how each entropy is computed, as in
            :func:`diffusion_spectral_entropy` (``"auto"`` decides per subset by its size).
        memory_fallback: when a group is too large for an exact solve in the free
            memory, compute every entropy with the streamed approximate solver instead
            of raising (t in {1, 2}; the reason is in ``MutualInformationTerms.fallback``).
        kernel, k, alpha: the diffusion kernel, as in :func:`diffusion_spectral_entropy`;
            with ``kernel="knn"`` every subset builds its own kNN kernel (its neighbours
            within the subset), so every group needs more than k members.
        return_terms: deprecated (it returns ``(value, terms)`` for one more release);
            use :func:`diffusion_spectral_mutual_information_terms`.

    Returns:
        0-dim tensor (bits). The per-group terms and the fallback:
        :func:`diffusion_spectral_mutual_information_terms`.

    A group with a single member contributes 0 (DSE of one point is 0 on both sides).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> labels = torch.arange(200) % 2
        >>> z = torch.randn(200, 3, generator=g) + 40 * labels[:, None]
        >>> mi = diffusion_spectral_mutual_information(z, labels, sigma=2.0)
        >>> bool(mi > 0.5)
        True
    """
    if return_terms is not None:
        warn_deprecated("diffusion_spectral_mutual_information(return_terms=...)",
                        "diffusion_spectral_mutual_information_terms(...)")
    terms = diffusion_spectral_mutual_information_terms(
        z, reference, sigma=sigma, t=t, reference_discrete=reference_discrete, n_clusters=n_clusters, groups=groups,
        num_repetitions=num_repetitions, seed=seed, max_n=max_n, dtype=dtype, solver=solver,
        memory_fallback=memory_fallback, streamed=streamed, lanczos_options=lanczos_options, kernel=kernel, k=k,
        alpha=alpha,
    )
    return (terms.value, terms) if return_terms else terms.value


def diffusion_spectral_mutual_information_terms(
    z: Any, reference: Any = None, *, sigma: Sigma = 10.0, t: float = 1, reference_discrete: bool | None = None,
    n_clusters: int = 10, groups: Any = None, num_repetitions: int = 5, seed: int = 0, max_n: int | None = 10_000,
    dtype: torch.dtype | None = None, solver: str = "exact", memory_fallback: bool = False,
    streamed: bool | None = None, lanczos_options: dict[str, Any] | None = None,
    kernel: str = "gaussian", k: int = DEFAULT_K, alpha: float = 0.0, subset_group: RowGroup | None = None,
) -> MutualInformationTerms:
    """DSMI as :func:`diffusion_spectral_mutual_information` computes it, with its terms per group.

    ``subset_group``: processes holding the same ``z`` that share the subset solves out
    (:mod:`.shared_subsets`); every one of them calls this with the same arguments.

    Same arguments and the same ``value``: ``value = sum(weights * (unconditional -
    conditional))`` over the groups (sorted ``group_ids``), ``weights`` = p(b),
    ``conditional`` = DSE(Z | B = b), ``unconditional`` = the mean over the
    ``unconditional_draws`` [G, num_repetitions] of DSE(Z_r^(b)); ``fallback``: why the
    exact solver was left (``memory_fallback``), else None.

    Example:
        >>> labels = torch.arange(40) % 2
        >>> z = torch.randn(40, 3, generator=torch.Generator().manual_seed(0)) + 40 * labels[:, None]
        >>> terms = diffusion_spectral_mutual_information_terms(z, labels, sigma=2.0, num_repetitions=3)
        >>> terms.group_ids.tolist(), terms.weights.tolist(), tuple(terms.unconditional_draws.shape)
        ([0, 1], [0.5, 0.5], (2, 3))
        >>> bool(terms.value == diffusion_spectral_mutual_information(z, labels, sigma=2.0, num_repetitions=3))
        True
    """
    x = check_features(z, dtype=dtype)
    check_positive(t, "t")
    num_repetitions = check_int(num_repetitions, "num_repetitions")
    max_n = check_max_n(max_n)
    g = _resolve_groups(x.shape[0], reference, groups, n_clusters, reference_discrete, seed)
    knn = kernel_choice(kernel, k, alpha)
    if knn is not None:
        check_groups_for_knn(g, knn)
    s = float("nan") if knn is not None else resolve_sigma(sigma, x, seed)
    check_solver(solver)
    check_options(lanczos_options)
    group = subset_group if subset_group is not None else RowGroup.single()
    entropies = shared_subset_entropies(
        diffusion_subset_entropies(x, s, t, solver, seed, streamed, lanczos_options, alpha, knn), group, x)
    too_large = None
    try:
        terms = _mutual_information(x.shape[0], g, entropies, num_repetitions, seed, max_n)
    except MemoryError as err:  # raised before allocating: a group too large for an exact solve
        if not memory_fallback:
            raise
        if t not in (1, 2):
            raise MemoryError(f"{err} The approximate solver supports only t = 1 and 2 (t={t:g}).") from err
        too_large = str(err)
    if too_large is not None:  # outside the handler: its traceback would keep the exact path's memory
        del entropies
        entropies = shared_subset_entropies(
            diffusion_subset_entropies(x, s, t, "lanczos", seed, True, lanczos_options, alpha, knn), group, x)
        terms = _mutual_information(x.shape[0], g, entropies, num_repetitions, seed, max_n)
        terms = replace(terms, fallback=f"{too_large} Used the streamed approximate solver instead.")
    return terms
