"""Per-machine choice between torch's and numpy's BLAS/LAPACK, measured at first use.

The same wheel runs on very different CPUs: torch ships MKL, numpy ships OpenBLAS, and
which one is faster for a given call depends on the CPU (MKL takes slower code paths on
AMD processors), the size and the thread count. Measured on a 2-core AMD EPYC: a
500 x 500 float64 ``eigvalsh`` took 16.5 ms in torch and 10.4 ms in numpy on one thread,
while a 4,000 x 4,000 one on two threads took 4.6 s in torch and 8.7 s in numpy. No
constant tuned on one CPU is right on the other, so each choice is measured, once per
process, before the first call of its kind (same operation, dtype, calling thread's
thread count and size class, a factor of two wide): both libraries run the same
operation on synthetic data of the call's size (at most ``PROXY_N`` rows), alternately,
and the faster one is used for every later call of that kind (eigen-solves above
PROXY_N rows always use torch: there a smaller proxy mispredicted). Every call of a kind thus
uses one library, and repeated calls give identical results. A measurement takes a few
tens of milliseconds. Only CPU tensors that need no gradient are eligible; everything
else (CUDA, autograd) always uses torch. Both libraries compute the same quantity up to
LAPACK/BLAS rounding (numpy's ``eigvalsh`` is the routine the reference package calls;
"numpy" eigen-solves call that routine through :mod:`.lapack`, which releases the GIL,
so that the solver pool's threads run side by side).
"""
from __future__ import annotations

import contextlib
import threading
import time
from typing import Callable

import numpy as np
import torch

#: Rows of the synthetic problem a choice is measured on (larger calls: this many).
PROXY_N = 1024
#: Timed runs per library in a measurement.
SAMPLES = 3

# re-entrant: building a proxy may itself make a choice (a proxy kernel's distance product)
_LOCK = threading.RLock()
_CHOICES: dict[tuple, str] = {}
_FORCED: str | None = None


def _fastest(runs: dict[str, Callable[[], object]], sync: Callable[[], None] = lambda: None,
             admissible: Callable[[dict[str, object]], tuple[str, ...]] | None = None) -> str:
    """The library whose smallest of SAMPLES timings is least (the order alternating: the first
    call of each also loads and allocates), among those ``admissible(results)`` names: the
    libraries whose result is good enough (all of them when None). A library that raises is left out."""
    times: dict[str, list[float]] = {lib: [] for lib in runs}
    results: dict[str, object] = {}
    for i in range(SAMPLES):
        for lib in (list(runs) if i % 2 == 0 else list(reversed(runs))):
            if lib not in times:
                continue
            sync()
            start = time.perf_counter()
            try:
                results[lib] = runs[lib]()
                sync()
            except Exception:  # noqa: BLE001 - a library that cannot run this call is no choice (CuPy without a usable CUDA)
                if len(times) == 1:
                    raise
                del times[lib]
                results.pop(lib, None)
                continue
            times[lib].append(time.perf_counter() - start)
    allowed = tuple(admissible(results)) if admissible is not None else tuple(times)
    return min(allowed or tuple(times), key=lambda k: min(times[k]))


def choose_on_device(op: str, n: int, key: tuple, make_proxy: Callable[[int], Callable[[str], object]],
                     libs: tuple[str, ...], device: torch.device,
                     admissible: Callable[[dict[str, object]], tuple[str, ...]] | None = None) -> str:
    """The fastest of ``libs`` for ``op`` on ``n`` rows on a CUDA ``device``, measured once per process
    and kind (op, size class, device, ``key``) on a proxy of the call's size, as :func:`choose` does on
    the CPU. The H200 measured for issue 23 solved a 500 x 500 float32 ``eigvalsh`` in 15 ms and
    the same matrix cast to float64 in 4.4 ms: no fixed rule is right on every build and size.
    ``admissible(results)``: the libraries whose result on the proxy is accurate enough (all when None)."""
    if len(libs) == 1:
        return libs[0]
    # by the device's model, not its index: DDP ranks on cuda:0 and cuda:1 share their choices (choices.py)
    model = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    return _measured_once((op, max(int(n), 1).bit_length(), model) + key, libs, lambda: make_proxy(int(n)), sync,
                          admissible)


