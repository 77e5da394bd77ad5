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


#: Seconds of idle time before each timed call. After a call, the reference's OpenBLAS
#: threads keep spinning for ~0.1 s of CPU (measured with time.process_time() across a
#: sleep); without a pause that CPU is taken from whichever call runs next.
SETTLE_S = 0.2


def _timed(fn: Callable[[], object]) -> float:
    time.sleep(SETTLE_S)
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def paired(ours: Callable[[], object], baseline: Callable[[], object], repeats: int) -> tuple[float, float, float]:
    """Run the two callables ``repeats`` times each, in pairs; return medians (ours, baseline) and the median ratio.

    The order inside a pair alternates, and each timed call starts after a short idle
    pause (``SETTLE_S``), so that neither side pays for the other's idle BLAS threads.
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
