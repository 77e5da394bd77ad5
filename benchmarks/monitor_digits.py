"""The monitor's share of epoch time on the embedded default, at epoch and at step cadence.

    python benchmarks/monitor_digits.py [--epochs 4] [--threads 2]

The main job's embedded default (``configs/digits.yaml``: half-width timm ResNet-18,
scikit-learn digits at 24 px, 1,438 training / 359 validation images, batch 128, so 12
optimizer steps an epoch), with the monitor's defaults on the whole validation split
(DSE, DSMI(Z;Y), DSMI(Z;X)). Two cadences: after every epoch, and every 50 optimizer
steps (``every_n_train_steps=50``). Reported: the monitor's seconds per measurement
(median, the first one, which also clusters the inputs, apart) and its share of the
training time it rides on, ``monitor seconds / (epoch seconds - monitor seconds)``,
summed over the epochs after the first (whose clock also holds the at-init
measurement); target < 10%.
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


def run(epochs: int, **cadence) -> dict:
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
    clock = Clock(monitor)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[monitor, clock])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=data)
    init = clock.durations[0] if monitor.at_init else None  # measured in on_train_start, collected in epoch 1
    measured = clock.durations[1:] if init is not None else clock.durations
    # steady state: epochs after the first (whose clock also holds the measurement at init)
    monitor_s = clock.monitor_s[1:]
    training = [e - m for e, m in zip(clock.epoch_s[1:], monitor_s)]
    return {"per_measurement_s": statistics.median(measured) if measured else float("nan"),
            "first_s": init, "measurements": len(measured), "share": sum(monitor_s) / sum(training),
            "epoch_s": statistics.median(training)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    pin_threads(args.threads)
    for name, cadence in (("every epoch", {}), ("every 50 steps", {"every_n_train_steps": 50})):
        r = run(args.epochs if not cadence else max(args.epochs, 9), **cadence)
        print(f"monitor, {name:15s}  {r['per_measurement_s']:.2f} s a measurement ({r['measurements']} after init; "
              f"at init {r['first_s']:.2f} s, which also clusters X), training per epoch {r['epoch_s']:.2f} s, "
              f"share of training time {100 * r['share']:.1f}%")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
