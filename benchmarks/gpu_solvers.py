"""The solvers' rows of ``benchmarks/gpu.py --settings solvers`` (issue 23).

- DSE exact float32 / float64 and Lanczos at N = 10k-40k (D = 512, clustered data);
- DSMI(Z;Y) at N = 10,000, 10 classes, float32 and float64, exact and ``solver="auto"``,
  with equal group sizes (labels i mod 10) and unequal ones (the clusters' own labels,
  about 950-1,050 rows each); the float32 error against float64;
- Lanczos at N = 100,000 per operator storage (the default plan, dense float32, streamed
  float32 and float64), each with its peak device memory;
- the small symmetric eigen-solve, DSMI's unit of work, at 500 / 1,000 / 2,000 rows:
  torch float32, torch float64, CuPy when installed, and the library the core chose.

Each row: (benchmark, ours s, base s, second s, note); ``--dry-run`` sizes run on the CPU.
"""
from __future__ import annotations

import statistics
import time

import torch
from approx import make_data, median_distance


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int):
    """Median seconds of ``repeats`` calls after one warm-up; returns (seconds, last result)."""
    out = fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def cluster_labels(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """The cluster of each row of ``make_data("clustered", n, d, seed)`` (the same draws)."""
    g = torch.Generator().manual_seed(seed)
    torch.randn(10, d, generator=g, dtype=torch.float64)
    return torch.randint(0, 10, (n,), generator=g)


def dse_rows(sizes, d, device, repeats, f64_max):
    import dse_monitor as dm

    rows = []
    for n in sizes:
        z = make_data("clustered", n, d).to(device)
        sigma = 0.6 * median_distance(z)
        t32, v32 = timed(lambda: float(dm.diffusion_spectral_entropy(z, sigma, max_n=None, dtype=torch.float32)),
                         device, repeats)
        t64 = v64 = float("nan")
        if n <= f64_max:
            t64, v64 = timed(lambda: float(dm.diffusion_spectral_entropy(z, sigma, max_n=None)), device, repeats)
        ta, est = timed(lambda: dm.diffusion_spectral_entropy_details(z, sigma, max_n=None, solver="lanczos").estimate,
                        device, repeats)
        ref = v64 if v64 == v64 else v32
        rows.append((f"DSE N={n} D={d}", ta, t32, t64,
                     f"exact f64 {v64:.4f} f32 {v32:.4f}; lanczos {est.value:.4f} err {est.value - ref:+.4f} "
                     f"bounds [{est.lower:.4f}, {est.upper:.4f}] contain={est.lower <= ref <= est.upper} "
                     f"k={est.rank} {est.storage}"))
        print(rows[-1], flush=True)
        del z
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def dsmi_rows(n, d, device, repeats):
    """DSMI(Z;Y) float32 and float64 side by side, equal and unequal groups, exact and auto."""
    import dse_monitor as dm

    z = make_data("clustered", n, d).to(device)
    sigma = 0.6 * median_distance(z)
    rows = []
    for kind, labels in (("equal groups (i mod 10)", torch.arange(n) % 10),
                         ("unequal groups (clusters)", cluster_labels(n, d))):
        labels = labels.to(device)
        sizes = torch.bincount(labels.cpu())
        value = {}
        for solver in ("exact", "auto"):
            for dtype in (torch.float32, torch.float64):
                sec, value[solver, dtype] = timed(lambda: float(dm.diffusion_spectral_mutual_information(
                    z, labels, sigma=sigma, dtype=dtype, solver=solver)), device, repeats)
                value[solver, dtype, "s"] = sec
        err = value["exact", torch.float32] - value["exact", torch.float64]
        rows.append((f"DSMI(Z;Y) N={n} D={d} {kind}", value["auto", torch.float32, "s"],
                     value["exact", torch.float32, "s"], value["exact", torch.float64, "s"],
                     f"sizes {int(sizes.min())}-{int(sizes.max())}; exact f64 {value['exact', torch.float64]:.6f}, "
                     f"f32 error {err:+.1e}; auto f32 {value['auto', torch.float32]:.6f} "
                     f"({value['auto', torch.float32, 's']:.3f} s), auto f64 {value['auto', torch.float64]:.6f} "
                     f"({value['auto', torch.float64, 's']:.3f} s)"))
        print(rows[-1], flush=True)
    return rows


def large_rows(n, d, device):
    """Lanczos at N rows per operator storage, each with its peak device memory."""
    import dse_monitor as dm

    z = make_data("clustered", n, d).to(device)
    sigma = 0.6 * median_distance(z)
    rows = []
    plans = (("default plan", None, None), ("dense float32", False, torch.float32),
             ("streamed float32", True, torch.float32), ("streamed float64", True, torch.float64))
    for name, streamed, dtype in plans:
        _peak_reset(device)
        _sync(device)
        t0 = time.perf_counter()
        try:
            est = dm.diffusion_spectral_entropy_details(z, sigma, max_n=None, solver="lanczos", dtype=dtype,
                                                        streamed=streamed).estimate
        except Exception as err:  # noqa: BLE001 - a storage that does not fit is a row too
            rows.append((f"DSE lanczos N={n} D={d} {name}", float("nan"), float("nan"), float("nan"),
                         f"{type(err).__name__}: {str(err)[:120]}"))
            continue
        _sync(device)
        sec = time.perf_counter() - t0
        rows.append((f"DSE lanczos N={n} D={d} {name}", sec, float("nan"), float("nan"),
                     f"{est.value:.4f} se {est.std_error:.4f} bounds [{est.lower:.4f}, {est.upper:.4f}] "
                     f"k={est.rank} {est.storage} products={est.info.get('products')} "
                     f"peak {_peak_gib(device):.1f} GiB"))
        print(rows[-1], flush=True)
    return rows


def small_solve_rows(sizes, device, repeats):
    """One symmetric eigen-solve (DSMI's unit of work): each library and dtype, and the core's choice."""
    from dse_monitor.functional.spectrum import symmetric_eigvals

    try:
        import cupy
    except ImportError:
        cupy = None
    rows = []
    for m in sizes:
        a = torch.randn(m, m, generator=torch.Generator().manual_seed(m))
        a = (a @ a.T / m).to(device)
        t32, _ = timed(lambda: torch.linalg.eigvalsh(a), device, repeats)
        t64, _ = timed(lambda: torch.linalg.eigvalsh(a.double()).float(), device, repeats)
        tcp = float("nan")
        if cupy is not None and device.type == "cuda":
            tcp, _ = timed(lambda: torch.as_tensor(cupy.linalg.eigvalsh(cupy.asarray(a)), device=device),
                           device, repeats)
        tcore, _ = timed(lambda: symmetric_eigvals(a), device, repeats)
        rows.append((f"eigvalsh {m} x {m} float32 input", tcore, t32, t64,
                     f"torch f32 {t32 * 1e3:.1f} ms, via f64 {t64 * 1e3:.1f} ms, CuPy {tcp * 1e3:.1f} ms; "
                     f"the core ({tcore * 1e3:.1f} ms)"))
        print(rows[-1], flush=True)
    return rows


def solver_rows(cfg: dict, device: torch.device, repeats: int) -> list[tuple]:
    rows = dse_rows(cfg["sizes"], cfg["d"], device, repeats, cfg["f64_max"])
    rows += dsmi_rows(cfg["dsmi_n"], cfg["d"], device, repeats)
    rows += small_solve_rows(cfg.get("small_sizes", (500, 1000, 2000)), device, repeats)
    rows += large_rows(cfg["large_n"], cfg["d"], device)
    return rows
