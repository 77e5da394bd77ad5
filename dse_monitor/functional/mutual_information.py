"""Diffusion spectral mutual information (DSMI) and its binning baseline (CSMI).

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
from concurrent.futures import Future, wait
from dataclasses import dataclass, replace
from functools import lru_cache, partial
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from . import backend
from ._checks import as_tensor, check_features, check_int, check_max_n, check_positive
from .entropy import classic_shannon_entropy, float64_if_collapsed
from .grouping import reference_groups
from .kernel import Sigma, affinity_to_diffusion_kernel, diffusion_kernel, gaussian_affinity, resolve_sigma, squared_distances
from .operator import available_memory, check_exact_fits
from .solver import check_options, check_solver, choose_solver, lanczos_entropy
from .spectrum import at_float32_floor, entropy_of_spectrum, solver_pool, symmetric_eigvals
from .subset_grams import Plan, SharedGrams

#: On CUDA in float64, up to this N the full distance matrix is computed once and each
#: subset's block is gathered from it. Elsewhere each subset's kernel is built from the
#: subset alone, centred on its own mean: in float32 that keeps classes far from the
#: global mean accurate, and on the CPU one small product per subset (inside its worker
#: thread) measured 2.7x cheaper than gathering random blocks at N = 5,000, D = 512.
FULL_DISTANCE_MAX_N = 8192


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


def _index_on(idx: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(idx).to(device)


#: Solves the entropies of the given subsets (sorted int64 index arrays), in order.
SubsetEntropies = Callable[[Iterable[np.ndarray]], list[torch.Tensor]]


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


def _diffusion_subset_entropies(
    x: torch.Tensor,
    sigma: float,
    t: float,
    solver: str = "exact",
    seed: int = 0,
    streamed: bool | None = None,
    options: dict[str, Any] | None = None,
) -> SubsetEntropies:
    use_full = x.is_cuda and x.dtype == torch.float64 and x.shape[0] <= FULL_DISTANCE_MAX_N and solver != "lanczos"
    full = squared_distances(x) if use_full else None

    def rows(idx: np.ndarray) -> torch.Tensor:
        return x.index_select(0, _index_on(idx, x.device))  # half the time of x[list]

    def kernel(idx: np.ndarray) -> torch.Tensor:
        if full is None:  # each subset centred on its own mean: a class can sit far from the global one
            return diffusion_kernel(rows(idx), sigma)
        i = _index_on(idx, x.device)
        return affinity_to_diffusion_kernel(gaussian_affinity(full[i[:, None], i[None, :]], sigma))

    def entropy_checked(idx: np.ndarray, lam: torch.Tensor) -> torch.Tensor:
        # a collapsed subset in float32: solved again in float64, as DSE does (the rows are
        # gathered again only then)
        if at_float32_floor(lam, t):
            lam = float64_if_collapsed(rows(idx), sigma, lam, t)
        return entropy_of_spectrum(lam, t).to(x.dtype)

    # On the CPU without a gradient a subset's Gram is built on an earlier subset's where
    # they share most rows (the reference's draws overlap heavily: see .subset_grams).
    shared = SharedGrams(x, sigma) if backend.eligible(x) else None

    def exact(idx: np.ndarray, plan: Plan | None = None) -> torch.Tensor:
        k = None if plan is None else shared.kernel(idx, plan)
        return entropy_checked(idx, symmetric_eigvals(kernel(idx) if k is None else k))

    def exact_in_worker(idx: np.ndarray, plan: Plan | None) -> torch.Tensor:
        with torch.no_grad():  # grad mode is per thread; threaded solves never need a graph
            return exact(idx, plan)

    def approx(idx: np.ndarray) -> torch.Tensor:
        est = lanczos_entropy(rows(idx), sigma, t, seed=seed, streamed=streamed, options=options)
        return torch.tensor(est.value, dtype=x.dtype, device=x.device)

    def run(subsets: Iterable[np.ndarray]) -> list[torch.Tensor]:
        # On the CPU each exact solve builds its own kernel inside a worker thread, on an
        # earlier subset's Gram where they share most rows (planned once every subset is
        # known: .subset_grams); on CUDA the exact solves are batched. Approximate solves
        # run last, on this thread. Autograd needs every solve on this thread.
        subsets = list(subsets)
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        threaded = not x.is_cuda and torch.get_num_threads() > 1 and not (x.requires_grad and torch.is_grad_enabled())
        approximate = [len(s) > 1 and choose_solver(len(s), t, solver, x.dtype) == "lanczos" for s in subsets]
        exact_ones = [i for i, s in enumerate(subsets) if len(s) > 1 and not approximate[i]]
        plans = dict(zip(exact_ones, shared.plan([subsets[i] for i in exact_ones]))) if shared is not None else {}
        jobs: list[Any] = []
        batched: list[np.ndarray] = []  # CUDA: the exact subsets, in order (their jobs are None)
        checked = 0
        try:
            for i, s in enumerate(subsets):
                if len(s) <= 1:
                    jobs.append(zero)
                elif approximate[i]:
                    jobs.append(partial(approx, s))
                else:
                    if len(s) > checked:
                        check_exact_fits(len(s), x.dtype, x.device)
                        checked = len(s)
                    plan = plans.get(i)
                    if x.is_cuda:
                        batched.append(s)
                        jobs.append(None)
                    elif threaded:
                        jobs.append(solver_pool().submit(exact_in_worker, s, plan))
                        if plan is not None and plan.role == "base":  # cancelled: its subsets build alone
                            jobs[-1].add_done_callback(lambda _, p=plan: SharedGrams.abandon(p))
                    else:
                        jobs.append(exact(s, plan))
            if batched:
                spectra = iter(zip(batched, _batched_cuda_eigvals([kernel(s) for s in batched])))
                jobs = [entropy_checked(*next(spectra)) if j is None else j for j in jobs]
            jobs = [j.result() if isinstance(j, Future) else j for j in jobs]
        except BaseException:
            # Leave nothing running behind an error (a MemoryError's caller may retry on
            # another path and needs the memory and the cores): cancel, then wait.
            pending = [j for j in jobs if isinstance(j, Future)]
            for f in pending:
                f.cancel()
            wait(pending)
            raise
        return [j() if callable(j) else j for j in jobs]

    def run_with_one_blas_thread(subsets: Iterable[np.ndarray]) -> list[torch.Tensor]:
        # numpy's BLAS has one process-wide thread count: one thread for each solve in the pool.
        with backend.numpy_blas_threads(1):
            return run(subsets)

    return run_with_one_blas_thread


def _batched_cuda_eigvals(mats: list[torch.Tensor]) -> list[torch.Tensor]:
    """Eigenvalues of many kernels on CUDA: one batched ``eigvalsh`` per size (chunked to fit)."""
    if not mats or (torch.is_grad_enabled() and any(m.requires_grad for m in mats)):
        return [symmetric_eigvals(m) for m in mats]
    out: list[torch.Tensor | None] = [None] * len(mats)
    by_size: dict[int, list[int]] = {}
    for i, m in enumerate(mats):
        by_size.setdefault(m.shape[-1], []).append(i)
    free = available_memory(mats[0].device)
    for size, idx in by_size.items():
        per = 3 * size * size * mats[0].element_size()
        chunk = max(1, min(len(idx), int(0.25 * free) // max(per, 1)))
        for start in range(0, len(idx), chunk):
            part = idx[start : start + chunk]
            lam = symmetric_eigvals(torch.stack([mats[i] for i in part]))
            for j, i in enumerate(part):
                out[i] = lam[j]
    return out  # type: ignore[return-value]


def diffusion_spectral_mutual_information(
    z: Any,
    reference: Any = None,
    *,
    sigma: Sigma = 10.0,
    t: float = 1,
    reference_discrete: bool | None = None,
    n_clusters: int = 10,
    groups: Any = None,
    num_repetitions: int = 5,
    seed: int = 0,
    max_n: int | None = 10_000,
    dtype: torch.dtype | None = None,
    return_terms: bool = False,
    solver: str = "exact",
    memory_fallback: bool = False,
    streamed: bool | None = None,
    lanczos_options: dict[str, Any] | None = None,
) -> torch.Tensor | tuple[torch.Tensor, MutualInformationTerms]:
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
        return_terms: also return the :class:`MutualInformationTerms`.
        solver, streamed, lanczos_options: how each entropy is computed, as in
            :func:`diffusion_spectral_entropy` (``"auto"`` decides per subset by its size).
        memory_fallback: when a group is too large for an exact solve in the free
            memory, compute every entropy with the streamed approximate solver instead
            of raising (t in {1, 2}; the reason is in ``MutualInformationTerms.fallback``).

    A group with a single member contributes 0 (DSE of one point is 0 on both sides).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> labels = torch.arange(200) % 2
        >>> z = torch.randn(200, 3, generator=g) + 40 * labels[:, None]
        >>> mi = diffusion_spectral_mutual_information(z, labels, sigma=2.0)
        >>> bool(mi > 0.5)
        True
    """
    x = check_features(z, dtype=dtype)
    check_positive(t, "t")
    num_repetitions = check_int(num_repetitions, "num_repetitions")
    max_n = check_max_n(max_n)
    g = _resolve_groups(x.shape[0], reference, groups, n_clusters, reference_discrete, seed)
    s = resolve_sigma(sigma, x, seed)
    check_solver(solver)
    check_options(lanczos_options)
    entropies = _diffusion_subset_entropies(x, s, t, solver, seed, streamed, lanczos_options)
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
        entropies = _diffusion_subset_entropies(x, s, t, "lanczos", seed, True, lanczos_options)
        terms = _mutual_information(x.shape[0], g, entropies, num_repetitions, seed, max_n)
        terms = replace(terms, fallback=f"{too_large} Used the streamed approximate solver instead.")
    return (terms.value, terms) if return_terms else terms.value


