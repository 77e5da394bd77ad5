"""The DSE monitor's share of epoch time: a small CNN on CPU, probe of N = 1,000 images.

    python benchmarks/callback_overhead.py [--quick]

A CIFAR-sized task (32x32 RGB, 10 classes, synthetic data so nothing is downloaded):
a 4-layer CNN trains with AdamW, batch 128, on 2 pinned threads. The monitor runs its
defaults (penultimate layer, DSE + DSMI(Z;Y) + DSMI(Z;X), inputs resized to 64x64 and
clustered once) on 1,000 images of a 2,000-image validation split after every epoch.

Reported per epoch (medians over epochs; the first measurement, which also clusters
the inputs, is reported separately in the note):

- ``ours_s``: the monitor's time (probe pass + metrics + logging);
- ``baseline_s``: the rest of the epoch (training and validation);
- ``ratio``: ours_s / baseline_s, the overhead on training time (target < 0.10).
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

try:
    from _common import pin_threads, row
except ImportError:  # imported as benchmarks.callback_overhead
    from benchmarks._common import pin_threads, row


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    centers = torch.randn(10, 3, 1, 1, generator=g)
    x = torch.randn(n, 3, 32, 32, generator=g) + centers[y]
    return TensorDataset(x, y)


def _cnn() -> nn.Module:
    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

    return nn.Sequential(
        block(3, 16), block(16, 32), block(32, 64), nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    )


def measure(n_train: int = 10_000, n_val: int = 2_000, num_samples: int = 1_000, epochs: int = 4) -> dict:
    """One run with the monitor; returns per-epoch monitor and training seconds."""
    import lightning.pytorch as L

    from dse_monitor import DSEMonitor

    class Task(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _cnn()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            x, y = batch
            return F.cross_entropy(self(x), y)

        def validation_step(self, batch, _):
            x, y = batch
            self.log("val_loss", F.cross_entropy(self(x), y))

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

        def train_dataloader(self):
            return DataLoader(_data(n_train, 1), batch_size=128, shuffle=True)

        def val_dataloader(self):
            return DataLoader(_data(n_val, 2), batch_size=256)

    class Clock(L.Callback):
        """Wall time of each epoch, start to the end of every other callback's epoch-end work."""

        def __init__(self) -> None:
            self.epochs: list[float] = []
            self.monitor: list[float] = []
            self.init = 0.0

        def on_train_start(self, trainer, pl_module):
            self.init = monitor.last_duration_s or 0.0

        def on_train_epoch_start(self, trainer, pl_module):
            self._t = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            self.epochs.append(time.perf_counter() - self._t)
            self.monitor.append(monitor.last_duration_s or 0.0)

    L.seed_everything(0, verbose=False)
    monitor = DSEMonitor(num_samples=num_samples, batch_size=256)
    clock = Clock()
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=epochs, callbacks=[monitor, clock], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        trainer.fit(Task())
    total = time.perf_counter() - start
    return {
        "monitor_s": clock.monitor,
        "train_s": [e - m for e, m in zip(clock.epochs, clock.monitor)],
        "init_s": clock.init,  # the at-init measurement, which also clusters the inputs
        "total_s": total,
    }


def rows(quick: bool = False) -> list[dict]:
    pin_threads()
    n_train, epochs = (4_000, 3) if quick else (10_000, 4)
    result = measure(n_train=n_train, epochs=epochs)
    ours = statistics.median(result["monitor_s"])
    base = statistics.median(result["train_s"])
    share = ours / (ours + base)
    note = (
        f"monitor / training time per epoch (target < 0.10); share of the epoch {share:.1%}; "
        f"train N={n_train}, {epochs} epochs; at-init measurement incl. clustering {result['init_s']:.1f} s"
    )
    return [row("callback overhead, small CNN CPU, probe N=1000", ours, base, ours / base, note)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller training set and fewer epochs")
    args = parser.parse_args()
    for r in rows(quick=args.quick):
        print(f"{r['benchmark']}: ours {r['ours_s']:.3f} s, baseline {r['baseline_s']:.3f} s, "
              f"ratio {r['ratio']:.3f} ({r['note']})")
