"""The exact core against the reference package dse-dsmi 1.1, side by side in one process.

    python benchmarks/core.py [--quick]

Ratios are medians of paired runs (reference time / our time; > 1 means we are faster).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import warnings

import numpy as np
import torch

try:
    from _common import paired, pin_threads, reference, row
except ImportError:  # imported as benchmarks.core
    from benchmarks._common import paired, pin_threads, reference, row

import dse_monitor as dm
from dse_monitor.functional import backend
from threadpoolctl import threadpool_limits


def features(n: int, d: int, classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clustered features of realistic spread (DSE in the middle of its range at sigma = 10)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=1.0, size=(classes, d))
    y = rng.integers(0, classes, n)
    return centers[y] + rng.normal(scale=0.5, size=(n, d)), y


def _bare_solvers(k: torch.Tensor) -> dict[str, object]:
    kn = k.numpy()

    def numpy_solve():
        with threadpool_limits(torch.get_num_threads(), user_api="blas"):
            return np.linalg.eigvalsh(kn)

    return {"torch": lambda: torch.linalg.eigvalsh(k), "numpy": numpy_solve}


def dse_rows(n: int, d: int, repeats: int) -> list[dict]:
    ref_dse, _ = reference()
    z, _ = features(n, d)
    zt = torch.from_numpy(z)
    out = []
    ours, base, ratio = paired(lambda: dm.diffusion_spectral_entropy(zt), lambda: ref_dse.diffusion_spectral_entropy(z), repeats)
    out.append(row(f"DSE exact float64, N={n}, D={d}", ours, base, ratio, "vs reference (target >= 3x)"))
    k = dm.diffusion_kernel(zt, 10.0)
    bare = _bare_solvers(k)
    t_torch, t_numpy, r_libs = paired(bare["torch"], bare["numpy"], max(3, repeats // 2))
    chosen = [lib for key, lib in backend.choices().items() if key[0] == "eigvalsh" and key[1] == n.bit_length()
              and key[2] == torch.get_num_threads()]
    if not chosen and n > backend.PROXY_N:
        chosen = ["torch"]  # above PROXY_N rows eigen-solves always use torch (spectrum._eigvalsh)
    faster = "torch" if t_torch <= t_numpy else "numpy"
    out.append(row(f"bare eigvalsh {n}x{n} float64: torch (MKL) vs numpy (OpenBLAS)", t_torch, t_numpy, r_libs,
                   f"numpy s / torch s; the first-use measurement chose {chosen[0] if chosen else '?'}, "
                   f"the faster here is {faster}"))
    floor, ours2, _ = paired(bare[chosen[0] if chosen else faster], lambda: dm.diffusion_spectral_entropy(zt), repeats)
    out.append(row(f"DSE exact float64 vs bare eigvalsh (chosen library), N={n}", ours2, floor, floor / ours2,
                   f"ours / floor = {ours2 / floor:.2f} (target <= 1.2)"))
    ours3, base3, ratio3 = paired(lambda: dm.diffusion_spectral_entropy(zt, dtype=torch.float32),
                                  lambda: ref_dse.diffusion_spectral_entropy(z), repeats)
    err = abs(float(dm.diffusion_spectral_entropy(zt, dtype=torch.float32)) - float(dm.diffusion_spectral_entropy(zt)))
    out.append(row(f"DSE exact float32, N={n}, D={d}", ours3, base3, ratio3, f"|float32 - float64| = {err:.1e} bits"))
    return out


def dsmi_rows(n: int, d: int, repeats: int) -> list[dict]:
    _, ref_mi = reference()
    z, y = features(n, d)
    zt, yt = torch.from_numpy(z), torch.from_numpy(y)
    out = []
    for dtype, target in ((torch.float64, 2.5), (torch.float32, 2.5)):
        ours, base, ratio = paired(
            lambda: dm.diffusion_spectral_mutual_information(zt, yt, dtype=dtype),
            lambda: ref_mi.diffusion_spectral_mutual_information(z, y),
            repeats,
        )
        name = str(dtype).replace("torch.", "")
        out.append(row(f"DSMI(Z;Y) {name}, N={n}, 10 classes", ours, base, ratio, f"vs reference (target >= {target}x)"))
    return out


def precision_rows(repeats: int, quick: bool = False) -> list[dict]:
    """float32 against float64 on the benchmark cases: the error (bits) and the speed-up.

    What the monitor's default computation precision is chosen by (target: error < 1e-4 bits).
    """
    out = []
    cases = [("DSE", 2000 if quick else 4000, 512), ("DSMI(Z;Y)", 2000 if quick else 5000, 512),
             ("DSE", 1000, 128), ("DSMI(Z;Y)", 1000, 128)]
    for what, n, d in cases:
        for sigma in (10.0, "median"):
            z, y = features(n, d)
            zt, yt = torch.from_numpy(z), torch.from_numpy(y)
            if what == "DSE":
                def f(dtype):
                    return dm.diffusion_spectral_entropy(zt, sigma, dtype=dtype)
            else:
                def f(dtype):
                    return dm.diffusion_spectral_mutual_information(zt, yt, sigma=sigma, dtype=dtype)
            err = abs(float(f(torch.float32)) - float(f(torch.float64)))
            t32, t64, ratio = paired(lambda: f(torch.float32), lambda: f(torch.float64), repeats)
            out.append(row(f"precision: {what} float32 vs float64, N={n}, D={d}, sigma={sigma}", t32, t64, ratio,
                           f"|float32 - float64| = {err:.1e} bits (target < 1e-4); value {float(f(torch.float64)):.4f}"))
    return out


def dsmi_x_rows(n: int, d: int, dx: int, repeats: int) -> list[dict]:
    _, ref_mi = reference()
    z, y = features(n, d)
    rng = np.random.default_rng(1)
    x = np.eye(10)[y] @ rng.normal(size=(10, dx)) + rng.normal(scale=0.8, size=(n, dx))  # "images"
    zt, xt = torch.from_numpy(z), torch.from_numpy(x)

    def ours():
        groups = dm.reference_groups(xt, n_clusters=10)
        return dm.diffusion_spectral_mutual_information(zt, groups=groups)

    with warnings.catch_warnings():  # sklearn, on both sides: "Graph is not fully connected"
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        t_ours, t_base, ratio = paired(ours, lambda: ref_mi.diffusion_spectral_mutual_information(z, x), repeats)
        groups = dm.reference_groups(xt, n_clusters=10)
    t_cached, _, _ = paired(lambda: dm.diffusion_spectral_mutual_information(zt, groups=groups), lambda: None, repeats)
    return [
        row(f"DSMI(Z;X) with clustering, N={n}, D'={dx}", t_ours, t_base, ratio, "same spectral clustering on both sides"),
        row(f"DSMI(Z;X) clusters cached, N={n}", t_cached, t_base, t_base / t_cached, "clusters computed once (as the callback does)"),
    ]


_MEMORY_SCRIPT = """
import resource, sys, torch, numpy as np
torch.set_num_threads(2)
import dse_monitor as dm
from dse_monitor.functional import backend
from threadpoolctl import threadpool_limits
n, d, which = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
z = np.random.default_rng(0).normal(size=(n, d))
import os
before = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024  # current RSS, KiB
if which == "ours":
    dm.diffusion_spectral_entropy(torch.from_numpy(z))