def classic_shannon_mutual_information(
    z: Any,
    reference: Any = None,
    *,
    num_bins_per_dim: int = 2,
    reference_discrete: bool | None = None,
    n_clusters: int = 10,
    groups: Any = None,
    num_repetitions: int = 5,
    seed: int = 0,
    max_n: int | None = 10_000,
    dtype: torch.dtype | None = None,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, MutualInformationTerms]:
    """Classic Shannon mutual information CSMI(Z; B): DSMI's formula with CSE.

        CSMI(Z; B) = sum_b p(b) [ mean_r CSE(Z_r^(b)) - CSE(Z | B = b) ]

    Arguments as in :func:`diffusion_spectral_mutual_information`; the binning is
    that of :func:`classic_shannon_entropy` (min-max scaled within each subset).

    Example:
        >>> z = torch.tensor([[0.0, 0.0]] * 6 + [[1.0, 1.0]] * 6)
        >>> labels = torch.tensor([0] * 6 + [1] * 6)
        >>> round(float(classic_shannon_mutual_information(z, labels)), 2)
        0.97
    """
    x = check_features(z, dtype=dtype)
    num_repetitions = check_int(num_repetitions, "num_repetitions")
    g = _resolve_groups(x.shape[0], reference, groups, n_clusters, reference_discrete, seed)

    def run(subsets: Iterable[np.ndarray]) -> list[torch.Tensor]:
        return [classic_shannon_entropy(x[_index_on(s, x.device)], num_bins_per_dim, max_n=None, dtype=x.dtype)
                for s in subsets]

    terms = _mutual_information(x.shape[0], g, run, num_repetitions, seed, check_max_n(max_n))
    return (terms.value, terms) if return_terms else terms.value
