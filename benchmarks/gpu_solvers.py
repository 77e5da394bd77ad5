"""The solvers' rows of ``benchmarks/gpu.py --settings solvers`` (issue 23).

- DSE exact float32 / float64 and Lanczos at N = 10k-40k (D = 512, clustered data);
- DSMI(Z;Y) at N = 10,000, 10 classes, float32 and float64, exact and ``solver="auto"``,
  with equal group sizes (labels i mod 10) and unequal ones (the clusters' own labels,
  about 950-1,050 rows each); the float32 error against float64;
- Lanczos at N = 100,000 per operator storage (the default plan, dense float32, streamed
  float32 and float64), each with its peak device memory;
- the small symmetric eigen-solve, DSMI's unit of work, of a float32 diffusion kernel at
  500 / 1,000 / 2,000 rows: torch float32, torch float64, CuPy when installed, each with its
  entropy error against float64; the way the core chose and whether padded batches pay there.

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
    """One symmetric eigen-solve (DSMI's unit of work) of a float32 diffusion kernel: each way's time and
    entropy error against the float64 solve, the way the core chose, and whether padded batches pay."""
    from dse_monitor.functional import device_eigen as de
    from dse_monitor.functional.spectrum import entropy_of_spectrum, symmetric_eigvals

    rows = []
    for m in sizes:
        k = de.proxy_kernels(m, 0, torch.float32, device)
        ref = entropy_of_spectrum(de.solve_as(k, "torch64").double())
        times, parts = {}, []
        for how in de.ways(torch.float32):
            sec, lam = timed(lambda: de.solve_as(k, how), device, repeats)
            times[how] = sec
            parts.append(f"{how} {sec * 1e3:.1f} ms (entropy {float(entropy_of_spectrum(lam.double()) - ref):+.1e} bits)")
        tcore, _ = timed(lambda: symmetric_eigvals(k), device, repeats)
        chosen = de.choose_way(m, torch.float32, 0, device) if device.type == "cuda" else "CPU LAPACK"
        pays = de.padding_pays(m, torch.float32, device)
        rows.append((f"eigvalsh {m} x {m} float32 kernel", tcore, times["torch"], times["torch64"],
                     "; ".join(parts) + f"; the core: {chosen} ({tcore * 1e3:.1f} ms); padded batches pay: {pays}"))
        print(rows[-1], flush=True)
    return rows


def solver_rows(cfg: dict, device: torch.device, repeats: int) -> list[tuple]:
    rows = dse_rows(cfg["sizes"], cfg["d"], device, repeats, cfg["f64_max"])
    rows += dsmi_rows(cfg["dsmi_n"], cfg["d"], device, repeats)
    rows += small_solve_rows(cfg.get("small_sizes", (500, 1000, 2000)), device, repeats)
    rows += large_rows(cfg["large_n"], cfg["d"], device)
    return rows
