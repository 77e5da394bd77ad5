"""When the monitor measures, and where on the trainer's x-axis the values go.

Cadence: at init (before the first training step) when ``at_init``; then either after
every n-th training epoch (``every_n_epochs``, the default: 1) or after every n-th
optimizer step (``every_n_train_steps``), never both. Every rank sees the same epoch
and global step, so under DDP every rank decides identically (no rank waits alone).

x-axis: Lightning logs a batch's metrics, and the epoch-end validation that follows
the last batch, at ``fit_loop.epoch_loop._batches_that_stepped`` as it stands then (what
its own ``LearningRateMonitor`` logs at; there is no public accessor). The monitor logs
at that same step, so that DSE and ``val_loss`` share an axis:

- at init: step 0;
- after epoch e: the step of the epoch's last batch, where its validation was logged;
- every n steps: the step of the batch that made the n-th optimizer step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class Position:
    """Where a measurement sits: ``key`` in the history, completed ``epoch``, ``global_step``, logged ``step``."""

    key: int
    epoch: int
    global_step: int
    step: int


def _batches_that_stepped(trainer: Any) -> int:
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    value = getattr(loop, "_batches_that_stepped", None)
    return int(value) if value is not None else int(trainer.global_step)


def at_init(trainer: Any) -> Position:
    return Position(key=0, epoch=0, global_step=int(trainer.global_step), step=0)


def after_epoch(trainer: Any, every_n_epochs: Optional[int]) -> Optional[Position]:
    """The position of an epoch-end measurement, or None when this epoch is not measured."""
    if every_n_epochs is None:
        return None
    epoch = trainer.current_epoch + 1
    if epoch % every_n_epochs != 0:
        return None
    # at on_train_epoch_end the counter has moved past the last batch: its step is one less
    step = max(_batches_that_stepped(trainer) - 1, 0)
    return Position(key=epoch, epoch=epoch, global_step=int(trainer.global_step), step=step)


def after_step(trainer: Any, every_n_train_steps: Optional[int], last_global_step: int) -> Optional[Position]:
    """The position of a step measurement in ``on_train_batch_end``, or None.

    Only a batch that made an optimizer step counts (under gradient accumulation the
    global step repeats over several batches): ``last_global_step`` is the global step
    of the previous measurement or check.
    """
    if every_n_train_steps is None:
        return None
    global_step = int(trainer.global_step)
    if global_step == last_global_step or global_step == 0 or global_step % every_n_train_steps != 0:
        return None
    return Position(key=global_step, epoch=int(trainer.current_epoch), global_step=global_step,
                    step=_batches_that_stepped(trainer))
