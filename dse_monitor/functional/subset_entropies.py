"""Entropies of many subsets of one point cloud: where and how each is solved.

DSMI needs the diffusion spectral entropy of dozens of subsets of the same rows. On the
CPU the exact solves run side by side in the solver pool, one BLAS thread each, each
building its own kernel (on an earlier subset's Gram where they share most rows:
:mod:`.subset_grams`); on CUDA the kernels are solved in batched calls, one per size or, where
the device's batched solve pays, one per band of nearby sizes (:mod:`.device_eigen`);
approximate solves run last, on the calling thread.
"""
from __future__ import annotations

from concurrent.futures import Future, wait
from functools import partial
from typing import Any, Callable, Iterable

import numpy as np
import torch

from . import backend
from .device_eigen import batched_eigvals
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
    """A function that gives the DSE of each of many subsets of the rows of ``x``, in bits.

    For a subset S (sorted row indices), with K_S the diffusion kernel of the rows x[S]
    (:func:`~.kernel.diffusion_kernel`, centred on the subset's own mean):

        H(S) = -sum_i a_i log2 a_i,   a_i = |lambda_i(K_S)|^t / sum_j |lambda_j(K_S)|^t,

    and H(S) = 0 for a subset of at most one row: the entropies in
    ``DSMI = sum_b p(b) [mean_r H(Z_r^(b)) - H(Z | B = b)]``. Each value equals
    :func:`~.entropy.diffusion_spectral_entropy` of x[S] (no further subsample), float32
    spectra at the rounding floor solved again in float64 as there.

    Args:
        x: validated features [N, D] in the compute dtype.
        sigma: the resolved bandwidth (a positive float).
        t: diffusion time.
        solver: ``"exact"``, ``"lanczos"`` or ``"auto"`` (decided per subset by its size).
        seed, streamed, options: of the approximate solver (:func:`~.solver.lanczos_entropy`).

    Returns:
        ``entropies(subsets) -> list of 0-dim tensors``, one per subset, in order.

    Example:
        >>> from dse_monitor.functional import diffusion_spectral_entropy
        >>> x = torch.randn(100, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> h = diffusion_subset_entropies(x, sigma=1.0, t=1)([np.arange(50), np.arange(40, 100), np.array([7])])
        >>> bool(torch.allclose(h[1], diffusion_spectral_entropy(x[40:], 1.0))), float(h[2])
        (True, 0.0)
    """
    return _SubsetSolves(x, sigma, t, solver, seed, streamed, options, alpha, knn)


