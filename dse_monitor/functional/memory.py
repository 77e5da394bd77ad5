"""How much memory a kernel needs, how much the device has, and where the approximate path stores it.

The exact path needs the N x N kernel and the eigen-solver's copy (:func:`exact_bytes`);
the approximate path a dense kernel in the compute dtype or float32, or a streamed one
(:func:`plan_storage`), each checked against the device's free memory first, so that a
probe too large fails with the sizes named instead of an out-of-memory error mid-solve.
"""
from __future__ import annotations

import os

import torch

#: Rows of the kernel computed at a time in streamed mode.
DEFAULT_BLOCK_SIZE = 2048


def available_memory(device: torch.device | str = "cpu") -> int:
    """Bytes that can still be allocated on ``device`` (free GPU memory, or MemAvailable).

    >>> available_memory("cpu") > 0
    True
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - non-Linux
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))  # pragma: no cover


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


def dense_bytes(n: int, dtype: torch.dtype) -> int:
    """Bytes of one N x N matrix of ``dtype``."""
    return n * n * torch.empty((), dtype=dtype).element_size()


#: Share of the memory limit above which a dense float64 kernel is stored in float32 (see :func:`plan_storage`).
FLOAT32_FIRST = 0.25


def plan_storage(
    n: int, d: int, dtype: torch.dtype, device: torch.device, streamed: bool | None, memory_limit: int | None,
    krylov: int = 512, rows: int | None = None,
) -> tuple[bool, torch.dtype, int]:
    """Decide dense vs streamed (and the storage dtype) for the approximate path.

    Dense needs the N x N matrix (``rows`` x N: the rows this process holds, :mod:`.row_operator`)
    plus about N (2 krylov + 1200) float64 vectors; streamed needs N * D plus ``block_size`` rows of N.
    When ``streamed`` is None the operator is dense if the matrix fits in ``memory_limit``
    (default: 80% of the free memory of the device) in the compute dtype, else dense float32
    if the compute dtype is float64 and that fits, else streamed. A float64 matrix that would
    take more than ``FLOAT32_FIRST`` of the limit is built in float32 even where it fits (also
    when float64 was asked for: storage follows memory here, as when float64 does not fit): its
    entries carry about sqrt(D) u ||b||^2 of rounding in the exponent (u = 6e-8), which moved the
    entropy by 6e-8 bits in a check against float64 with the bounds still holding, far below the
    estimate's own error, and half the memory leaves the device to the training (N = 100,000
    on an H200: 38.5 GiB instead of 76 GiB). Raises ``MemoryError`` naming the sizes when even the
    streamed operator does not fit.

    >>> plan_storage(20_000, 64, torch.float64, torch.device("cpu"), None, memory_limit=8 * 2**30)
    (False, torch.float32, 2048)
    >>> plan_storage(2_000, 64, torch.float64, torch.device("cpu"), None, memory_limit=8 * 2**30)
    (False, torch.float64, 2048)
    """
    limit = int(0.8 * available_memory(device)) if memory_limit is None else int(memory_limit)
    itemsize = torch.empty((), dtype=dtype).element_size()
    vectors = 8 * n * (2 * krylov + 1200)  # Krylov basis, its product, SLQ probe bases
    share = n if rows is None else rows
    matrix = {dt: dense_bytes(n, dt) * share // max(n, 1) for dt in (dtype, torch.float32)}
    if streamed is None:
        if matrix[dtype] + vectors <= limit and (dtype != torch.float64 or matrix[dtype] <= FLOAT32_FIRST * limit):
            return False, dtype, DEFAULT_BLOCK_SIZE
        if dtype == torch.float64 and matrix[torch.float32] + vectors <= limit:
            return False, torch.float32, DEFAULT_BLOCK_SIZE
        streamed = True
    if not streamed:
        need = matrix[dtype] + vectors
        if need > limit:
            raise MemoryError(
                f"the dense {share} x {n} {str(dtype).replace('torch.', '')} kernel needs {_gib(need)} but only "
                f"{_gib(limit)} is available on {device}; pass streamed=True (memory O(N*D)), a smaller max_n, "
                "or dtype=torch.float32."
            )
        return False, dtype, DEFAULT_BLOCK_SIZE
    rows = DEFAULT_BLOCK_SIZE
    while rows > 16 and itemsize * (n * d + 2 * rows * n) + vectors > limit:
        rows //= 2
    need = itemsize * (n * d + 2 * rows * n) + vectors
    if need > limit:
        raise MemoryError(
            f"even the streamed kernel of N={n} points in D={d} needs {_gib(need)} "
            f"(features, {rows} kernel rows and the Krylov vectors) but only {_gib(limit)} is available on "
            f"{device}; pass a smaller max_n."
        )
    return True, dtype, rows


def exact_bytes(n: int, dtype: torch.dtype) -> int:
    """Estimated peak bytes of the exact path: the kernel, the solver's copy and workspace."""
    return int(2.1 * dense_bytes(n, dtype)) + 64 * n * 8


def check_exact_fits(n: int, dtype: torch.dtype, device: torch.device, memory_limit: int | None = None) -> None:
    """Raise ``MemoryError`` naming the sizes when the exact eigen-solve of N points cannot fit."""
    limit = int(0.9 * available_memory(device)) if memory_limit is None else int(memory_limit)
    need = exact_bytes(n, dtype)
    if need > limit:
        raise MemoryError(
            f"exact DSE of N={n} points needs about {_gib(need)} (two {n} x {n} "
            f"{str(dtype).replace('torch.', '')} matrices for the eigen-solve) but only {_gib(limit)} is "
            f"available on {device}; use solver='lanczos' (or 'auto'), or a smaller max_n."
        )