else:
    import warnings
    with warnings.catch_warnings():
        from dse_dsmi import diffusion_spectral_entropy
    diffusion_spectral_entropy(z)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before * 1024, after * 1024)
"""


def memory_rows(n: int, d: int, with_reference: bool) -> list[dict]:
    """Peak resident memory of one DSE call in a fresh process (bytes above the pre-call peak)."""
    def peak(which: str) -> tuple[float, float]:
        res = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(n), str(d), which],
                             capture_output=True, text=True, check=True)
        before, after = map(int, res.stdout.split())
        return after / 2**30, (after - before) / 2**30

    ours_total, ours_extra = peak("ours")
    note = f"ours: process peak {ours_total:.2f} GiB, +{ours_extra:.2f} GiB for the call (target < 3 GB)"
    ref_total = float("nan")
    if with_reference:
        ref_total, ref_extra = peak("reference")
        note += f"; reference: peak {ref_total:.2f} GiB, +{ref_extra:.2f} GiB"
    return [row(f"DSE exact float64 peak memory, N={n}", float("nan"), float("nan"),
                ref_total / ours_total if with_reference else float("nan"), note)]


def rows(quick: bool = False) -> list[dict]:
    pin_threads()
    repeats = 3 if quick else 5
    out = []
    out += dse_rows(2000 if quick else 4000, 512, repeats)
    out += dsmi_rows(2000 if quick else 5000, 512, repeats)
    out += dsmi_x_rows(1000 if quick else 2000, 128, 256, repeats)
    out += precision_rows(3, quick)
    out += memory_rows(4000 if quick else 10_000, 512, with_reference=not quick)
    return out


def print_table(table: list[dict]) -> None:
    print(f"{'benchmark':52s} {'ours s':>8s} {'ref s':>8s} {'ratio':>7s}  note")
    for r in table:
        print(f"{r['benchmark']:52s} {r['ours_s']:8.3f} {r['baseline_s']:8.3f} {r['ratio']:7.2f}  {r['note']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    table = rows(args.quick)
    print(json.dumps(table, indent=1) if args.json else "", end="")
    print_table(table)
