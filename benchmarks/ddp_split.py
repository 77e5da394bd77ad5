"""Metrics spread over DDP ranks against rank 0 alone: 2 CPU processes (gloo), one thread each.

    PYTHONPATH=. .venv/bin/python benchmarks/ddp_split.py [--n 1200] [--epochs 4]

The same Trainer twice under ``ddp_spawn`` with 2 processes: ``split_over_ranks=True``
(each rank computes its share, the parts are merged on every rank) and ``False`` (rank 0
computes every metric, rank 1 waits at the broadcast). The monitor measures 4 layers
(a 4-block MLP, width 64) with ``dse`` and ``dsmi_y`` (10 classes) on a probe of N samples
at init and after every epoch; the learning rate is 0, so every measurement is the same
work. Reported: rank 0's wall time of each measurement (probe pass, gather, compute,
merge; in brackets the compute step alone: the longest rank's part when split), the
medians, and the ratio split / alone. The values of both runs are compared (equal up to LAPACK rounding: each process measures
which library solves a kind fastest, ``dse_monitor/functional/backend.py``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the spawned processes inherit it: one thread each

import lightning.pytorch as L  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from dse_monitor import DSEMonitor  # noqa: E402

LAYERS = ["net.2", "net.4", "net.6", "net.8"]


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    centers = torch.randn(10, 32, generator=g) * 3
    return TensorDataset(centers[y] + torch.randn(n, 32, generator=g), y)


class Net(L.LightningModule):
    def __init__(self, n: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        blocks: list[nn.Module] = []
        for i in range(4):
            blocks += [nn.Linear(32 if i == 0 else 64, 64), nn.ReLU()]
        self.net = nn.Sequential(nn.Identity(), *blocks, nn.Linear(64, 10))
        self.n = n

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        return DataLoader(_data(256, 1), batch_size=64)

    def val_dataloader(self):
        return DataLoader(_data(self.n, 2), batch_size=256)


class Timings(L.Callback):
    """Rank 0 writes the monitor's wall time per measurement and its last values (list after the monitor)."""

    def __init__(self, monitor: DSEMonitor, out: Path) -> None:
        self.monitor, self.out, self.times = monitor, out, []

    def setup(self, trainer, pl_module, stage):
        torch.set_num_threads(1)

    def on_train_start(self, trainer, pl_module):
        self.times.append((self.monitor.last_duration_s, self.monitor.last_measurement.duration_s))

    def on_train_epoch_end(self, trainer, pl_module):
        self.times.append((self.monitor.last_duration_s, self.monitor.last_measurement.duration_s))

    def on_fit_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            self.out.write_text(json.dumps({"times": self.times, "values": self.monitor.last_measurement.values,
                                            "computed_by": self.monitor.last_measurement.computed_by}))


def run(n: int, epochs: int, split: bool, root: Path) -> dict:
    monitor = DSEMonitor(layers=LAYERS, num_samples=None, metrics=["dse", "dsmi_y"], sigma="median_init",
                         split_over_ranks=split, solver="exact")
    root.mkdir(parents=True, exist_ok=True)
    out = root / f"split{int(split)}.json"
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=epochs, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, default_root_dir=str(root), callbacks=[monitor, Timings(monitor, out)])
    try:
        trainer.fit(Net(n))
    except torch.multiprocessing.ProcessExitedException as err:  # a rank's abort at exit (gloo teardown), rare
        print(f"ddp_spawn: {err}; running once more", flush=True)
        return run(n, epochs, split, root / "retry")
    return json.loads(out.read_text())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1200)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs (alone, split), interleaved")
    args = parser.parse_args(argv)
    print(f"N={args.n}, 4 layers x (dse, dsmi_y), 2 processes x 1 thread, {args.epochs + 1} measurements a run")
    ratios, diffs = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            alone = run(args.n, args.epochs, False, Path(tmp))
            split = run(args.n, args.epochs, True, Path(tmp))
        # equal up to LAPACK rounding: each process measures which library solves a kind fastest
        if alone["values"].keys() != split["values"].keys():
            sys.exit("the split run logged other keys than rank 0 alone")
        diffs.append(max(abs(alone["values"][k] - split["values"][k]) for k in alone["values"]))
        medians = {}
        for name, r in (("rank 0 alone", alone), ("split over ranks", split)):
            total, compute = (statistics.median(t[i] for t in r["times"]) for i in (0, 1))
            medians[name] = total
            print(f"{name:>17}: median {total:.3f} s per measurement ({compute:.3f} s computing); each: "
                  + ", ".join(f"{t[0]:.3f}" for t in r["times"]))
        ratios.append(medians["split over ranks"] / medians["rank 0 alone"])
        print(f"  ratio split / alone {ratios[-1]:.2f}; deal: {split['computed_by']}")
    print(f"median ratio split / alone: {statistics.median(ratios):.2f} (runs: "
          + ", ".join(f"{r:.2f}" for r in ratios) + f"); largest difference of the values {max(diffs):.1e} bits")
    if max(diffs) > 1e-6:
        sys.exit("the split run's values differ from rank 0's alone by more than LAPACK rounding")


if __name__ == "__main__":
    main()
