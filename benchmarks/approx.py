"""Accuracy and speed of the approximate (Lanczos) DSE solver against the exact one.

    python benchmarks/approx.py [--quick] [--only accuracy speed scale streamed crossover]

Side by side in one process (each case in its own child process, so that its peak
memory is its own; inside it the approximate solve runs first, its peak RSS is read,
then the exact float64 solve), 2 pinned threads, medians of paired runs where repeated.

- accuracy: clustered, manifold-like (noisy torus) and isotropic data, D = 64, sigma a
  multiple (3, 0.6, 0.15) of the median pairwise distance (low / middle / high
  entropy); N = 10,000 (quick: 2,000). Note: exact and approximate value, error, the
  guaranteed bounds and whether they contain the exact value.
- f32: the same at N = 10,000, middle entropy, with the kernel stored in float32 (what
  the approximate path falls back to when float64 does not fit).
- speed6k: N = 6,000, D = 256, the three kinds, middle entropy: lanczos vs exact
  float64, medians of 3 interleaved pairs.
- speed: N = 20,000, D = 512, clustered, middle entropy: lanczos vs exact float64.
- scale: N = 50,000, D = 512: lanczos only (exact needs two 50,000^2 float64 matrices,
  40 GB); wall time and peak memory.
- streamed: N = 50,000, D = 512, K never formed: the time of one kernel product and of
  a short run (float32).
- crossover: exact vs lanczos at N = 500 ... 6,000, and the path ``solver="auto"``
  picks there with its measured crossover (the regret: its pick's time over the faster).

``rows(quick)`` returns the suite's rows: benchmark, ours_s (lanczos), baseline_s
(exact float64), ratio (baseline_s / ours_s), note.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

try:
    from _common import pin_threads, row
except ImportError:  # imported as benchmarks.approx
    from benchmarks._common import pin_threads, row

HERE = Path(__file__).resolve().parent
LEVELS = {"low": 3.0, "mid": 0.6, "high": 0.15}
KINDS = ("clustered", "manifold", "isotropic")


def make_data(kind: str, n: int, d: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Synthetic representations: Gaussian clusters, a noisy torus in D dims, or isotropic noise."""
    g = torch.Generator().manual_seed(seed)
    if kind == "clustered":
        centers = torch.randn(10, d, generator=g, dtype=dtype) * 3
        return centers[torch.randint(0, 10, (n,), generator=g)] + torch.randn(n, d, generator=g, dtype=dtype)
    if kind == "manifold":
        th = torch.rand(n, 2, generator=g, dtype=dtype) * 2 * math.pi
        x = torch.stack([th[:, 0].cos(), th[:, 0].sin(), th[:, 1].cos(), th[:, 1].sin()], 1) * 3
        rot = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=dtype))[0][:4]
        return x @ rot + 0.05 * torch.randn(n, d, generator=g, dtype=dtype)
    if kind == "isotropic":
        return torch.randn(n, d, generator=g, dtype=dtype)
    raise ValueError(kind)


def median_distance(z: torch.Tensor) -> float:
    return float(torch.cdist(z[:1000].double(), z[:1000].double()).median())


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _approx(z: torch.Tensor, sigma: float, **kw):
    import dse_monitor as dm

    t0 = time.perf_counter()
    est = dm.diffusion_spectral_entropy_details(z, sigma, max_n=None, solver="lanczos", **kw).estimate
    return est, time.perf_counter() - t0


def _exact(z: torch.Tensor, sigma: float) -> tuple[float, float]:
    import dse_monitor as dm

    t0 = time.perf_counter()
    value = float(dm.diffusion_spectral_entropy(z, sigma, max_n=None))
    return value, time.perf_counter() - t0


