"""Choosing between the exact eigen-solve and the approximate (Lanczos) path.

``solver="exact"``: all N eigenvalues of the dense kernel (O(N^2) memory, O(N^3) time),
bit-for-bit the reference's value. ``solver="lanczos"``: :mod:`.lanczos` on a dense or
streamed :class:`~.operator.KernelOperator` (O(N^2) or O(N*D) memory, a few dozen
kernel products), an estimate within its guaranteed bounds. ``solver="auto"``: exact for
``N <= AUTO_CROSSOVER`` (and for t not in {1, 2}), approximate above.

Memory guard: before any N x N allocation the need is compared with the free memory of
the device (CPU: MemAvailable; CUDA: ``torch.cuda.mem_get_info``). The exact path raises
``MemoryError`` naming N, the bytes needed and the bytes free; the approximate path
stores K in float32 when float64 does not fit, streams it when neither fits, and raises
``MemoryError`` only when even the streamed operator does not fit.
"""
from __future__ import annotations

from typing import Any

import torch

from .lanczos import EntropyEstimate, approximate_entropy
from .operator import KernelOperator, plan_storage

#: Above this many points ``solver="auto"`` uses the approximate path. Measured with
#: benchmarks/approx.py (2 threads, shared 2-core Xeon, clustered D = 64, medians of 3;
#: speed-up of lanczos over exact float64): N = 1,000: 0.77x; 2,000: 1.4x; 3,000:
#: 1.4-2.2x; 4,000: 2.1x; 5,000: 2.8x; 6,000: 6.8x; 8,000: 6.4x; 10,000: 3.6-9.8x;
#: 20,000 (D = 512): 7.0x. Break-even is near N = 1,500; below 4,096 the exact solve
#: takes under ~2 s and gives the reference's value, so auto switches only above it.
AUTO_CROSSOVER = 4096

SOLVERS = ("exact", "lanczos", "auto")

#: Options of the approximate path that the functional API passes through.
LANCZOS_OPTIONS = ("n_probes", "lanczos_steps", "block", "max_rank", "bound_tol", "lock_tol", "slack",
                   "memory_limit", "block_size")


def check_solver(solver: str) -> str:
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    return solver


def choose_solver(n: int, t: float, solver: str) -> str:
    """The path ``solver`` takes for N points at diffusion time t.

    >>> choose_solver(1000, 1, "auto"), choose_solver(50_000, 1, "auto"), choose_solver(50_000, 3, "auto")
    ('exact', 'lanczos', 'exact')
    """
    check_solver(solver)
    if solver != "auto":
        return solver
    return "lanczos" if n > AUTO_CROSSOVER and t in (1, 2) else "exact"


def check_options(options: dict[str, Any] | None) -> dict[str, Any]:
    options = dict(options or {})
    unknown = sorted(set(options) - set(LANCZOS_OPTIONS))
    if unknown:
        raise ValueError(f"unknown lanczos option(s) {unknown}; known: {list(LANCZOS_OPTIONS)}")
    return options


def lanczos_entropy(
    x: torch.Tensor,
    sigma: float,
    t: float,
    *,
    seed: int = 0,
    streamed: bool | None = None,
    options: dict[str, Any] | None = None,
) -> EntropyEstimate:
    """Approximate DSE of the rows of ``x`` (validated, compute dtype) with bounds."""
    opts = check_options(options)
    memory_limit = opts.pop("memory_limit", None)
    rows = opts.pop("block_size", None)
    n, d = x.shape
    stream, dtype, auto_rows = plan_storage(
        n, d, x.dtype, x.device, streamed, memory_limit, int(opts.get("max_rank", 256))
    )
    op = KernelOperator.build(x, sigma, streamed=stream, block_size=rows or auto_rows, dtype=dtype)
    return approximate_entropy(op, t, seed=seed, **opts)
