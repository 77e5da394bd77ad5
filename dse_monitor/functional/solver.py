"""Choosing between the exact eigen-solve and the approximate (Lanczos) path.

``solver="exact"``: all N eigenvalues of the dense kernel (O(N^2) memory, O(N^3) time),
bit-for-bit the reference's value. ``solver="lanczos"``: :mod:`.lanczos` on a dense or
streamed :class:`~.operator.KernelOperator` (O(N^2) or O(N*D) memory, a few dozen
kernel products), an estimate within its guaranteed bounds. ``solver="auto"``: exact for
``N <= auto_crossover()`` (and for t not in {1, 2}), approximate above.

The crossover is measured on the machine, not tuned on one: the exact path costs one
eigen-solve, ``e N^3``; the approximate path at most ``P`` kernel products
(``P = max_rank / block + lanczos_steps = 28`` by default, the 20 probe products on the
kernel rounded to float32), ``p N^2``, plus orthogonalisation and small solves that grow like ``o N``. At the first ``"auto"``
decision above ``AUTO_EXACT_N`` points (once per process, thread count and dtype) both
paths are timed on a synthetic problem of ``CALIBRATION_N`` points (about 3 s on 2
cores), which gives e, p and o; the
crossover is the N where ``e N^3 = 1.2 (p N^2 + o N)``: where the model calls the two
paths within 20%, the exact value is worth its cost. A constant tuned on a 2-core Xeon
(4,096) was 2-3x off on a 2-core AMD EPYC, where MKL's products ran slower.

Memory guard: before any N x N allocation the need is compared with the free memory of
the device (CPU: MemAvailable; CUDA: ``torch.cuda.mem_get_info``). The exact path raises
``MemoryError`` naming N, the bytes needed and the bytes free; the approximate path
stores K in float32 when float64 does not fit, streams it when neither fits, and raises
``MemoryError`` only when even the streamed operator does not fit.
"""
from __future__ import annotations

import math
import statistics
import threading
import time
from typing import Any

import torch

from .lanczos import DEFAULT_BLOCK, DEFAULT_MAX_RANK, DEFAULT_STEPS, EntropyEstimate, approximate_entropy
from .operator import KernelOperator, plan_storage
from .row_group import RowGroup
from .row_operator import RowShardedOperator
from .sparse_operator import sparse_entropy
from .spectrum import symmetric_eigvals

#: ``None``: ``solver="auto"`` uses the measured :func:`auto_crossover`; an int fixes it.
AUTO_CROSSOVER: int | None = None

#: Up to this many points ``"auto"`` is exact without measuring: the eigen-solve was the
#: faster there on both machines measured (N = 1,000: 0.16 s exact vs 0.25 s approximate on
#: a 2-core AMD EPYC, crossover about 2,300; about 4,000 on a 2-core Xeon), so the monitor's
#: default probe of 1,000 never pays for the measurement.
AUTO_EXACT_N = 1024

#: Points of the synthetic problem the crossover is measured on. At 1,024 the eigen-solve
#: costs 3x more per N^3 than at 3,000-6,000 (small-matrix inefficiency), and the measured
#: crossover came out at 550-630 where the real one is about 2,300 (regret 1.55x at N = 1,000);
#: at 2,048 the N^3 extrapolation holds to within 15% up to 6,000.
CALIBRATION_N = 2048

_CROSSOVERS: dict[tuple, int] = {}
_CROSSOVER_LOCK = threading.Lock()

SOLVERS = ("exact", "lanczos", "auto")

#: Options of the approximate path that the functional API passes through.
LANCZOS_OPTIONS = ("n_probes", "lanczos_steps", "block", "max_rank", "bound_tol", "lock_tol", "slack",
                   "probe_dtype", "memory_limit", "block_size")

#: Storage of the probes' products when the deflation ran on a dense float64 kernel (see
#: :func:`.lanczos.approximate_entropy`): the bounds stay float64, the estimate moved by 1e-8 bits.
PROBE_DTYPE = torch.float32


