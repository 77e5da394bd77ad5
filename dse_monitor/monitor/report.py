"""What the monitor tells the user: warnings on rank zero, each said as often as it should be.

- notes of a measurement (a failed metric, NaN features, a grouping given up): every time;
- a scale verdict (DSE pinned at 0 or log2 N by sigma): once per layer and direction,
  except the paper's own start (below);
- identical layers measured once: one info line per pair;
- a memory fallback to the streamed solver: once per run;
- choices made (frozen sigma / t, the resolved layers, the validation-reuse check), why a
  metric is not logged: one info line (each line of a measurement once per run), on rank
  zero, through the Lightning distribution's ``rank_zero_info`` (so it shows where
  Lightning's own "GPU available" lines do), else ``logging`` ("dse_monitor").

The paper's start. With an absolute sigma (the paper's 10, the default) a network at
initialisation often has its features within sigma of each other, so DSE starts near 0:
the collapsed-initialisation regime the paper studies, not a misconfiguration. At init
the monitor cannot tell that start from a sigma on the wrong scale; the next
measurements can. Rule, for a numeric sigma: a "below" verdict at initialisation
(history key 0) is said as an info line; at a later measurement the verdict is left
unsaid while the layer's DSE is rising (at least doubled and up by :data:`RISING_BITS`
since the previous measurement: training is spreading the features) and warned once
when it is not (stuck at sigma's scale). "above", and the sigma policies
(``"sqrt_dim"``, ``"median"``, ``"median_init"``), warn at once.

Everything said is also kept (:attr:`Reporter.said`) so that the TensorBoard sink can
write it where ``dse-monitor report`` finds it.
"""
from __future__ import annotations

import logging
import warnings
from typing import Any, Callable, Optional, Union

from ..functional.scale import collapsed_init_note
from ..registry import parse_key
from .compute import Measurement

log = logging.getLogger("dse_monitor")

#: Least rise of DSE (bits, or fraction of log2 N for ``dse_norm``) between measurements that counts as rising.
RISING_BITS = 0.01


class DSEMonitorWarning(UserWarning):
    """Warnings of the monitor (NaN features, skipped measurements, clamped probe, fallbacks, scale)."""


def rank_zero(trainer: Any) -> bool:
    return bool(getattr(trainer, "is_global_zero", True))


class Reporter:
    """Remembers what was said, so that a repeated condition does not warn every epoch.

    ``info_fn``: where info lines go (the distribution's ``rank_zero_info``; None: ``logging``);
    ``sigma``: the configured sigma (the paper's start is told apart by it).
    """

    def __init__(self, info_fn: Optional[Callable[[str], None]] = None, sigma: Union[float, str, None] = None) -> None:
        self.info_fn = info_fn
        self.sigma = sigma
        self.reset()

    def reset(self) -> None:
        self.scale_warned: set[tuple[str, str]] = set()
        self.explained: set[str] = set()
        self.last_dse: dict[str, float] = {}
        self.aliases_said: set[tuple[str, str]] = set()
        self.memory_warned = False
        #: ``(kind, message)`` of everything said on rank zero, kind "warning" or "info".
        self.said: list[tuple[str, str]] = []
        self.sent = 0
        self.info_said: set[str] = set()  # a measurement's info lines (a metric that does not apply) said once

    def unsent(self) -> list[tuple[str, str]]:
        """What was said since the last call (for the TensorBoard text of the run's messages)."""
        new, self.sent = self.said[self.sent:], len(self.said)
        return new

    def warn(self, trainer: Any, message: str) -> None:
        if rank_zero(trainer):
            self.said.append(("warning", message))
            warnings.warn(message, DSEMonitorWarning, stacklevel=4)

    def info(self, trainer: Any, message: str) -> None:
        if rank_zero(trainer):
            self.said.append(("info", message))
            (self.info_fn or log.info)(message)

    def measurement(self, trainer: Any, measurement: Measurement) -> None:
        for note in measurement.notes:
            self.warn(trainer, note)
        dse = _dse_by_layer(measurement.values)
        for layer, (direction, message) in measurement.verdicts.items():
            if (layer, direction) in self.scale_warned:
                continue
            if direction == "below" and _absolute(self.sigma):
                if measurement.step == 0:
                    if layer not in self.explained:
                        self.explained.add(layer)
                        self.info(trainer, f"DSEMonitor: {collapsed_init_note(layer, float(self.sigma))}")
                    continue
                before, now = self.last_dse.get(layer), dse.get(layer)
                if layer in self.explained and before is not None and now is not None \
                        and now >= 2 * before and now - before >= RISING_BITS:
                    continue  # leaving the collapsed start, as the paper's runs do
            self.scale_warned.add((layer, direction))
            self.warn(trainer, message)
        self.last_dse.update(dse)
        for duplicate, original in measurement.aliases.items():
            if (duplicate, original) not in self.aliases_said:
                self.aliases_said.add((duplicate, original))
                self.info(trainer, f"DSEMonitor: layers {original!r} and {duplicate!r} give identical pooled "
                                   f"features; measured once, logged under both names.")
        for line in measurement.info:
            if line not in self.info_said:
                self.info_said.add(line)
                self.info(trainer, line)
        if measurement.fallbacks and not self.memory_warned:
            self.memory_warned = True
            self.warn(trainer, measurement.fallbacks[0])


def _absolute(sigma: Any) -> bool:
    return isinstance(sigma, (int, float)) and not isinstance(sigma, bool)


def _dse_by_layer(values: dict[str, float]) -> dict[str, float]:
    """``{layer: DSE}`` of a measurement's values (``dse``, else ``dse_norm``)."""
    out: dict[str, float] = {}
    for name in ("dse_norm", "dse"):  # dse last: it wins where both are logged
        for key, value in values.items():
            parsed = parse_key(key)
            if parsed is not None and parsed.name == name:
                out[parsed.layer] = value
    return out
