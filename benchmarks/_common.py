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


def paired(ours: Callable[[], object], baseline: Callable[[], object], repeats: int) -> tuple[float, float, float]:
    """Run the two callables ``repeats`` times each, in pairs; return medians (ours, baseline) and the median ratio.

    The order inside a pair alternates: whichever runs second pays for the first one's
    BLAS threads still spinning on the 2 cores, so a fixed order would bias the ratio.
    """
    ours()  # warm-up: first calls load kernels and start worker threads
    baseline()
    t_ours, t_base, ratios = [], [], []
    for i in range(repeats):
        first, second = (baseline, ours) if i % 2 == 0 else (ours, baseline)
        t0 = time.perf_counter()
        first()
        t1 = time.perf_counter()
        second()
        t2 = time.perf_counter()
        base, mine = (t1 - t0, t2 - t1) if i % 2 == 0 else (t2 - t1, t1 - t0)
        t_base.append(base)
        t_ours.append(mine)
        ratios.append(base / mine)
    return statistics.median(t_ours), statistics.median(t_base), statistics.median(ratios)


def row(benchmark: str, ours_s: float, baseline_s: float, ratio: float, note: str) -> dict:
    return {"benchmark": benchmark, "ours_s": ours_s, "baseline_s": baseline_s, "ratio": ratio, "note": note}