def crossovers() -> dict[tuple, int]:
    """The crossovers measured so far in this process: ``{(threads, dtype): N}``."""
    with _CROSSOVER_LOCK:
        return dict(_CROSSOVERS)


def adopt_crossovers(ranked: list[dict[tuple, int]]) -> None:
    """Take the crossovers of several processes, the first one's where they differ (DDP ranks:
    rank 0's), so that ``solver="auto"`` takes the same path on every rank from now on."""
    with _CROSSOVER_LOCK:
        for one in reversed(ranked):
            _CROSSOVERS.update(one)


def check_solver(solver: str) -> str:
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    return solver


def choose_solver(n: int, t: float, solver: str, dtype: torch.dtype = torch.float64) -> str:
    """The path ``solver`` takes for N points at diffusion time t.

    >>> choose_solver(1000, 1, "exact"), choose_solver(50_000, 1, "auto"), choose_solver(50_000, 3, "auto")
    ('exact', 'lanczos', 'exact')
    """
    check_solver(solver)
    if solver != "auto":
        return solver
    if t not in (1, 2):
        return "exact"
    if AUTO_CROSSOVER is None and n <= AUTO_EXACT_N:  # a fixed crossover is taken as given
        return "exact"
    return "lanczos" if n > auto_crossover(dtype) else "exact"


def auto_crossover(dtype: torch.dtype = torch.float64) -> int:
    """Points above which ``solver="auto"`` takes the approximate path (measured, see the module docstring).

    >>> auto_crossover() >= AUTO_EXACT_N
    True
    """
    if AUTO_CROSSOVER is not None:
        return int(AUTO_CROSSOVER)
    key = (torch.get_num_threads(), dtype)
    with _CROSSOVER_LOCK:
        if key not in _CROSSOVERS:
            _CROSSOVERS[key] = _measure_crossover(dtype)
        return _CROSSOVERS[key]


def path_costs(dtype: torch.dtype = torch.float64, m: int = CALIBRATION_N) -> dict[str, float]:
    """Measured cost model ``{"e", "p", "o"}`` (seconds): exact ``e N^3``, approximate ``p N^2 + o N``.

    Both paths run on ``m`` clustered synthetic points (the kernel build, common to
    both, is left out): ``e`` from the eigen-solve, ``p`` from the worst-case number
    of kernel products of the default options (deflation in ``dtype``, probes in
    :data:`PROBE_DTYPE` where ``lanczos_entropy`` rounds the kernel), ``o`` from the
    rest of an approximate run.
    """
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(10, 32, generator=g, dtype=torch.float64) * 3
    z = (centers[torch.randint(0, 10, (m,), generator=g)] + torch.randn(m, 32, generator=g, dtype=torch.float64))
    z = z.to(dtype)
    sigma = 0.6 * float(torch.cdist(z[:256].double(), z[:256].double()).median())
    op = KernelOperator.build(z, sigma, dtype=dtype)
    k = op.dense_k
    x = torch.randn(m, DEFAULT_BLOCK, dtype=torch.float64, generator=g)
    rounds = dtype == torch.float64 and PROBE_DTYPE == torch.float32

    def copy() -> KernelOperator:  # rounding in place must not touch op's kernel
        return KernelOperator(op.n, op.trace, op.frobenius_sq, "dense", dtype, op.device, dense_k=k.clone())

    def run():  # on a fresh operator each time: the run may round it in place
        fresh = copy()
        start = time.perf_counter()
        est = approximate_entropy(fresh, 1, probe_dtype=PROBE_DTYPE)
        return time.perf_counter() - start, est.info

    def best(fn, repeats: int) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    t_mm = best(lambda: op.matmat(x), 3)
    t_probe = t_mm
    if rounds:
        probe_op = copy().round_to_float32()
        t_probe = best(lambda: probe_op.matmat(x), 3)
    # Medians of three solves and three runs, interleaved, after one warm-up of each (the first
    # solve of a size allocates its workspace). Timed one after the other as best of two and
    # one, a slow spell of the 2-core VM moved the crossover between 1,450 and 2,030 from
    # process to process, and at 2,030 N = 2,000 took the exact path, 1.5x slower there.
    symmetric_eigvals(k)
    run()
    eigs, runs = [], []
    for _ in range(3):
        start = time.perf_counter()
        symmetric_eigvals(k)
        eigs.append(time.perf_counter() - start)
        runs.append(run())
    t_eig = statistics.median(eigs)
    t_run, info = sorted(runs, key=lambda r: r[0])[1]
    deflation = max(info["products"] - DEFAULT_STEPS, 0)  # the probes take DEFAULT_STEPS products
    rest = max(t_run - deflation * t_mm - DEFAULT_STEPS * t_probe, 0.0)
    worst = DEFAULT_MAX_RANK // DEFAULT_BLOCK * t_mm + DEFAULT_STEPS * t_probe
    return {"e": t_eig / m**3, "p": worst / m**2, "o": rest / m}