def choose(op: str, n: int, key: tuple, make_proxy: Callable[[int], Callable[[str], object]],
           above_proxy: str | None = None) -> str:
    """The library (``"torch"`` or ``"numpy"``) for a call of ``op`` on ``n`` rows.

    ``key`` names the kind beyond ``op``, the size class and the calling thread's
    torch thread count. On the first call of a kind, ``make_proxy(m)`` returns a
    function ``run(lib)`` that performs the operation on synthetic data of ``m`` rows
    with library ``lib``; both are timed and the faster is kept for the process.
    ``above_proxy``: the library for calls larger than ``PROXY_N``, where a smaller
    proxy does not predict the winner (eigen-solves: see ``spectrum``).
    """
    if _FORCED is not None:
        return _FORCED
    if above_proxy is not None and n > PROXY_N:
        return above_proxy
    full_key = (op, max(int(n), 1).bit_length(), torch.get_num_threads()) + key
    return _measured_once(full_key, ("torch", "numpy"), lambda: make_proxy(min(int(n), PROXY_N)))


def _measured_once(full_key: tuple, libs: tuple[str, ...], make_run: Callable[[], Callable[[str], object]],
                   sync: Callable[[], None] = lambda: None,
                   admissible: Callable[[dict[str, object]], tuple[str, ...]] | None = None) -> str:
    """The library kept for ``full_key``, or the fastest admissible of ``libs`` on ``make_run()``, measured now and kept."""
    with _LOCK:
        lib = _CHOICES.get(full_key)
        if lib is None:
            run = make_run()
            lib = _CHOICES[full_key] = _fastest({name: (lambda name=name: run(name)) for name in libs}, sync, admissible)
    return lib


def choices() -> dict[tuple, str | None]:
    """The choices made so far in this process: ``{(op, size class, threads, ...): library}``.

    >>> isinstance(choices(), dict)
    True
    """
    with _LOCK:
        return dict(_CHOICES)


@contextlib.contextmanager
def forced(lib: str):
    """Use ``lib`` ("torch" or "numpy") for every eligible call inside the block (tests, benchmarks).

    >>> with forced("numpy"):
    ...     choose("eigvalsh", 500, (), None)
    'numpy'
    """
    global _FORCED
    if lib not in ("torch", "numpy"):
        raise ValueError(f"lib must be 'torch' or 'numpy', got {lib!r}")
    before, _FORCED = _FORCED, lib
    try:
        yield
    finally:
        _FORCED = before


def adopt(ranked: list[dict[tuple, str]]) -> None:
    """Take the choices of several processes, the first one's where they differ (DDP ranks: rank 0's),
    so that every process uses the same library for a kind from now on.

    >>> adopt([{("eigvalsh", 9, 1, "float32"): "numpy"}, {("eigvalsh", 9, 1, "float32"): "torch"}])
    >>> choices()[("eigvalsh", 9, 1, "float32")]
    'numpy'
    >>> reset()
    """
    with _LOCK:
        for one in reversed(ranked):
            _CHOICES.update(one)


def reset() -> None:
    """Forget every measurement (tests, benchmarks)."""
    with _LOCK:
        _CHOICES.clear()


def eligible(*tensors: torch.Tensor) -> bool:
    """True when numpy may stand in for torch: CPU float32/float64, no gradient needed."""
    grad = torch.is_grad_enabled()
    return all(
        t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and not (grad and t.requires_grad)
        for t in tensors
    )


_CONTROLLER = None


@contextlib.contextmanager
def numpy_blas_threads(n: int):
    """Limit numpy's BLAS to ``n`` threads inside the block (threadpoolctl, when installed).

    numpy's OpenBLAS has one process-wide thread count (all cores by default); threads
    that each solve one matrix must not each start a team of OpenBLAS threads.
    """
    global _CONTROLLER
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        yield
        return
    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    with _CONTROLLER.limit(limits=n, user_api="blas"):
        yield


#: Name prefix of the solver pool's threads (see :func:`.spectrum.solver_pool`), inside which
#: numpy's BLAS is limited to one thread for the whole of a batch of solves.
POOL_PREFIX = "dse-eig"


def numpy_call(fn: Callable[[], np.ndarray]) -> torch.Tensor:
    """``fn()`` as a tensor, with numpy's BLAS on the caller's torch thread count."""
    if threading.current_thread().name.startswith(POOL_PREFIX):
        return torch.from_numpy(fn())
    with numpy_blas_threads(torch.get_num_threads()):
        return torch.from_numpy(fn())


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor (no copy for a contiguous tensor)."""
    return t.detach().numpy()
