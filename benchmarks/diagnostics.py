"""What the scale diagnostics add to one exact DSE measurement (issue 11: under 2% at N = 4,000).

    python benchmarks/diagnostics.py [--quick] [--n 4000] [--d 256] [--repeats 5]   # ~2 min on 2 free cores

Each pair times one exact DSE (float64, sigma = 10, the monitor's measurement) and,
right after or before it (the order alternates), the diagnostics the monitor adds:
``median_pairwise_distance`` (all pairs of a seeded 1,000-row sample, the default), the
ratio, ``normalised_entropy`` and ``scale_diagnosis``. The overhead is the median over
pairs of diagnostics / DSE. More rows, for scale: the same with resolve_sigma's 2,000-row
sample, the median over all N(N-1)/2 pairs (what reusing the kernel's distances would
have to select from), and the ``t="knee"`` choice (DSE(t) for t = 1..100 from the
spectrum, and its knee), paid once per layer per run. Run from the repository root.
"""
from __future__ import annotations

import argparse
import statistics

import torch

try:
    from _common import _timed, pin_threads
    from core import features
except ImportError:  # imported as benchmarks.diagnostics
    from benchmarks._common import _timed, pin_threads
    from benchmarks.core import features

import dse_monitor.functional as F


def paired_overhead(measure, extras: dict, repeats: int) -> tuple[float, dict]:
    """Median seconds of ``measure``, and per extra its median seconds and the median of the paired ratios.

    Each pair is one ``measure`` and each extra just before or just after it (alternating),
    so a slow patch of a shared machine hits both sides of a ratio.
    """
    measure()
    for fn in extras.values():
        fn()
    t_measure, t_extra, ratios = [], {k: [] for k in extras}, {k: [] for k in extras}
    for i in range(repeats):
        before = {k: _timed(fn) for k, fn in extras.items()} if i % 2 else {}
        a = _timed(measure)
        after = {} if i % 2 else {k: _timed(fn) for k, fn in extras.items()}
        t_measure.append(a)
        for k, b in {**before, **after}.items():
            t_extra[k].append(b)
            ratios[k].append(b / a)
    medians = {k: (statistics.median(t_extra[k]), statistics.median(ratios[k])) for k in extras}
    return statistics.median(t_measure), medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="N = 2,000 and 3 pairs")
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    n, repeats = (2000, 3) if args.quick else (args.n, args.repeats)
    pin_threads()
    z = torch.from_numpy(features(n, args.d)[0])
    sigma = 10.0

    def measure() -> float:
        return float(F.diffusion_spectral_entropy(z, sigma))

    dse = measure()

    def diagnostics(max_points: int = 1000) -> object:
        ratio = F.median_pairwise_distance(z, max_points=max_points) / sigma
        F.normalised_entropy(dse, n)
        return F.scale_diagnosis(dse, n, ratio)

    def all_pairs_median() -> float:
        return F.median_pairwise_distance(z, max_points=n)

    lam = F.diffusion_eigenvalues(z, sigma)

    def knee() -> int:
        return F.diffusion_time_knee(lam, t_max=100)

    print(f"N = {n}, D = {args.d}, sigma = {sigma}, DSE = {dse:.3f} bits, median distance = "
          f"{F.median_pairwise_distance(z):.3f} (1,000 rows) / {F.median_pairwise_distance(z, max_points=2000):.3f} "
          f"(2,000 rows) / {all_pairs_median():.3f} (all pairs), "
          f"torch threads = {torch.get_num_threads()}, {repeats} pairs")
    extras = {"diagnostics (1,000-row sample median, default)": diagnostics,
              "diagnostics (2,000-row sample median)": lambda: diagnostics(2000),
              "median over all pairs (for comparison)": all_pairs_median,
              "t='knee': DSE(t), t=1..100, + knee (once)": knee}
    t_dse, results = paired_overhead(measure, extras, repeats)
    print(f"one exact DSE (float64): median {t_dse:.3f} s")
    print(f"{'added to one exact DSE':48s} {'added s':>8s} {'overhead':>9s}")
    for name, (t_extra, ratio) in results.items():
        print(f"{name:48s} {t_extra:8.4f} {100 * ratio:8.2f}%")


if __name__ == "__main__":
    main()
