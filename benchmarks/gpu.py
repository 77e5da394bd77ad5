"""GPU benchmark: exact and approximate DSE, DSMI(Z;Y), N = 100,000, and the monitor on ResNet-50.

    python benchmarks/gpu.py              # on a machine with CUDA; prints one table
    python benchmarks/gpu.py --dry-run    # tiny sizes on the CPU: checks the script's logic

Measured (one CUDA device, medians of ``--repeats`` runs after a warm-up):

- DSE exact (float32 eigen-solve with the float64 retry; float64 up to 20,000) and
  approximate (``solver="lanczos"``, dense float64 kernel) at N = 10k / 20k / 40k,
  D = 512, clustered data, sigma = 0.6 x median distance;
- DSMI(Z;Y) at N = 10,000 with 10 labels: exact (subset eigen-problems batched per
  size) and ``solver="lanczos"``;
- the approximate path at N = 100,000 (the exact one would need two 80 GB matrices);
- ``DSEMonitor`` overhead on a timm ResNet-50 (from scratch) with a 10,000-image probe
  of synthetic 224-pixel images (metrics dse + dsmi_y; dsmi_x's spectral clustering
  runs on the CPU and is left out): monitor seconds per measurement vs one training
  epoch of ``--train-batches`` batches of 128.

Without CUDA (and without ``--dry-run``) it prints why and exits 0.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from approx import make_data, median_distance  # noqa: E402


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
    import dse_monitor as dm

    z = make_data("clustered", n, d).to(device)
    labels = torch.arange(n, device=device) % 10
    sigma = 0.6 * median_distance(z)
    te, ve = timed(lambda: float(dm.diffusion_spectral_mutual_information(z, labels, sigma=sigma)), device, repeats)
    tl, vl = timed(lambda: float(dm.diffusion_spectral_mutual_information(z, labels, sigma=sigma, solver="lanczos")),
                   device, repeats)
    return [(f"DSMI(Z;Y) N={n} D={d} 10 labels", tl, te, float("nan"),
             f"exact (batched subset solves) {ve:.4f}; lanczos {vl:.4f}")]


def large_rows(n, d, device):
    import dse_monitor as dm

    z = make_data("clustered", n, d).to(device)
    sigma = 0.6 * median_distance(z)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    est = dm.diffusion_spectral_entropy_details(z, sigma, max_n=None, solver="lanczos").estimate
    _sync(device)
    sec = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return [(f"DSE lanczos N={n} D={d}", sec, float("nan"), float("nan"),
             f"{est.value:.4f} se {est.std_error:.4f} bounds [{est.lower:.4f}, {est.upper:.4f}] k={est.rank} "
             f"{est.storage} products={est.info.get('products')} peak GPU {peak:.1f} GiB")]


class SyntheticImages(torch.utils.data.Dataset):
    """``n`` random images of ``size`` px with 10 class-dependent means, made on the fly (no RAM for 10k)."""

    def __init__(self, n: int, size: int, seed: int) -> None:
        self.n, self.size, self.seed = n, size, seed
        self.means = torch.randn(10, 3, 1, 1, generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        y = i % 10
        return torch.randn(3, self.size, self.size, generator=g) + self.means[y], y


def monitor_rows(model_name, n_probe, size, train_batches, device, batch):
    import lightning.pytorch as L
    import timm
    import torch.nn.functional as F

    try:
        from dse_monitor import DSEMonitor
    except ImportError:
        return [("DSEMonitor overhead", float("nan"), float("nan"), float("nan"), "DSEMonitor not available")]

    class Task(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = timm.create_model(model_name, pretrained=False, num_classes=10)

        def forward(self, x):
            return self.net(x)

        def training_step(self, b, _):
            x, y = b
            return F.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-4)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(SyntheticImages(train_batches * batch, size, 1), batch_size=batch,
                                               num_workers=4 if device.type == "cuda" else 0)

    class Clock(L.Callback):
        def __init__(self) -> None:
            self.epochs, self.monitor = [], []

        def on_train_epoch_start(self, trainer, pl_module):
            self._t = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            self.epochs.append(time.perf_counter() - self._t)
            self.monitor.append(monitor.last_duration_s or 0.0)

    monitor = DSEMonitor(probe=SyntheticImages(n_probe, size, 2), num_samples=n_probe, metrics=["dse", "dsmi_y"],
                         batch_size=batch, log_spectrum=False)
    clock = Clock()
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_epochs=2, callbacks=[monitor, clock],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Task())
    mon = statistics.median(clock.monitor)
    train = statistics.median([e - m for e, m in zip(clock.epochs, clock.monitor)])
    return [(f"DSEMonitor {model_name} probe N={n_probe} {size}px", mon, train, float("nan"),
             f"monitor s per measurement (dse + dsmi_y) vs one training epoch of {train_batches}x{batch}; "
             f"share {mon / (mon + train):.1%}")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (checks the logic)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--skip-monitor", action="store_true")
    args = parser.parse_args(argv)
    if args.dry_run:
        device = torch.device("cpu")
        torch.set_num_threads(1)
        cfg = dict(sizes=(300, 600), d=16, f64_max=600, dsmi_n=600, large_n=1500,
                   model="resnet18", probe=40, size=32, train_batches=2, batch=8)
    else:
        if not torch.cuda.is_available():
            print("benchmarks/gpu.py: CUDA is not available on this machine; nothing was measured. "
                  "Run it where a GPU is, or use --dry-run to exercise the script on the CPU.")
            return 0
        device = torch.device("cuda")
        cfg = dict(sizes=(10_000, 20_000, 40_000), d=512, f64_max=20_000, dsmi_n=10_000, large_n=100_000,
                   model="resnet50", probe=10_000, size=224, train_batches=40, batch=128)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    print(f"device: {name}, torch {torch.__version__}", flush=True)
    rows = dse_rows(cfg["sizes"], cfg["d"], device, args.repeats, cfg["f64_max"])
    rows += dsmi_rows(cfg["dsmi_n"], cfg["d"], device, args.repeats)
    rows += large_rows(cfg["large_n"], cfg["d"], device)
    if not args.skip_monitor:
        rows += monitor_rows(cfg["model"], cfg["probe"], cfg["size"], cfg["train_batches"], device, cfg["batch"])
    print()
    print(f"| {'benchmark':42s} | {'ours s':>8s} | {'exact f32 s / base':>18s} | {'exact f64 s':>11s} | note |")
    print(f"|{'-' * 44}|{'-' * 10}|{'-' * 20}|{'-' * 13}|------|")
    for bench, ours, b32, b64, note in rows:
        print(f"| {bench:42s} | {ours:8.2f} | {b32:18.2f} | {b64:11.2f} | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
