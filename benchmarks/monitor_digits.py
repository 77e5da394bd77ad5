"""The monitor's cost on the embedded default, at epoch and at step cadence.

    python benchmarks/monitor_digits.py [--epochs 5] [--repeats 3] [--threads 2]

The main job's embedded default (``configs/digits.yaml``: half-width timm ResNet-18,
scikit-learn digits at 24 px, 1,438 training / 359 validation images, batch 128, so 12
optimizer steps an epoch), with the monitor's defaults on the whole validation split
(DSE, DSMI(Z;Y), DSMI(Z;X)). Three runs, interleaved ``--repeats`` times: no monitor,
the monitor after every epoch, and every 50 optimizer steps
(``every_n_train_steps=50``). Reported per cadence:

- overhead: median epoch time with the monitor over the median without, minus 1 (the
  epochs after the first, whose clock also holds the measurement at init); this counts
  everything the monitor adds, its hooks in the validation pass included; target < 10%;
- the monitor's own seconds per measurement (``last_duration_s``, median) and their
  share of the epoch.
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

try:
    from _common import pin_threads
except ImportError:  # imported as benchmarks.monitor_digits
    from benchmarks._common import pin_threads


def run(epochs: int, monitored: bool = True, **cadence) -> dict:
    import lightning.pytorch as L

    from dse_monitor import DSEMonitor
    from dse_monitor.train.data import ImageDataModule
    from dse_monitor.train.model import ImageClassifier

    class Clock(L.Callback):
        """Wall time of each training epoch, and the monitor's time inside it."""

        def __init__(self, monitor):
            self.monitor, self.epoch_s, self.monitor_s, self.durations = monitor, [], [], []

        def on_train_epoch_start(self, trainer, pl_module):
            self.start, self.spent = time.perf_counter(), 0.0

        def on_train_batch_end(self, trainer, pl_module, *args):
            self._collect()

        def on_train_epoch_end(self, trainer, pl_module):  # listed after the monitor: its epoch-end work is in
            self._collect()
            self.epoch_s.append(time.perf_counter() - self.start)
            self.monitor_s.append(self.spent)

        def _collect(self):
            d = self.monitor.last_duration_s
            if d is not None:
                self.durations.append(d)
                self.spent += d
                self.monitor.last_duration_s = None

    L.seed_everything(1)
    data = ImageDataModule("digits", image_size=24, batch_size=128)
    model = ImageClassifier("resnet18", num_classes=10, lr=1e-3, warmup_epochs=2,
                            backbone_kwargs={"channels": [32, 64, 128, 256], "stem_width": 32})
    monitor = DSEMonitor(num_samples=None, **cadence)
    if not monitored:  # the clock alone: the same run without the monitor
        monitor.last_duration_s = None
    clock = Clock(monitor)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[monitor, clock] if monitored else [clock])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=data)
    init = clock.durations[0] if monitor.at_init and clock.durations else None  # measured in on_train_start, collected in epoch 1
    measured = clock.durations[1:] if init is not None else clock.durations
    # steady state: epochs after the first (whose clock also holds the measurement at init)
    monitor_s = clock.monitor_s[1:]
    training = [e - m for e, m in zip(clock.epoch_s[1:], monitor_s)]
    return {"per_measurement_s": statistics.median(measured) if measured else float("nan"),
            "first_s": init, "measurements": len(measured), "share": sum(monitor_s) / sum(training),
            "epoch_s": statistics.median(clock.epoch_s[1:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    pin_threads(args.threads)
    epochs = max(args.epochs, 9)  # 50 steps need 5 epochs of 12
    cases = {"no monitor": {"monitored": False}, "every epoch": {},
             "every 50 steps": {"every_n_train_steps": 50}}
    results: dict[str, list[dict]] = {name: [] for name in cases}
    for _ in range(args.repeats):  # interleaved: a slow spell of the machine hits every case alike
        for name, kwargs in cases.items():
            results[name].append(run(epochs, **kwargs))
    bare = statistics.median(r["epoch_s"] for r in results["no monitor"])
    print(f"no monitor: {bare:.3f} s an epoch (median of {args.repeats} runs x {epochs - 1} epochs)")
    for name in ("every epoch", "every 50 steps"):
        rs = results[name]
        epoch = statistics.median(r["epoch_s"] for r in rs)
        print(f"monitor, {name:15s} {epoch:.3f} s an epoch: overhead {100 * (epoch / bare - 1):+.1f}% "
              f"(target < 10%); {statistics.median(r['per_measurement_s'] for r in rs):.3f} s a measurement "
              f"(at init {statistics.median(r['first_s'] for r in rs):.2f} s, which also clusters X), "
              f"its own share {100 * statistics.median(r['share'] for r in rs):.1f}%")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