#: The approximate path is taken only where the model predicts the exact one slower by more than
#: this factor: closer than that the exact value costs at most the regret ``"auto"`` allows.
EXACT_PREFERENCE = 1.2


def _measure_crossover(dtype: torch.dtype) -> int:
    c = path_costs(dtype)
    # e n^3 = r (p n^2 + o n), r = EXACT_PREFERENCE  ->  the positive root of e n^2 - r p n - r o
    e, p, o = c["e"], EXACT_PREFERENCE * c["p"], EXACT_PREFERENCE * c["o"]
    n = (p + math.sqrt(p**2 + 4 * e * o)) / (2 * e)
    return max(int(n), AUTO_EXACT_N)


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
    alpha: float = 0.0,
    knn: int | None = None,
    row_group: RowGroup | None = None,
) -> EntropyEstimate:
    """Approximate DSE of the rows of ``x`` (validated, compute dtype) with bounds.

    ``knn``: the kNN kernel with that k (sparse, :mod:`.sparse_operator`), else the Gaussian one.
    ``row_group``: the processes that split the kernel's rows (:mod:`.row_operator`): every one
    calls this with the same ``x`` and options and gets the same estimate, each holding only its
    share of K (None or a group of one: the whole kernel here).

    Example:
        >>> z = torch.randn(400, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> a = lanczos_entropy(z, 1.0, 1)
        >>> b = lanczos_entropy(z, 1.0, 1, row_group=RowGroup.single())
        >>> abs(a.value - b.value) < 1e-9
        True
    """
    opts = check_options(options)
    memory_limit = opts.pop("memory_limit", None)
    rows = opts.pop("block_size", None)
    sharded = row_group is not None and row_group.world > 1
    if knn is not None:  # sparse: O(N k) memory whatever streamed says
        if sharded:
            raise ValueError("the kNN kernel (kernel='knn') is not split over processes; pass row_group=None "
                             "(each process then solves its whole sparse kernel) or use kernel='gaussian'")
        return sparse_entropy(x, knn, alpha, t, seed=seed, **opts)
    n, d = x.shape
    share = row_group.share(n) if sharded else (0, n)
    try:
        plan = plan_storage(n, d, x.dtype, x.device, streamed, memory_limit, int(opts.get("max_rank", 256)),
                            rows=share[1] - share[0])
    except MemoryError as err:
        if not sharded:
            raise
        plan = err  # raised below on every rank, not on this one alone: the others would wait for it
    if sharded and not row_group.all_true(not isinstance(plan, MemoryError)):
        raise plan if isinstance(plan, MemoryError) else MemoryError(
            f"another process of the {row_group.world} sharing the kernel's rows has no room for its share; "
            "lower num_samples / max_n or give it more memory")
    stream, dtype, auto_rows = plan
    if sharded:
        op = RowShardedOperator.build(x, sigma, row_group, streamed=stream, block_size=rows or auto_rows,
                                      dtype=dtype, alpha=alpha)
    else:
        op = KernelOperator.build(x, sigma, streamed=stream, block_size=rows or auto_rows, dtype=dtype, alpha=alpha)
    opts.setdefault("probe_dtype", PROBE_DTYPE)  # op is ours: rounding it in place loses nothing
    return approximate_entropy(op, t, seed=seed, **opts)
