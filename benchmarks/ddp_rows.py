"""Lanczos DSE with the kernel's rows split over 2 processes (gloo) against one process holding all of K.

    python benchmarks/ddp_rows.py [--n 20000] [--d 64] [--repeats 1] [--exact-max 6000]

Clustered data (10 Gaussian clusters, D = 64, float64), sigma = 0.6 x the median pairwise
distance, t = 1, ``solver="lanczos"`` options as the monitor uses them (the deflation on the
float64 kernel, the probes on its float32 rounding). Every case runs in fresh processes, one
torch thread each, so that each peak is its own:

- single: one process builds the whole N x N kernel (:class:`KernelOperator`) and solves;
- rows x2: two processes (``torch.distributed`` gloo, spawned) each build their rows
  (:class:`RowShardedOperator`) and solve together, one all-gather per product.

Per process: the operator's own storage (kernel rows x N x 8 bytes, plus the features and
scaling it keeps), the peak RSS above the process's RSS before the build (``/proc/self/clear_refs``
resets the peak), wall seconds of build + solve, the value and its bounds. Where N <= --exact-max,
the exact float64 value (its eigen-solve in a separate process) and whether the bounds contain it.
Medians over --repeats runs of each case.
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dse_monitor.functional import diffusion_spectral_entropy  # noqa: E402
from dse_monitor.functional.lanczos import approximate_entropy  # noqa: E402
from dse_monitor.functional.operator import KernelOperator, plan_storage  # noqa: E402
from dse_monitor.functional.row_group import RowGroup  # noqa: E402
from dse_monitor.functional.row_operator import RowShardedOperator  # noqa: E402


def make_data(n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, float]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(10, d, generator=g, dtype=torch.float64) * 3
    z = centres[torch.randint(0, 10, (n,), generator=g)] + torch.randn(n, d, generator=g, dtype=torch.float64)
    sigma = 0.6 * float(torch.cdist(z[:1000], z[:1000]).median())
    return z, sigma


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)


def _solve(n: int, d: int, group: RowGroup | None) -> dict:
    torch.set_num_threads(1)
    z, sigma = make_data(n, d)
    _reset_peak()
    rss0 = _status("VmRSS")
    start = time.perf_counter()
    share = group.share(n) if group is not None else (0, n)
    streamed, dtype, rows = plan_storage(n, d, z.dtype, z.device, None, None, rows=share[1] - share[0])
    if group is None:
        op = KernelOperator.build(z, sigma, streamed=streamed, block_size=rows, dtype=dtype)
        nbytes = op.dense_k.numel() * op.dense_k.element_size() if op.dense_k is not None else 0
    else:
        op = RowShardedOperator.build(z, sigma, group, streamed=streamed, block_size=rows, dtype=dtype)
        nbytes = op.storage_bytes
    built = time.perf_counter() - start
    est = approximate_entropy(op, 1, probe_dtype=torch.float32)
    return dict(seconds=time.perf_counter() - start, build_s=built, operator_bytes=nbytes,
                peak_rss_delta=_status("VmHWM") - rss0, value=est.value, lower=est.lower, upper=est.upper,
                std_error=est.std_error, storage=est.storage, products=est.info["products"])


def _single_child(_index: int, n: int, d: int, out: str) -> None:
    Path(out).write_text(json.dumps(_solve(n, d, None)))


def _exact_child(_index: int, n: int, d: int, out: str) -> None:
    torch.set_num_threads(1)
    z, sigma = make_data(n, d)
    start = time.perf_counter()
    value = float(diffusion_spectral_entropy(z, sigma, 1, max_n=None, solver="exact"))
    Path(out).write_text(json.dumps(dict(exact=value, exact_s=time.perf_counter() - start)))


def _rank_child(rank: int, world: int, port: int, n: int, d: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        res = _solve(n, d, RowGroup.from_torch_distributed())
        Path(out, f"rank{rank}.json").write_text(json.dumps(res))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _in_child(fn, *args) -> dict:
    """``fn(0, *args, out)`` in a fresh spawned process (its peak memory its own); what it wrote to ``out``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp, "out.json"))
        mp.spawn(fn, args=(*args, out), nprocs=1, join=True)
        return json.loads(Path(out).read_text())


def _ranks(n: int, d: int, world: int = 2) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank_child, args=(world, _free_port(), n, d, tmp), nprocs=world, join=True)
        return [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world)]


def _median(runs: list[dict]) -> dict:
    out = dict(runs[0])
    for key, v in runs[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = statistics.median(r[key] for r in runs)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--exact-max", type=int, default=6000, help="compute the exact value up to this N")
    args = ap.parse_args(argv)
    singles, ranks = [], [[], []]
    for _ in range(args.repeats):
        singles.append(_in_child(_single_child, args.n, args.d))
        for r, res in enumerate(_ranks(args.n, args.d)):
            ranks[r].append(res)
    single = _median(singles)
    per_rank = [_median(runs) for runs in ranks]
    exact = _in_child(_exact_child, args.n, args.d) if args.n <= args.exact_max else None
    gib = 2.0**30
    print(f"N = {args.n}, D = {args.d}, clustered, solver='lanczos', 1 thread per process, "
          f"medians of {args.repeats} run(s)")
    print("| case | operator storage | peak RSS delta | seconds (build) | value | bounds | products |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, res in [("single process", single)] + [(f"rows x2, rank {r}", p) for r, p in enumerate(per_rank)]:
        print(f"| {name} | {res['operator_bytes'] / gib:.3f} GiB | {res['peak_rss_delta'] / gib:.3f} GiB | "
              f"{res['seconds']:.1f} ({res['build_s']:.1f}) | {res['value']:.6f} | "
              f"[{res['lower']:.4f}, {res['upper']:.4f}] | {res['products']} |")
    worst = max(per_rank, key=lambda p: p["peak_rss_delta"])
    print(f"operator storage per rank / single: {max(p['operator_bytes'] for p in per_rank) / single['operator_bytes']:.3f}; "
          f"peak RSS delta per rank / single: {worst['peak_rss_delta'] / single['peak_rss_delta']:.3f}; "
          f"|value(rows x2) - value(single)| = {abs(per_rank[0]['value'] - single['value']):.2e} bits")
    if exact is not None:
        inside = all(p["lower"] <= exact["exact"] <= p["upper"] for p in per_rank + [single])
        print(f"exact {exact['exact']:.6f} ({exact['exact_s']:.1f} s); error rows x2 "
              f"{per_rank[0]['value'] - exact['exact']:+.2e}, single {single['value'] - exact['exact']:+.2e}; "
              f"bounds contain it: {inside}")
    print(json.dumps(dict(single=single, ranks=per_rank, exact=exact)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
