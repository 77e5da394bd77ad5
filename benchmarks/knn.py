"""kNN-kernel DSE at scale: exact neighbours, the sparse operator, the approximate solver.

    python benchmarks/knn.py                  # CPU, 2 threads: N = 200,000, D = 64; then N = 20,000 against the exact value
    python benchmarks/knn.py --device cuda    # one GPU: N = 1,000,000, D = 256 (and the N = 20,000 check on the GPU)
    python benchmarks/knn.py --quick          # small sizes on the CPU: checks the script in seconds

Each case times ``diffusion_spectral_entropy(z, kernel="knn", k=15, alpha=1, t=1,
solver="lanczos", max_n=None, dtype=float32)`` from features to value: the neighbour
search (blocks of ``||x_j||^2 - 2 x_i.x_j`` ranked by ``torch.topk``), the sparse kernel
(float64 values, CSR), then deflated stochastic Lanczos quadrature on it (the solver's
own seconds are ``EntropyEstimate.seconds``; the rest is the kernel). Features: 20
Gaussian clusters, generated on the device before the clock starts. Memory: the process's
peak resident set (``resource.getrusage``, taken right after the large CPU case) or
``torch.cuda.max_memory_allocated``. The check case solves the same sparse operator
exactly (densified, ``eigvalsh``) and reports the estimate's error and whether the
bounds contain the exact value. On CUDA (and with --quick) the neighbour search is also
timed alone (``search_s``; float32 on CUDA takes TF32 candidates with a certificate, and
``redone_rows`` counts the rows whose certificate failed), and at N / 10 against the plain
float32 search (``plain_s``, ``same``: identical neighbours and distances).

Targets (issue 26): N = 200,000, D = 64 on 2 CPU cores under 2 minutes and 4 GB; N = 20,000
within 0.01 bits of the exact value, bounds containing it; N = 1,000,000, D = 256 on one
GPU under 10 s and 16 GB. Needs torch only (and this package): no Lightning, no train extra.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dse_monitor.functional import diffusion_spectral_entropy_details  # noqa: E402
from dse_monitor.functional import knn_search as knn_module  # noqa: E402
from dse_monitor.functional.indefinite import indefinite_entropy  # noqa: E402
from dse_monitor.functional.sparse_operator import SparseKernelOperator  # noqa: E402
from dse_monitor.functional.spectrum import entropy_of_spectrum  # noqa: E402

K, ALPHA, T = 15, 1.0, 1


def clusters(n: int, d: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    centres = torch.randn(20, d, generator=g, device=device) * 3
    labels = torch.randint(0, 20, (n,), generator=g, device=device)
    return centres[labels] + torch.randn(n, d, generator=g, device=device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def large(n: int, d: int, device: torch.device) -> dict:
    """Features to value at N x D; seconds, solver seconds, peak memory (GiB)."""
    z = clusters(n, d, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    est = diffusion_spectral_entropy_details(z, t=T, kernel="knn", k=K, alpha=ALPHA, solver="lanczos", max_n=None,
                                              dtype=torch.float32).estimate
    _sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" \
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"case": f"N={n} D={d} {device.type}", "seconds": seconds, "solver_s": est.seconds,
            "peak_gib": peak / 2**30, "value": est.value, "std_error": est.std_error, "lower": est.lower,
            "upper": est.upper}


def search(n: int, d: int, device: torch.device, compare: bool) -> dict:
    """The neighbour search alone at N x D: seconds, rows searched again (certificate failed), and
    with ``compare`` the plain search's seconds and whether both return the same neighbours."""
    z = clusters(n, d, device)
    redone = []
    plain = knn_module._exact_rows

    def counting(x, a, k, query, rows):  # the rows the candidate route hands back to the plain search
        redone.append(query.numel())
        return plain(x, a, k, query, rows)

    knn_module._exact_rows = counting
    try:
        _sync(device)
        start = time.perf_counter()
        idx, d2 = knn_module.knn_search(z, K)
        _sync(device)
        out = {"case": f"N={n} D={d} {device.type} search", "search_s": time.perf_counter() - start}
    finally:
        knn_module._exact_rows = plain
    candidates = device.type == "cuda" and z.dtype == torch.float32  # knn_search's own choice of route
    out["redone_rows"] = sum(redone) if candidates else "n/a (plain search)"
    if compare:
        start = time.perf_counter()
        idx0, d20 = knn_module.knn_search(z, K, reduced_bits=0)
        _sync(device)
        out.update(plain_s=time.perf_counter() - start, same=bool(torch.equal(idx, idx0) and torch.equal(d2, d20)))
    return out


def check(n: int, d: int, device: torch.device, exact_device: torch.device) -> dict:
    """The estimate and bounds at N x D against the exact entropy of the same sparse operator."""
    z = clusters(n, d, device, seed=1)
    op = SparseKernelOperator.build(z, K, ALPHA)
    est = indefinite_entropy(op, T)
    dense = op.to_dense().to(exact_device)
    exact = float(entropy_of_spectrum(torch.linalg.eigvalsh(dense), T))
    del dense
    return {"case": f"N={n} D={d} exact", "exact": exact, "value": est.value, "error": est.value - exact,
            "std_error": est.std_error, "lower": est.lower, "upper": est.upper,
            "contain": est.lower <= exact <= est.upper}


def same_operator_on_cpu(n: int, d: int, device: torch.device) -> dict:
    """The device's neighbours and kernel against the CPU's, on the same float32 features."""
    z = clusters(n, d, device, seed=2)
    here, cpu = SparseKernelOperator.build(z, K, ALPHA), SparseKernelOperator.build(z.cpu(), K, ALPHA)
    a, b = here.to_dense().cpu(), cpu.to_dense()
    return {"case": f"N={n} D={d} {device.type} vs cpu", "max_entry_diff": float((a - b).abs().max()),
            "same_pattern": bool(torch.equal(a != 0, b != 0))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--quick", action="store_true", help="small sizes on the CPU (N = 5,000 and 1,500)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for the CPU cases (default 2)")
    p.add_argument("--skip-check", action="store_true", help="only the large case")
    p.add_argument("--exact-device", default=None,
                   help="device of the check's exact eigen-solve (default: cuda where available, else cpu)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available: run the CPU case (python benchmarks/knn.py) or --quick.")
        return 0
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    n, d = (1_000_000, 256) if device.type == "cuda" else (200_000, 64)
    n_check = 20_000
    if args.quick:
        device, n, d, n_check = torch.device("cpu"), 5_000, 16, 1_500
    exact_device = torch.device(args.exact_device or ("cuda" if torch.cuda.is_available() else "cpu"))
    print(f"kNN kernel k={K}, alpha={ALPHA}, t={T}, solver='lanczos', torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads" + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""),
          flush=True)
    cases = [lambda: large(n, d, device)]
    if device.type == "cuda" or args.quick:  # the search's share of the seconds; the two routes at N / 10
        cases += [lambda: search(n, d, device, compare=False), lambda: search(n // 10, d, device, compare=True)]
    if not args.skip_check:
        cases.append(lambda: check(n_check, 64 if not args.quick else d, device, exact_device))
    if device.type == "cuda":
        cases.append(lambda: same_operator_on_cpu(3000, d, device))
    for case in cases:  # one line each, as soon as it is measured
        print(" | ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in case().items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
