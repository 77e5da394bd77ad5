"""Symmetric eigen-solves on a CUDA device: which library and precision, and many small ones at once.

Which way solves a matrix fastest depends on the build, the device and the size. On the
H200 measured for issue 23 a 500 x 500 float32 ``eigvalsh`` took 15 ms in torch, 4.4 ms
on a float64 copy and 4.3 ms in CuPy; at 1,000 rows all took about 10 ms. So the way
(:data:`DEVICE_SOLVERS`) is measured once per process, size class and device model
(:func:`.backend.choose_on_device`) on a diffusion kernel of clustered synthetic points
of the call's size, and only the ways whose entropy on that kernel lies within
:data:`ENTROPY_TOLERANCE_BITS` of the float64 solve's may win: on the same H200 float32
DSMI(Z;Y) came out 9.8e-5 bits from float64 (the CPU's LAPACK: 1.2e-7, N = 10,000,
10 classes), and a fast wrong value is no choice.

Many kernels at once (DSMI's subsets, :func:`batched_eigvals`): one batched call per
size. Where the device's batched solve beats separate calls (measured the same way, once),
kernels of nearby sizes (the largest at most :data:`PAD_RATIO` times the smallest) share
one call, zero-padded to the largest: ``diag(K, 0)`` has the spectrum of K and ``p``
zeros, and the ``p`` eigenvalues of smallest modulus are dropped. They are those zeros,
or eigenvalues of K at the rounding floor in their place, so the result is the spectrum
of K up to that floor: the unequal groups of a DSMI (about 950-1,050 rows, about 55
solves) then take a few batched calls instead of 55.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable

import torch

from . import backend
from .kernel import diffusion_kernel
from .spectral_entropy import entropy_of_spectrum

#: Ways to solve on a CUDA device: torch as it is, torch on a float64 copy (float32 input
#: only: more accurate, and faster on some builds and sizes), CuPy's ``eigvalsh`` when installed.
DEVICE_SOLVERS = ("torch", "torch64", "cupy")

#: Most a way's entropy (bits, t = 1) may differ from the float64 solve's on the proxy kernel.
#: DSMI adds and subtracts about two such entropies per unit of weight, so its error stays
#: within about 2e-6 bits, under issue 23's 1e-5 budget for float32.
ENTROPY_TOLERANCE_BITS = 1e-6

#: Kernels share a padded batched call when the largest is at most this many times the smallest
#: (at most 1.33x the flops of solving each alone).
PAD_RATIO = 1.1

#: Matrices of the proxy stack a batched choice is measured on.
PROXY_BATCH = 8

#: Larger matrices take the way measured on a proxy of this many rows: a full-size proxy of a
#: 10,000-row solve would cost nine solves of 0.6-0.8 s and the solve's memory again.
PROXY_MAX_N = 4096


def _cupy():
    try:
        import cupy
    except Exception:  # noqa: BLE001 - not installed, or no usable CUDA for it
        return None
    return cupy


def solve_as(k: torch.Tensor, how: str) -> torch.Tensor:
    """Eigenvalues (ascending, ``k``'s dtype) of a symmetric matrix or stack, solved the way ``how`` names."""
    if how == "torch64" and k.dtype != torch.float64:
        return torch.linalg.eigvalsh(k.double()).to(k.dtype)
    if how == "cupy":
        cupy = _cupy()
        return torch.as_tensor(cupy.linalg.eigvalsh(cupy.asarray(k.detach().contiguous())), device=k.device)
    return torch.linalg.eigvalsh(k)


def ways(dtype: torch.dtype) -> tuple[str, ...]:
    """The ways open to a matrix of ``dtype`` here (CuPy only where it imports)."""
    return tuple(w for w in DEVICE_SOLVERS if (w != "torch64" or dtype != torch.float64)
                 and (w != "cupy" or _cupy() is not None))


def proxy_kernels(m: int, batch: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Diffusion kernels of clustered synthetic points, ``[batch, m, m]`` (``[m, m]`` for batch 0).

    A kernel's spectrum, not a random matrix's: most of its eigenvalues lie near 0, where a
    solver's rounding shows in the entropy.
    """
    g = torch.Generator().manual_seed(m)
    out = []
    for _ in range(max(batch, 1)):
        centres = torch.randn(10, 16, generator=g, dtype=torch.float64) * 3
        z = centres[torch.randint(0, 10, (m,), generator=g)] + torch.randn(m, 16, generator=g, dtype=torch.float64)
        sigma = 0.6 * float(torch.cdist(z[:256], z[:256]).median())
        out.append(diffusion_kernel(z.to(device), sigma).to(dtype))
    return torch.stack(out) if batch else out[0]


def accurate_ways(results: dict[str, object], tolerance: float = ENTROPY_TOLERANCE_BITS) -> tuple[str, ...]:
    """The ways whose spectra give entropies within ``tolerance`` bits of the float64 solve's.

    The float64 solve is "torch64" where it ran (float32 input), else every result is
    float64 and all are kept.

    >>> lam = torch.linspace(0, 1, 50, dtype=torch.float64)
    >>> accurate_ways({"torch": (lam + 1e-3).float(), "torch64": lam.float(), "cupy": lam.float()})
    ('torch64', 'cupy')
    """
    spectra = {w: r for w, r in results.items() if isinstance(r, torch.Tensor)}
    ref = spectra.get("torch64")
    if ref is None:
        return tuple(spectra)
    h_ref = entropy_of_spectrum(ref.double())
    return tuple(w for w, lam in spectra.items()
                 if float((entropy_of_spectrum(lam.double()) - h_ref).abs().max()) <= tolerance)


def choose_way(n: int, dtype: torch.dtype, batch: int, device: torch.device) -> str:
    """The fastest accurate way (:data:`DEVICE_SOLVERS`) for ``n``-row matrices of ``dtype``,
    alone (``batch`` 0) or stacked, on ``device``: measured once per kind (module docstring), on a
    proxy of at most :data:`PROXY_MAX_N` rows (larger sizes share that size class's choice)."""
    def proxy(m: int) -> Callable[[str], torch.Tensor]:
        mats = proxy_kernels(m, min(batch, PROXY_BATCH), dtype, device)
        return partial(solve_as, mats)

    return backend.choose_on_device("eigvalsh", min(n, PROXY_MAX_N), (dtype, 3 if batch else 2), proxy, ways(dtype), device,
                                    admissible=accurate_ways)


def device_eigvalsh(k: torch.Tensor) -> torch.Tensor:
    """Eigenvalues (ascending) of a symmetric CUDA matrix or stack, the way :func:`choose_way` measured."""
    batch = math.prod(k.shape[:-2]) if k.ndim > 2 else 0
    return solve_as(k, choose_way(k.shape[-1], k.dtype, batch, k.device))


def _pad(mats: list[torch.Tensor], size: int) -> torch.Tensor:
    out = mats[0].new_zeros(len(mats), size, size)
    for j, m in enumerate(mats):
        out[j, : m.shape[-1], : m.shape[-1]] = m
    return out


def unpad(lam: torch.Tensor, n: int) -> torch.Tensor:
    """The spectrum of K from that of ``diag(K, 0)`` (ascending): the extra eigenvalues of smallest modulus dropped.

    >>> unpad(torch.tensor([-0.5, -1e-17, 0.0, 0.125, 0.25]), 3)
    tensor([-0.5000,  0.1250,  0.2500])
    """
    drop = lam.shape[-1] - n
    if drop <= 0:
        return lam
    keep = lam.abs().argsort()[drop:].sort().values  # sorted indices of an ascending spectrum: still ascending
    return lam[keep]


def padding_pays(n: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether one padded batched call beats separate calls for kernels of about ``n`` rows on
    ``device`` (measured once per kind on :data:`PROXY_BATCH` kernels padded by :data:`PAD_RATIO`)."""
    size = math.ceil(n * PAD_RATIO)
    stacked, alone = choose_way(size, dtype, PROXY_BATCH, device), choose_way(n, dtype, 0, device)

    def proxy(m: int) -> Callable[[str], object]:
        mats = list(proxy_kernels(m, PROXY_BATCH, dtype, device))
        padded = _pad(mats, math.ceil(m * PAD_RATIO))

        def run(how: str) -> object:
            return solve_as(padded, stacked) if how == "padded" else [solve_as(k, alone) for k in mats]

        return run

    return backend.choose_on_device("eigvalsh-padded", n, (dtype,), proxy, ("padded", "separate"),
                                    device) == "padded"


def size_groups(sizes: list[int], pad: bool) -> list[tuple[int, list[int]]]:
    """``(size, indices)`` of each batched call: equal sizes together, and with ``pad`` sizes down
    to 1 / :data:`PAD_RATIO` of the group's largest (which is its size).

    >>> size_groups([1000, 950, 1000, 1040, 700], pad=False)
    [(1040, [3]), (1000, [0, 2]), (950, [1]), (700, [4])]
    >>> size_groups([1000, 950, 1000, 1040, 700], pad=True)
    [(1040, [3, 0, 2, 1]), (700, [4])]
    """
    groups: list[tuple[int, list[int]]] = []
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        if groups and (sizes[i] == groups[-1][0] or (pad and sizes[i] * PAD_RATIO >= groups[-1][0])):
            groups[-1][1].append(i)
        else:
            groups.append((sizes[i], [i]))
    return groups


def batched_eigvals(mats: list[torch.Tensor], solve: Callable[[torch.Tensor], torch.Tensor],
                    free_bytes: int, pad: bool | None = None) -> list[torch.Tensor]:
    """Eigenvalues (ascending) of many symmetric matrices on one device, in as few ``solve`` calls as fit.

    ``solve`` solves a stack ``[b, n, n]``; ``free_bytes``: the device's free memory (each call
    takes at most a quarter). ``pad``: share calls between nearby sizes (module docstring);
    None measures whether that pays on a CUDA device and never pads elsewhere.
    """
    if not mats:
        return []
    sizes = [m.shape[-1] for m in mats]
    if pad is None:
        pad = mats[0].is_cuda and len(set(sizes)) > 1 and padding_pays(max(sizes), mats[0].dtype, mats[0].device)
    out: list[torch.Tensor | None] = [None] * len(mats)
    for size, idx in size_groups(sizes, pad):
        per = 3 * size * size * mats[0].element_size()
        chunk = max(1, min(len(idx), int(0.25 * free_bytes) // max(per, 1)))
        for start in range(0, len(idx), chunk):
            part = idx[start : start + chunk]
            lam = solve(_pad([mats[i] for i in part], size))
            for j, i in enumerate(part):
                out[i] = unpad(lam[j], sizes[i])
    return out  # type: ignore[return-value]