def case(spec: dict) -> dict:
    """Run one case in this process; returns a dict of measurements."""
    pin_threads()
    kind, n, d = spec["kind"], spec["n"], spec["d"]
    dtype = torch.float32 if spec.get("float32") else torch.float64
    z = make_data(kind, n, d, dtype=dtype)
    sigma = spec.get("mult", 0.6) * median_distance(z)
    out = {"spec": spec, "sigma": sigma, "rss_data_gb": peak_rss_gb()}
    kw = {"dtype": dtype}
    if spec.get("streamed"):
        kw["streamed"] = True
    if spec.get("options"):
        kw["lanczos_options"] = spec["options"]
    if spec.get("product_only"):
        from dse_monitor.functional.operator import KernelOperator

        t0 = time.perf_counter()
        op = KernelOperator.build(z, sigma, streamed=True)
        out["build_s"] = time.perf_counter() - t0
        x = torch.randn(n, 32, dtype=torch.float64)
        t0 = time.perf_counter()
        op.matmat(x)
        out["product_s"] = time.perf_counter() - t0
        out["rss_approx_gb"] = peak_rss_gb()
        return out
    # The approximate solve first (its peak RSS is read before the exact one runs), then,
    # when repeated, pairs of (exact, approx) in alternating order; medians of each.
    est, sec = _approx(z, sigma, **kw)
    approx_times, exact_times, ratios = [sec], [], []
    out.update(rss_approx_gb=peak_rss_gb())
    repeats = spec.get("repeats", 1)
    if spec.get("exact", True):
        zd = z.double()
        for i in range(repeats):
            if i % 2 == 0:
                value, t_exact = _exact(zd, sigma)
                est, t_approx = _approx(z, sigma, **kw) if i else (est, sec)
            else:
                est, t_approx = _approx(z, sigma, **kw)
                value, t_exact = _exact(zd, sigma)
            if i:
                approx_times.append(t_approx)
            exact_times.append(t_exact)
            ratios.append(t_exact / t_approx)
        out.update(exact=value, exact_s=statistics.median(exact_times), ratio=statistics.median(ratios),
                   rss_total_gb=peak_rss_gb(), approx_all_s=approx_times, exact_all_s=exact_times)
    else:
        for _ in range(repeats - 1):
            est, t_approx = _approx(z, sigma, **kw)
            approx_times.append(t_approx)
    if spec.get("auto"):
        from dse_monitor.functional import solver

        out.update(auto=solver.choose_solver(n, 1, "auto", zd.dtype), crossover=solver.auto_crossover(zd.dtype))
    out.update(
        approx=est.value, se=est.std_error, lower=est.lower, upper=est.upper, rank=est.rank, storage=est.storage,
        approx_s=statistics.median(approx_times), products=est.info.get("products"),
        probe_dtype=est.info.get("probe_dtype", ""),
    )
    return out


