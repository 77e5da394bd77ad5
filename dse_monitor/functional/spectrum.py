"""Eigen-solvers, and the entropy of a spectrum (:mod:`.spectral_entropy`, re-exported here).

CPU matrices: torch's or numpy's LAPACK, as :mod:`.backend` measured; CUDA ones: the way
:mod:`.device_eigen` measured; float32 spectra at the rounding floor are flagged for a float64 retry.
"""
from __future__ import annotations

import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import torch

from . import backend, lapack
from .device_eigen import device_eigvalsh
from .spectral_entropy import entropy_of_spectrum, shannon_bits  # noqa: F401 - imported from here by most callers


def symmetric_eigvals(k: torch.Tensor) -> torch.Tensor:
    """Eigenvalues (ascending) of a symmetric matrix or batch, with a float64 retry.

    Both solvers read only the lower triangle. A single CPU matrix that needs no
    gradient is solved by torch's or numpy's LAPACK, whichever :mod:`.backend` measured
    faster on this machine for its size and thread count. When a float32 solve
    reports non-convergence it is retried in float64 and cast back.

    >>> symmetric_eigvals(torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64))
    tensor([1., 3.], dtype=torch.float64)
    """
    try:
        return _eigvalsh(k)
    except (torch.linalg.LinAlgError, np.linalg.LinAlgError):
        if k.dtype == torch.float64:
            raise
        warnings.warn(f"eigvalsh failed in {k.dtype}; retrying in float64", RuntimeWarning, stacklevel=2)
        return torch.linalg.eigvalsh(k.double()).to(k.dtype)


def _eigvalsh(k: torch.Tensor) -> torch.Tensor:
    if k.device.type == "cuda" and k.shape[-1] >= 64 and not (k.requires_grad and torch.is_grad_enabled()):
        return device_eigvalsh(k)
    if k.ndim != 2 or k.shape[0] < 64 or not backend.eligible(k):
        return torch.linalg.eigvalsh(k)
    # Above backend.PROXY_N rows torch: a 1,024-row measurement chose numpy on an AMD EPYC
    # where torch was 1.3x faster at 4,000 rows on two threads (9.6 s vs 12.9 s).
    if backend.choose("eigvalsh", k.shape[0], (k.dtype,), partial(_eigvalsh_proxy, k.dtype), "torch") == "torch":
        return torch.linalg.eigvalsh(k)
    return _numpy_eigvalsh(k)


def _numpy_eigvalsh(k: torch.Tensor) -> torch.Tensor:
    # numpy's LAPACK routine, called without the GIL (.lapack) so that the solver pool's
    # threads solve side by side; numpy.linalg.eigvalsh itself where SciPy's table is missing
    solve = lapack.eigvalsh if lapack.AVAILABLE else np.linalg.eigvalsh
    return backend.numpy_call(lambda: solve(backend.as_numpy(k)))


def _eigvalsh_proxy(dtype: torch.dtype, n: int):
    g = torch.Generator().manual_seed(n)
    a = torch.rand(n, n, generator=g, dtype=torch.float64)
    a = ((a + a.T) / (2 * n)).to(dtype)

    def run(lib: str) -> torch.Tensor:
        return torch.linalg.eigvalsh(a) if lib == "torch" else _numpy_eigvalsh(a)

    return run


def general_eigvals_abs(a: torch.Tensor) -> torch.Tensor:
    """Moduli of the (complex) eigenvalues of a square matrix that may be non-symmetric.

    Solved with numpy's LAPACK ``geev``, the routine the reference package calls:
    a binarised kNN adjacency is typically defective (repeated eigenvalues with too
    few eigenvectors), so its eigenvalues move by eps^(1/m) under rounding, and
    torch's solver (another LAPACK build) disagrees with the reference by ~1e-7
    bits. The same routine on the same matrix gives the same numbers.
    """
    vals = np.linalg.eigvals(a.detach().cpu().numpy())
    return torch.as_tensor(np.abs(vals), dtype=a.dtype, device=a.device)


_POOL: ThreadPoolExecutor | None = None


def solver_pool() -> ThreadPoolExecutor:
    # A small LAPACK solve barely uses a second core; solving independent matrices
    # side by side, one thread each, does (measured ~1.9x on 2 cores at N = 500).
    global _POOL
    if _POOL is None:
        threads = torch.get_num_threads()
        workers = max(1, min(threads, os.cpu_count() or 1))
        started = threading.Barrier(workers + 1)

        def start_single_threaded() -> None:
            torch.get_num_threads()  # torch sets a thread's count lazily, from its default, on first use
            torch.set_num_threads(1)
            started.wait(timeout=60)

        pool = ThreadPoolExecutor(workers, initializer=start_single_threaded, thread_name_prefix=backend.POOL_PREFIX)
        for _ in range(workers):  # ThreadPoolExecutor starts its threads lazily: start all of them now
            pool.submit(lambda: None)
        started.wait(timeout=60)
        # set_num_threads in a worker also set torch's default for threads started later
        # (the user's, Lightning's); give that default back. The workers keep their one.
        torch.set_num_threads(threads)
        _POOL = pool
    return _POOL


#: float32 eigenvalues within this many epsilons of 0 (relative to the largest) are at the rounding floor.
FLOAT32_FLOOR_EPS = 16
#: Below this entropy (bits) a float32 spectrum with eigenvalues at the floor is solved again in float64.
FLOAT32_RETRY_BITS = 0.5


def at_float32_floor(eigenvalues: torch.Tensor, t: float = 1) -> bool:
    """Whether a float32 spectrum belongs to a nearly collapsed Z, whose entropy float32 gets wrong.

    A nearly collapsed representation has one eigenvalue near 1 and N - 1 whose true
    values lie far below float32's resolution: float32 returns them as rounding noise,
    and the noise's ``-a log a`` terms (|lambda| is always positive) bias the entropy up.
    Measured (N = 1,000-4,000, D = 256): errors of 1e-4 to 2.5e-4 bits where DSE is
    0.0006-0.04 bits, 1e-5 at 0.1 bits, below 1e-6 from 0.37 bits on; a spread spectrum
    has small eigenvalues too, but real ones, which float32 resolves (error ~1e-6).
    So: entropy below ``FLOAT32_RETRY_BITS`` and eigenvalues within ``FLOAT32_FLOOR_EPS``
    epsilons of 0; the caller then solves again in float64.

    >>> at_float32_floor(torch.tensor([1.0, 3e-7, -2e-7, 1e-7])), at_float32_floor(torch.tensor([0.5, 0.3, 0.2]))
    (True, False)
    """
    if eigenvalues.dtype != torch.float32 or eigenvalues.numel() < 2:
        return False
    lam = eigenvalues.detach().abs().double()
    if not bool((lam < FLOAT32_FLOOR_EPS * torch.finfo(torch.float32).eps * lam.max()).any()):
        return False
    return float(entropy_of_spectrum(lam, t)) < FLOAT32_RETRY_BITS
