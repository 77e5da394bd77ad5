"""Helpers shared by the benchmarks: pinned threads, paired timing, the oracle."""
from __future__ import annotations

import importlib
import statistics
import time
import warnings
from typing import Callable

import torch

THREADS = 2


def pin_threads(n: int = THREADS) -> None:
    """Pin torch and BLAS threads: unpinned threads on 2 cores give erratic timings."""
    torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:  # pragma: no cover
        pass


def reference():
    """The reference package (its import silences warnings globally; contain that)."""
    with warnings.catch_warnings():
        return importlib.import_module("dse_dsmi.dse"), importlib.import_module("dse_dsmi.dsmi")


#: Seconds of busy waiting before each timed call. After a call, the reference's
#: OpenBLAS threads keep spinning for ~0.1 s of CPU (time.process_time() across a
#: sleep), which would be charged to whichever call runs next. The wait is busy, not a
#: sleep: after 0.2 s asleep the 2-core VM took ~30 ms longer to run a 70 ms call.
SETTLE_S = 0.15


def _timed(fn: Callable[[], object]) -> float:
    end = time.perf_counter() + SETTLE_S
    while time.perf_counter() < end:
        pass
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def paired(ours: Callable[[], object], baseline: Callable[[], object], repeats: int) -> tuple[float, float, float]:
    """Run the two callables ``repeats`` times each, in pairs; return medians (ours, baseline) and the median ratio.

    The order inside a pair alternates, and each timed call starts after a short busy
    pause (``SETTLE_S``), so that neither side pays for the other's spinning BLAS threads.
    """
    ours()  # warm-up: first calls load kernels and start worker threads
    baseline()
    t_ours, t_base, ratios = [], [], []
    for i in range(repeats):
        if i % 2 == 0:
            base, mine = _timed(baseline), _timed(ours)
        else:
            mine, base = _timed(ours), _timed(baseline)
        t_base.append(base)
        t_ours.append(mine)
        ratios.append(base / mine)
    return statistics.median(t_ours), statistics.median(t_base), statistics.median(ratios)


def row(benchmark: str, ours_s: float, baseline_s: float, ratio: float, note: str) -> dict:
    return {"benchmark": benchmark, "ours_s": ours_s, "baseline_s": baseline_s, "ratio": ratio, "note": note}
