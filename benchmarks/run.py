"""The benchmark suite: one command, one table.

    make bench                     # or: .venv/bin/python benchmarks/run.py [--quick]

Runs, side by side in one process with 2 pinned threads: the exact core against the
reference package (DSE float64/float32, DSMI(Z;Y), DSMI(Z;X) with its clustering,
peak memory), the approximate solver against the exact one, and the callback's
share of epoch time. Ratios are medians of paired runs.
"""
from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import pin_threads  # noqa: E402

SUITES = ["core", "approx", "callback_overhead"]


def machine() -> str:
    """CPU model, vector ISA, BLAS libraries, thread count and versions (named in RESULTS.md)."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    blas = ["torch: " + ("MKL" if torch.backends.mkl.is_available() else "non-MKL BLAS")
            + f" (capability {torch.backends.cpu.get_cpu_capability()})"]
    try:
        from threadpoolctl import threadpool_info
        import numpy as np

        for info in threadpool_info():
            if info.get("user_api") == "blas" and "numpy" in info.get("filepath", ""):
                blas.append(f"numpy {np.__version__}: {info['internal_api']} {info.get('version')} "
                            f"({info.get('architecture')} kernels)")
    except ImportError:  # pragma: no cover
        pass
    return (f"{cpu}, {os.cpu_count()} cores, {isa}; {'; '.join(blas)}; {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}, Python {platform.python_version()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (about 2 minutes)")
    parser.add_argument("--only", nargs="*", choices=SUITES, help="run only these suites")
    args = parser.parse_args()
    pin_threads()
    print(f"machine: {machine()}")
    table = []
    for name in args.only or SUITES:
        try:
            module = importlib.import_module(name)
        except ImportError as err:
            print(f"[skip] {name}: {err}")
            continue
        start = time.perf_counter()
        table += module.rows(quick=args.quick)
        print(f"[done] {name} in {time.perf_counter() - start:.0f} s", flush=True)
    print()
    print(f"| {'benchmark':55s} | {'ours s':>8s} | {'baseline s':>10s} | {'ratio':>6s} | note |")
    print(f"|{'-' * 57}|{'-' * 10}|{'-' * 12}|{'-' * 8}|------|")
    for r in table:
        print(f"| {r['benchmark']:55s} | {r['ours_s']:8.3f} | {r['baseline_s']:10.3f} | {r['ratio']:6.2f} | {r['note']} |")


if __name__ == "__main__":
    main()
