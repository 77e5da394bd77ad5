"""What the monitor tells the user: warnings on rank zero, each said as often as it should be.

- notes of a measurement (a failed metric, NaN features, a grouping given up): every time;
- a scale verdict (DSE pinned at 0 or log2 N by sigma): once per layer and direction;
- a memory fallback to the streamed solver: once per run;
- choices made (frozen sigma / t, the resolved layers), why a metric is not logged: one
  ``logging`` info line, each said once per run.
"""
from __future__ import annotations

import logging
import warnings
from typing import Any

from .compute import Measurement

log = logging.getLogger("dse_monitor")


class DSEMonitorWarning(UserWarning):
    """Warnings of the monitor (NaN features, skipped measurements, clamped probe, fallbacks, scale)."""


def rank_zero(trainer: Any) -> bool:
    return bool(getattr(trainer, "is_global_zero", True))


class Reporter:
    """Remembers what was said, so that a repeated condition does not warn every epoch."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.scale_warned: set[tuple[str, str]] = set()
        self.memory_warned = False
        self.said: set[str] = set()  # info lines already said (a metric that does not apply says why once)

    @staticmethod
    def warn(trainer: Any, message: str) -> None:
        if rank_zero(trainer):
            warnings.warn(message, DSEMonitorWarning, stacklevel=4)

    @staticmethod
    def info(trainer: Any, message: str) -> None:
        if rank_zero(trainer):
            log.info(message)

    def measurement(self, trainer: Any, measurement: Measurement) -> None:
        for note in measurement.notes:
            self.warn(trainer, note)
        for layer, (direction, message) in measurement.verdicts.items():
            if (layer, direction) not in self.scale_warned:
                self.scale_warned.add((layer, direction))
                self.warn(trainer, message)
        for line in measurement.info:
            if line not in self.said:
                self.said.add(line)
                self.info(trainer, line)
        if measurement.fallbacks and not self.memory_warned:
            self.memory_warned = True
            self.warn(trainer, measurement.fallbacks[0])