def run_child(spec: dict, timeout: float = 1800) -> dict:
    """Run ``case(spec)`` in a fresh interpreter (own peak memory); returns its dict."""
    proc = subprocess.run(
        [sys.executable, str(HERE / "approx.py"), "--case", json.dumps(spec)],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"case {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _accuracy_row(r: dict) -> dict:
    s = r["spec"]
    err = r["approx"] - r["exact"]
    inside = r["lower"] <= r["exact"] <= r["upper"]
    note = (
        f"exact {r['exact']:.4f} approx {r['approx']:.4f} err {err:+.4f} se {r['se']:.4f} "
        f"bounds [{r['lower']:.4f}, {r['upper']:.4f}] contain={inside} k={r['rank']} {r['storage']} "
        f"(probes {r.get('probe_dtype') or '?'}) "
        f"peak {r['rss_approx_gb']:.1f} GB (exact {r['rss_total_gb']:.1f} GB)"
    )
    name = f"DSE lanczos vs exact N={s['n']} D={s['d']} {s['kind']} {s.get('level', '')}".strip()
    return row(name, r["approx_s"], r["exact_s"], r.get("ratio", r["exact_s"] / r["approx_s"]), note)


def accuracy_rows(n: int, d: int = 64, kinds=KINDS, levels=tuple(LEVELS)) -> list[dict]:
    out = []
    for kind in kinds:
        for level in levels:
            r = run_child({"kind": kind, "n": n, "d": d, "mult": LEVELS[level], "level": level})
            out.append(_accuracy_row(r))
            print(out[-1], flush=True)
    return out


def float32_storage_rows(n: int = 10_000, d: int = 64) -> list[dict]:
    """The float32 kernel storage that the approximate path falls back to when float64 does not fit."""
    out = []
    for kind in KINDS:
        limit = int(0.75 * 8 * n * n)  # float64 does not fit, float32 does
        r = run_child({"kind": kind, "n": n, "d": d, "mult": LEVELS["mid"], "level": "mid f32-storage",
                       "options": {"memory_limit": limit}})
        out.append(_accuracy_row(r))
        print(out[-1], flush=True)
    return out


def speed_rows(n: int = 20_000, d: int = 512) -> list[dict]:
    r = run_child({"kind": "clustered", "n": n, "d": d, "mult": LEVELS["mid"], "level": "mid"})
    return [_accuracy_row(r)]


def speed6k_rows(n: int = 6000, d: int = 256, repeats: int = 3) -> list[dict]:
    """The issue's middle case: N = 6,000, D = 256, each kind, paired medians (target >= 3x)."""
    out = []
    for kind in KINDS:
        r = run_child({"kind": kind, "n": n, "d": d, "mult": LEVELS["mid"], "level": "mid", "repeats": repeats})
        out.append(_accuracy_row(r))
        print(out[-1], flush=True)
    return out


def scale_rows(n: int = 50_000, d: int = 512) -> list[dict]:
    r = run_child({"kind": "clustered", "n": n, "d": d, "mult": LEVELS["mid"], "exact": False}, timeout=3600)
    note = (
        f"approx {r['approx']:.4f} se {r['se']:.4f} bounds [{r['lower']:.4f}, {r['upper']:.4f}] k={r['rank']} "
        f"{r['storage']} products={r['products']} peak {r['rss_approx_gb']:.1f} GB; exact not run "
        f"(two {n}^2 float64 matrices = {2 * 8 * n * n / 1e9:.0f} GB)"
    )
    return [row(f"DSE lanczos N={n} D={d} clustered mid", r["approx_s"], float("nan"), float("nan"), note)]


def streamed_rows(n: int = 50_000, d: int = 512, full_run: bool = False) -> list[dict]:
    r = run_child({"kind": "clustered", "n": n, "d": d, "mult": LEVELS["mid"], "float32": True,
                   "product_only": True}, timeout=3600)
    note = (
        f"float32, K never formed: build (degrees + Frobenius, 2 passes) {r['build_s']:.0f} s, one product "
        f"K@X (32 cols) {r['product_s']:.1f} s; a default run needs ~28 products -> ~"
        f"{(r['build_s'] + 28 * r['product_s']) / 60:.0f} min; peak {r['rss_approx_gb']:.1f} GB"
    )
    out = [row(f"DSE streamed kernel product N={n} D={d}", r["product_s"], float("nan"), float("nan"), note)]
    if full_run:
        opts = {"n_probes": 16, "lanczos_steps": 12, "max_rank": 64}
        r = run_child({"kind": "clustered", "n": n, "d": d, "mult": LEVELS["mid"], "float32": True,
                       "streamed": True, "exact": False, "options": opts}, timeout=3600)
        note = (f"float32 streamed, options {opts}: approx {r['approx']:.4f} se {r['se']:.4f} bounds "
                f"[{r['lower']:.4f}, {r['upper']:.4f}] products={r['products']} peak {r['rss_approx_gb']:.1f} GB")
        out.append(row(f"DSE lanczos streamed N={n} D={d} clustered mid", r["approx_s"], float("nan"),
                       float("nan"), note))
    return out


def crossover_rows(sizes=(500, 1000, 2000, 3000, 4000, 6000), d: int = 64, repeats: int = 3) -> list[dict]:
    """Exact vs lanczos around the crossover, and what ``solver="auto"`` picks (measured in the same child).

    The regret is the time of auto's pick over the faster path's (target <= 1.2).
    """
    out = []
    for n in sizes:
        r = run_child({"kind": "clustered", "n": n, "d": d, "mult": LEVELS["mid"], "repeats": repeats, "auto": True})
        pick = r["approx_s"] if r["auto"] == "lanczos" else r["exact_s"]
        regret = pick / min(r["approx_s"], r["exact_s"])
        out.append(row(f"crossover N={n} D={d} clustered mid", r["approx_s"], r["exact_s"], r["ratio"],
                       f"auto picks {r['auto']} (measured crossover {r['crossover']}), regret {regret:.2f}x "
                       f"(target <= 1.2); err {r['approx'] - r['exact']:+.4f}, "
                       f"bounds contain={r['lower'] <= r['exact'] <= r['upper']}"))
        print(out[-1], flush=True)
    return out


def rows(quick: bool = False, only: list[str] | None = None) -> list[dict]:
    """Rows for the suite; ``quick`` (< 2 minutes): N = 2,000 accuracy grid and a short crossover."""
    if quick:
        return accuracy_rows(2000, kinds=KINDS, levels=("mid",)) + crossover_rows((1000, 2000, 4000), repeats=1)
    only = only or ["speed6k", "crossover", "speed", "accuracy", "f32", "scale", "streamed"]
    out = []
    if "speed6k" in only:
        out += speed6k_rows()
    if "crossover" in only:
        out += crossover_rows()
    if "accuracy" in only:
        out += accuracy_rows(10_000)
    if "f32" in only:
        out += float32_storage_rows()
    if "speed" in only:
        out += speed_rows()
    if "scale" in only:
        out += scale_rows()
    if "streamed" in only:
        out += streamed_rows()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*",
                        choices=["speed6k", "crossover", "speed", "accuracy", "f32", "scale", "streamed"])
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(case(json.loads(args.case))))
        return
    pin_threads()
    table = rows(args.quick, args.only)
    print(f"| {'benchmark':55s} | {'ours s':>8s} | {'baseline s':>10s} | {'ratio':>6s} | note |")
    for r in table:
        print(f"| {r['benchmark']:55s} | {r['ours_s']:8.2f} | {r['baseline_s']:10.2f} | {r['ratio']:6.2f} | {r['note']} |")


if __name__ == "__main__":
    main()