class _SubsetSolves:
    """Where and how each subset is solved (module docstring); one instance per DSMI call.

    On the CPU each exact solve builds its own kernel inside a worker thread, on an
    earlier subset's Gram where they share most rows (planned once every subset is
    known: .subset_grams); on CUDA the exact solves are batched. Approximate solves
    run last, on the calling thread. Autograd needs every solve on the calling thread.
    """

    def __init__(self, x: torch.Tensor, sigma: float, t: float, solver: str, seed: int, streamed: bool | None,
                 options: dict[str, Any] | None, alpha: float = 0.0, knn: int | None = None) -> None:
        self.x, self.sigma, self.t, self.solver = x, sigma, t, solver
        self.seed, self.streamed, self.options = seed, streamed, options
        self.alpha, self.knn = alpha, knn  # knn: each subset's kNN kernel from its own rows (neighbours within it)
        use_full = x.is_cuda and x.dtype == torch.float64 and x.shape[0] <= FULL_DISTANCE_MAX_N and solver != "lanczos" \
            and knn is None
        self.full = squared_distances(x) if use_full else None
        # On the CPU without a gradient a subset's Gram is built on an earlier subset's where
        # they share most rows (the reference's draws overlap heavily: see .subset_grams).
        self.shared = SharedGrams(x, sigma) if backend.eligible(x) and knn is None and not alpha else None

    def __call__(self, subsets: Iterable[np.ndarray]) -> list[torch.Tensor]:
        # numpy's BLAS has one process-wide thread count: one thread for each solve in the pool.
        with backend.numpy_blas_threads(1):
            return self._solve_all(list(subsets))

    def _rows(self, idx: np.ndarray) -> torch.Tensor:
        return self.x.index_select(0, index_on(idx, self.x.device))  # half the time of x[list]

    def _kernel(self, idx: np.ndarray) -> torch.Tensor:
        if self.full is None:  # each subset centred on its own mean: a class can sit far from the global one
            return diffusion_kernel_of(self._rows(idx), self.sigma, self.alpha, self.knn)
        i = index_on(idx, self.x.device)
        return affinity_to_diffusion_kernel(gaussian_affinity(self.full[i[:, None], i[None, :]], self.sigma), self.alpha)

    def _entropy_checked(self, idx: np.ndarray, lam: torch.Tensor) -> torch.Tensor:
        # a collapsed subset in float32: solved again in float64, as DSE does (the rows are
        # gathered again only then)
        if at_float32_floor(lam, self.t):
            lam = float64_if_collapsed(self._rows(idx), self.sigma, lam, self.t, self.alpha, self.knn)
        return entropy_of_spectrum(lam, self.t).to(self.x.dtype)

    def _exact(self, idx: np.ndarray, plan: Plan | None = None) -> torch.Tensor:
        k = None if plan is None else self.shared.kernel(idx, plan)
        return self._entropy_checked(idx, symmetric_eigvals(self._kernel(idx) if k is None else k))

    def _exact_in_worker(self, idx: np.ndarray, plan: Plan | None) -> torch.Tensor:
        with torch.no_grad():  # grad mode is per thread; threaded solves never need a graph
            return self._exact(idx, plan)

    def _approx(self, idx: np.ndarray) -> torch.Tensor:
        est = lanczos_entropy(self._rows(idx), self.sigma, self.t, seed=self.seed, streamed=self.streamed,
                              options=self.options, alpha=self.alpha, knn=self.knn)
        return torch.tensor(est.value, dtype=self.x.dtype, device=self.x.device)

    def _solve_all(self, subsets: list[np.ndarray]) -> list[torch.Tensor]:
        x = self.x
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        threaded = not x.is_cuda and torch.get_num_threads() > 1 and not (x.requires_grad and torch.is_grad_enabled())
        approximate = [len(s) > 1 and choose_solver(len(s), self.t, self.solver, x.dtype) == "lanczos" for s in subsets]
        exact_ones = [i for i, s in enumerate(subsets) if len(s) > 1 and not approximate[i]]
        plans = {} if self.shared is None else dict(zip(exact_ones, self.shared.plan([subsets[i] for i in exact_ones])))
        jobs: list[Any] = []  # a tensor, a Future (pool), a callable (approximate, run last) or None (CUDA batch)
        batched: list[np.ndarray] = []  # CUDA: the exact subsets, in order (their jobs are None)
        checked = 0
        try:
            for i, s in enumerate(subsets):
                if len(s) > 1 and not approximate[i] and len(s) > checked:
                    check_exact_fits(len(s), x.dtype, x.device)  # raised before anything is allocated
                    checked = len(s)
                jobs.append(self._job(s, approximate[i], plans.get(i), zero, threaded, batched))
            if batched:
                spectra = iter(zip(batched, batched_subset_eigvals([self._kernel(s) for s in batched])))
                jobs = [self._entropy_checked(*next(spectra)) if j is None else j for j in jobs]
            jobs = [j.result() if isinstance(j, Future) else j for j in jobs]
        except BaseException:
            _cancel_and_wait(jobs)
            raise
        return [j() if callable(j) else j for j in jobs]

    def _job(self, s: np.ndarray, approximate: bool, plan: Plan | None, zero: torch.Tensor, threaded: bool,
             batched: list[np.ndarray]) -> Any:
        """The job of one subset: its value, a Future, a callable, or None (added to ``batched``)."""
        if len(s) <= 1:
            return zero
        if approximate:
            return partial(self._approx, s)
        if self.x.is_cuda:
            batched.append(s)
            return None
        if not threaded:
            return self._exact(s, plan)
        job = solver_pool().submit(self._exact_in_worker, s, plan)
        if plan is not None and plan.role == "base":  # cancelled: its subsets build alone
            job.add_done_callback(lambda _, p=plan: SharedGrams.abandon(p))
        return job


def _cancel_and_wait(jobs: list[Any]) -> None:
    # Leave nothing running behind an error (a MemoryError's caller may retry on
    # another path and needs the memory and the cores): cancel, then wait.
    pending = [j for j in jobs if isinstance(j, Future)]
    for f in pending:
        f.cancel()
    wait(pending)


def batched_subset_eigvals(mats: list[torch.Tensor]) -> list[torch.Tensor]:
    """Eigenvalues of many kernels on one device: batched calls (:func:`.device_eigen.batched_eigvals`),
    or one by one where a gradient is needed."""
    if not mats or (torch.is_grad_enabled() and any(m.requires_grad for m in mats)):
        return [symmetric_eigvals(m) for m in mats]
    return batched_eigvals(mats, symmetric_eigvals, available_memory(mats[0].device))
