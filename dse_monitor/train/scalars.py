"""``EpochScalars``: the validation scalars of each epoch, kept in memory for fit's closing table."""
from __future__ import annotations

from typing import Any, Sequence

import lightning.pytorch as pl

__all__ = ["ACCURACIES", "EpochScalars"]

#: Scalars of the LightningModules shown beside the monitor's curves.
ACCURACIES = ("val_acc", "probe_acc")


class EpochScalars(pl.Callback):
    """Records the epoch-level validation scalars ``names`` after each validation.

    ``history[name] = {completed epochs: value}``: the validation that ends epoch k
    (0-based) is stored at k + 1, the step the monitor gives the same epoch. Sanity checks
    are skipped, and so is a scalar not logged in this validation (``callback_metrics``
    keeps the last value of a scalar logged only every few epochs, e.g. ``probe_acc``).
    """

    def __init__(self, names: Sequence[str] = ACCURACIES) -> None:
        self.names = tuple(names)
        self.history: dict[str, dict[int, float]] = {}
        self._before: dict[str, Any] = {}

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._before = {name: trainer.callback_metrics.get(name) for name in self.names}

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        for name in self.names:
            value = trainer.callback_metrics.get(name)
            # Lightning stores a fresh tensor for each scalar logged in this validation
            if value is not None and value is not self._before.get(name):
                self.history.setdefault(name, {})[trainer.current_epoch + 1] = float(value)
