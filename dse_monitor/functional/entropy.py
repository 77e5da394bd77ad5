"""Diffusion spectral entropy (DSE) and the classic binning entropy (CSE)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ._checks import check_int, check_positive, prepare_features
from ._deprecation import warn_deprecated
from .kernel import Sigma, resolve_sigma
from .kernel_choice import DEFAULT_K, diffusion_kernel_of, kernel_choice
from .lanczos import EntropyEstimate
from .operator import check_exact_fits
from .row_group import RowGroup
from .solver import check_solver, choose_solver, lanczos_entropy
from .spectrum import at_float32_floor, entropy_of_spectrum, shannon_bits, symmetric_eigvals


@dataclass(frozen=True)
class DiffusionEntropy:
    """DSE with what a monitor needs to report it (:func:`diffusion_spectral_entropy_details`).

    ``eigenvalues`` (descending) exist on the exact path only; ``solver`` is the path
    taken (``"exact"``, ``"lanczos"`` or ``"lanczos-streamed"``); ``fallback`` says why
    the requested path was left (the exact solve did not fit in memory), else None;
    ``approximation`` is the approximate path's :class:`EntropyEstimate`, else None.
    ``sigma`` is NaN for the kNN kernel (its bandwidths are per point).
    """

    value: torch.Tensor
    eigenvalues: torch.Tensor | None
    solver: str
    sigma: float
    n: int
    fallback: str | None = None
    approximation: EntropyEstimate | None = None

    @property
    def estimate(self) -> EntropyEstimate:
        """The value with its standard error and guaranteed bounds; degenerate on the exact path.

        On the exact path ``lower == value == upper`` and ``std_error == 0``.
        """
        if self.approximation is not None:
            return self.approximation
        value = float(self.value)
        return EntropyEstimate(value, 0.0, value, value, "exact", rank=self.n)


def diffusion_eigenvalues(
    z: Any, sigma: Sigma = 10.0, *, max_n: int | None = 10_000, seed: int = 0, dtype: torch.dtype | None = None,
    kernel: str = "gaussian", k: int = DEFAULT_K, alpha: float = 0.0,
) -> torch.Tensor:
    """Eigenvalues of the diffusion operator ``P = Q^-1 G`` of the rows of ``z``, descending.

    ``G_ij = exp(-||z_i - z_j||^2 / (2 sigma^2))``, ``q_i = sum_j G_ij``. The spectrum
    lies in [0, 1] (up to rounding) and starts with 1. ``kernel="knn"``: the adaptive
    kNN affinity with ``k`` neighbours instead of G (:mod:`.knn`; its spectrum lies in
    [-1, 1]); ``alpha``: density normalisation of either (0: none, the paper's).

    Args:
        z: features [N, D], torch tensor on any device or numpy array.
        sigma: kernel bandwidth: positive float, ``"sqrt_dim"`` or ``"median"``.
        max_n: above this many points, a seeded subsample (the reference's draw).
        seed: seed of that subsample.
        dtype: compute dtype (default float64).

    Example:
        >>> z = torch.tensor([[0.0], [0.1], [50.0]])
        >>> diffusion_eigenvalues(z, sigma=1.0).round(decimals=3)
        tensor([1.0000, 1.0000, 0.0020], dtype=torch.float64)
    """
    x = prepare_features(z, dtype=dtype, max_n=max_n, seed=seed)
    knn = kernel_choice(kernel, k, alpha, x.shape[0])
    return _exact_eigenvalues(x, _sigma(sigma, x, seed, knn), alpha, knn)


def _exact_eigenvalues(x: torch.Tensor, sigma: float, alpha: float = 0.0, knn: int | None = None) -> torch.Tensor:
    """The descending spectrum of already validated and subsampled features."""
    check_exact_fits(x.shape[0], x.dtype, x.device)
    if x.shape[0] == 1:
        return torch.ones(1, dtype=x.dtype, device=x.device)
    return symmetric_eigvals(diffusion_kernel_of(x, sigma, alpha, knn)).flip(-1)


def float64_if_collapsed(
    x: torch.Tensor, sigma: float, lam: torch.Tensor, t: float, alpha: float = 0.0, knn: int | None = None
) -> torch.Tensor:
    """``lam``, or the spectrum of ``x`` solved again in float64 where float32 cannot resolve it
    (:func:`~.spectrum.at_float32_floor`); ``lam`` still when float64 does not fit."""
    if not at_float32_floor(lam, t):
        return lam
    try:
        return _exact_eigenvalues(x.double(), sigma, alpha, knn)
    except (MemoryError, RuntimeError):  # the guard's estimate, or a real allocation failure (torch's OOM)
        return lam


def _sigma(sigma: Sigma, x: torch.Tensor, seed: int, knn: int | None) -> float:
    # the kNN kernel has its own bandwidths: sigma is not resolved (a "median" would cost a pass)
    return float("nan") if knn is not None else resolve_sigma(sigma, x, seed)


def _spectral_entropy(lam: torch.Tensor, t: float) -> torch.Tensor:
    return torch.zeros((), dtype=lam.dtype, device=lam.device) if lam.numel() == 1 else entropy_of_spectrum(lam, t)


def diffusion_spectral_entropy(
    z: Any, sigma: Sigma = 10.0, t: float = 1, *, max_n: int | None = 10_000, seed: int = 0,
    dtype: torch.dtype | None = None, solver: str = "exact", memory_fallback: bool = False,
    streamed: bool | None = None, lanczos_options: dict[str, Any] | None = None,
    kernel: str = "gaussian", k: int = DEFAULT_K, alpha: float = 0.0,
    return_bounds: bool | None = None, return_spectrum: bool | None = None,
) -> torch.Tensor:
    """Diffusion spectral entropy DSE(Z) in bits.

        DSE = -sum_i a_i log2 a_i,   a_i = |lambda_i|^t / sum_j |lambda_j|^t,

    with ``lambda`` the eigenvalues of the diffusion operator of the rows of ``z``
    (see :func:`diffusion_eigenvalues`). DSE lies in [0, log2 N]: 0 when all points
    coincide, log2 N when they are far apart relative to ``sigma``. DSE of a single
    point is defined as 0.

    The computation is differentiable: gradients reach ``z`` through
    ``torch.linalg.eigvalsh``. The gradient of a sum over the whole spectrum is well
    defined even at repeated eigenvalues, but it is not where an eigenvalue crosses 0
    (the absolute value) and it can be numerically large when eigenvalues are
    (nearly) repeated; clip gradients when using DSE as a loss.

    Args:
        z: features [N, D] (torch tensor on any device, or numpy array).
        sigma: Gaussian bandwidth on raw distances (default 10, the reference's);
            ``"sqrt_dim"`` for sqrt(D) or ``"median"`` for the median pairwise distance.
        t: diffusion time, the power of the eigenvalues (positive).
        max_n: at most this many points; larger sets are subsampled with ``seed``.
        seed: seed of that subsample (the same draw as the reference package).
        dtype: compute dtype, float64 by default; float32 is 1.5-4x faster, within 1.5e-6
            bits of float64 on the benchmark cases. A float32 spectrum whose entropy leans on
            eigenvalues at float32's rounding floor (a nearly collapsed Z, DSE near 0) is
            solved again in float64 (:func:`~.spectrum.at_float32_floor`).
        solver: ``"exact"`` (default: all eigenvalues, the reference's value),
            ``"lanczos"`` (deflated stochastic Lanczos quadrature with guaranteed
            bounds, t in {1, 2}, not differentiable; see :mod:`.lanczos`) or
            ``"auto"`` (exact up to the crossover measured at first use,
            :func:`~.solver.auto_crossover`, lanczos above).
        memory_fallback: when the exact solve does not fit in the free memory, use
            the streamed approximate path instead of raising (t in {1, 2} only; the
            reason is in ``DiffusionEntropy.fallback``).
        streamed: lanczos path only: never form K (memory O(N*D)); None decides
            from free memory (dense float64, dense float32, then streamed).
        lanczos_options: ``n_probes``, ``lanczos_steps``, ``block``, ``max_rank``,
            ``bound_tol``, ``lock_tol``, ``memory_limit`` (bytes), ``block_size``
            (streamed rows) of the lanczos path.
        kernel: ``"gaussian"`` (default, bandwidth ``sigma``) or ``"knn"``: the adaptive-
            bandwidth kNN kernel of manylatents (``sigma`` unused; :mod:`.knn`). Its
            approximate path runs on a sparse operator (memory O(N k)) and reports wider
            bounds: the kNN kernel has negative eigenvalues (:mod:`.indefinite`).
        k: neighbours of the kNN kernel (default 15; 1 <= k < N).
        alpha: density normalisation in [0, 1] (Coifman-Lafon, :mod:`.knn`): 0 (default)
            is the paper's operator; manylatents' default is kNN, k = 15, alpha = 1, t = 3.
        return_bounds, return_spectrum: deprecated (they return an
            :class:`EntropyEstimate` or a :class:`DiffusionEntropy` for one more release);
            use :func:`diffusion_spectral_entropy_details` and its ``.estimate``.

    Returns:
        0-dim tensor (bits) on ``z``'s device. The spectrum, the path taken, the fallback
        and the bounds: :func:`diffusion_spectral_entropy_details`.

    Raises:
        MemoryError: naming the sizes, when the chosen path cannot fit in memory
            (with ``memory_fallback``: only when the streamed path cannot either, or
            at t outside {1, 2}).

    Example:
        >>> far = torch.eye(8) * 1000          # 8 points far apart: P = I
        >>> round(float(diffusion_spectral_entropy(far)), 6)
        3.0
        >>> same = torch.ones(8, 4)            # 8 identical points: rank-one P
        >>> round(float(diffusion_spectral_entropy(same)), 6)
        0.0
    """
    if return_bounds and return_spectrum:
        raise ValueError("pass return_bounds or return_spectrum, not both")
    if return_bounds is not None:
        warn_deprecated("diffusion_spectral_entropy(return_bounds=...)",
                        "diffusion_spectral_entropy_details(...).estimate")
    elif return_spectrum is not None:
        warn_deprecated("diffusion_spectral_entropy(return_spectrum=...)", "diffusion_spectral_entropy_details(...)")
    res = diffusion_spectral_entropy_details(
        z, sigma, t, max_n=max_n, seed=seed, dtype=dtype, solver=solver, memory_fallback=memory_fallback,
        streamed=streamed, lanczos_options=lanczos_options, kernel=kernel, k=k, alpha=alpha,
    )
    if return_bounds:  # deprecated: what the flags returned before
        return res.estimate
    return res if return_spectrum else res.value


def diffusion_spectral_entropy_details(
    z: Any, sigma: Sigma = 10.0, t: float = 1, *, max_n: int | None = 10_000, seed: int = 0,
    dtype: torch.dtype | None = None, solver: str = "exact", memory_fallback: bool = False,
    streamed: bool | None = None, lanczos_options: dict[str, Any] | None = None,
    kernel: str = "gaussian", k: int = DEFAULT_K, alpha: float = 0.0, row_group: RowGroup | None = None,
) -> DiffusionEntropy:
    """DSE as :func:`diffusion_spectral_entropy` computes it, with the spectrum, the path taken and the bounds.

    Same arguments and the same ``value``. ``eigenvalues`` (descending) on the exact path;
    ``solver``: the path taken; ``sigma``: the resolved bandwidth; ``n``: the points used
    (after the ``max_n`` subsample); ``fallback``: why the exact path was left
    (``memory_fallback``); ``estimate``: an :class:`EntropyEstimate` with the standard error
    and guaranteed bounds (``lower == value == upper`` on the exact path).
    ``row_group``: processes that all call this with the same ``z`` and arguments and split the
    Lanczos kernel's rows (:func:`.solver.lanczos_entropy`); they follow rank 0's choice of path,
    and an exact solve (or its out-of-memory fallback) runs whole on each of them.

    Example:
        >>> res = diffusion_spectral_entropy_details(torch.eye(8) * 1000)
        >>> res.solver, res.eigenvalues.shape, res.n, round(res.estimate.upper, 6)
        ('exact', torch.Size([8]), 8, 3.0)
    """
    check_positive(t, "t")
    check_solver(solver)
    x = prepare_features(z, dtype=dtype, max_n=max_n, seed=seed)
    knn = kernel_choice(kernel, k, alpha, x.shape[0])
    s = _sigma(sigma, x, seed, knn)
    n = x.shape[0]
    path = choose_solver(n, t, solver, x.dtype) if n > 1 else "exact"
    if row_group is not None and row_group.world > 1:  # "auto" measures its crossover per process
        path = ("exact", "lanczos")[row_group.agree(("exact", "lanczos").index(path))]
    lam: torch.Tensor | None = None
    fallback: str | None = None
    if path == "exact":
        try:
            lam = _exact_eigenvalues(x, s, alpha, knn)
        except MemoryError as err:  # raised before allocating
            if not memory_fallback:
                raise
            if t not in (1, 2):
                raise MemoryError(f"{err} The approximate solver supports only t = 1 and 2 (t={t:g}).") from err
            fallback, path, streamed = f"{err} Used the streamed approximate solver instead.", "lanczos", True
    if lam is not None:
        lam = float64_if_collapsed(x, s, lam, t, alpha, knn)
        value = _spectral_entropy(lam, t).to(x.dtype)
        est = None
    else:
        group = row_group if fallback is None else None  # a fallback is this process's alone
        est = lanczos_entropy(x, s, t, seed=seed, streamed=streamed, options=lanczos_options, alpha=alpha, knn=knn,
                              row_group=group)
        value = torch.tensor(est.value, dtype=x.dtype, device=x.device)
        path = "lanczos-streamed" if est.storage.startswith("streamed") else "lanczos"
    return DiffusionEntropy(value, lam, path, float(s), n, fallback, est)


def _bin_codes(z: torch.Tensor, num_bins_per_dim: int) -> torch.Tensor:
    """Min-max scale each column to [0, 1] and bin it as ``np.digitize`` does."""
    lo = z.min(dim=0).values
    hi = z.max(dim=0).values
    scaled = (z - lo) / (hi - lo)  # constant columns give NaN, as in the reference ...
    edges = torch.linspace(0, 1, num_bins_per_dim + 1, dtype=z.dtype, device=z.device)[:-1]
    codes = torch.bucketize(scaled, edges, right=True)
    # ... where np.digitize puts NaN past the last edge; the column is constant anyway.
    return torch.where(torch.isnan(scaled), torch.full_like(codes, num_bins_per_dim), codes)


def entropy_of_counts(counts: torch.Tensor) -> torch.Tensor:
    """``-sum p log2 p`` of a histogram, ``p = counts / sum(counts) + eps``.

    >>> round(float(entropy_of_counts(torch.tensor([5, 5]))), 6)
    1.0
    """
    return shannon_bits(counts.double() / counts.sum())


def classic_shannon_entropy(
    z: Any, num_bins_per_dim: int = 2, *, max_n: int | None = 10_000, seed: int = 0, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Classic Shannon entropy CSE(Z) of binned features, in bits (the baseline DSE replaces).

    Each dimension is min-max scaled to [0, 1] and cut into ``num_bins_per_dim``
    equal bins; CSE is the entropy of the counts of distinct bin vectors. In high
    dimension every point gets its own bin and CSE saturates at log2 N. Above
    ``max_n`` points, the reference's seeded subsample (as in DSE).

    Example:
        >>> z = torch.tensor([[0.0, 0.0], [0.1, 0.0], [1.0, 1.0], [0.9, 1.0]])
        >>> round(float(classic_shannon_entropy(z)), 6)
        1.0
    """
    check_int(num_bins_per_dim, "num_bins_per_dim")
    x = prepare_features(z, dtype=dtype, max_n=max_n, seed=seed)
    _, counts = torch.unique(_bin_codes(x, num_bins_per_dim), dim=0, return_counts=True)
    return entropy_of_counts(counts).to(device=x.device, dtype=x.dtype)
