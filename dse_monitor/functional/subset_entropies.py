"""Entropies of many subsets of one point cloud: where and how each is solved.

DSMI needs the diffusion spectral entropy of dozens of subsets of the same rows. On the
CPU the exact solves run side by side in the solver pool, one BLAS thread each, each
building its own kernel (on an earlier subset's Gram where they share most rows:
:mod:`.subset_grams`); on CUDA equal-sized kernels are solved in one batched call;
approximate solves run last, on the calling thread.
"""
from __future__ import annotations

from concurrent.futures import Future, wait
from functools import partial
from typing import Any, Callable, Iterable

import numpy as np
import torch

from . import backend
from .entropy import float64_if_collapsed
from .kernel import affinity_to_diffusion_kernel, gaussian_affinity, squared_distances
from .kernel_choice import diffusion_kernel_of
from .operator import available_memory, check_exact_fits
from .solver import choose_solver, lanczos_entropy
from .spectrum import at_float32_floor, entropy_of_spectrum, solver_pool, symmetric_eigvals
from .subset_grams import Plan, SharedGrams

#: On CUDA in float64, up to this N the full distance matrix is computed once and each
#: subset's block is gathered from it. Elsewhere each subset's kernel is built from the
#: subset alone, centred on its own mean: in float32 that keeps classes far from the
#: global mean accurate, and on the CPU one small product per subset (inside its worker
#: thread) measured 2.7x cheaper than gathering random blocks at N = 5,000, D = 512.
FULL_DISTANCE_MAX_N = 8192


def index_on(idx: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(idx).to(device)


#: Solves the entropies of the given subsets (sorted int64 index arrays), in order.
SubsetEntropies = Callable[[Iterable[np.ndarray]], list[torch.Tensor]]


def diffusion_subset_entropies(
    x: torch.Tensor,
    sigma: float,
    t: float,
    solver: str = "exact",
    seed: int = 0,
    streamed: bool | None = None,
    options: dict[str, Any] | None = None,
    alpha: float = 0.0,
    knn: int | None = None,
) -> SubsetEntropies:
    # knn: each subset's kNN kernel from its own rows (its neighbours within the subset)
    use_full = x.is_cuda and x.dtype == torch.float64 and x.shape[0] <= FULL_DISTANCE_MAX_N and solver != "lanczos" \
        and knn is None
    full = squared_distances(x) if use_full else None

    def rows(idx: np.ndarray) -> torch.Tensor:
        return x.index_select(0, index_on(idx, x.device))  # half the time of x[list]

    def kernel(idx: np.ndarray) -> torch.Tensor:
        if full is None:  # each subset centred on its own mean: a class can sit far from the global one
            return diffusion_kernel_of(rows(idx), sigma, alpha, knn)
        i = index_on(idx, x.device)
        return affinity_to_diffusion_kernel(gaussian_affinity(full[i[:, None], i[None, :]], sigma), alpha)

    def entropy_checked(idx: np.ndarray, lam: torch.Tensor) -> torch.Tensor:
        # a collapsed subset in float32: solved again in float64, as DSE does (the rows are
        # gathered again only then)
        if at_float32_floor(lam, t):
            lam = float64_if_collapsed(rows(idx), sigma, lam, t, alpha, knn)
        return entropy_of_spectrum(lam, t).to(x.dtype)

    # On the CPU without a gradient a subset's Gram is built on an earlier subset's where
    # they share most rows (the reference's draws overlap heavily: see .subset_grams).
    shared = SharedGrams(x, sigma) if backend.eligible(x) and knn is None and not alpha else None

    def exact(idx: np.ndarray, plan: Plan | None = None) -> torch.Tensor:
        k = None if plan is None else shared.kernel(idx, plan)
        return entropy_checked(idx, symmetric_eigvals(kernel(idx) if k is None else k))

    def exact_in_worker(idx: np.ndarray, plan: Plan | None) -> torch.Tensor:
        with torch.no_grad():  # grad mode is per thread; threaded solves never need a graph
            return exact(idx, plan)

    def approx(idx: np.ndarray) -> torch.Tensor:
        est = lanczos_entropy(rows(idx), sigma, t, seed=seed, streamed=streamed, options=options, alpha=alpha, knn=knn)
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
                spectra = iter(zip(batched, batched_cuda_eigvals([kernel(s) for s in batched])))
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


def batched_cuda_eigvals(mats: list[torch.Tensor]) -> list[torch.Tensor]:
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
