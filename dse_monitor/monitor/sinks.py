"""Where a measurement goes: ``trainer.callback_metrics``, every logger, TensorBoard extras, raw files.

Every rank puts the values in ``callback_metrics`` (so that ``ModelCheckpoint`` /
``EarlyStopping`` on any rank see the same numbers); rank zero writes the loggers, the
TensorBoard layout and spectra, and ``save_raw``'s files. A sink that fails warns and
training goes on.

Raw files (``save_raw=True``), in ``<trainer.log_dir>/<prefix>_monitor/``:
``history.json`` (probe indices and one row per measurement), ``history.csv`` (the same
rows) and ``spectra.npz`` (``<layer>/step_<step>``: the eigenvalues, exact path).
"""
from __future__ import annotations

import csv
import json
import os
from typing import Any, Callable, Optional

import numpy as np
import torch

from .compute import Measurement
from .config import MonitorConfig
from .schedule import Position
from .state import MonitorState
from ..functional import log_spectrum
from .tensorboard import write_heatmaps, write_layout, write_messages, write_settings, write_spectrum

Warn = Callable[[str], None]


def raw_dir(trainer: Any, prefix: str) -> str:
    """``<trainer.log_dir>/<prefix>_monitor`` (``trainer.log_dir`` broadcasts under DDP: call it on every rank)."""
    root = getattr(trainer, "log_dir", None) or trainer.default_root_dir
    return os.path.join(root, f"{prefix}_monitor")


class Sinks:
    """The outputs of one monitor; remembers what it wrote once (the layout) and the spectra so far."""

    def __init__(self, config: MonitorConfig, tensorboard_loggers: tuple[type, ...],
                 messages: Optional[Callable[[], list[tuple[str, str]]]] = None) -> None:
        self.config = config
        self.tensorboard_loggers = tensorboard_loggers
        self.messages = messages  # what the monitor said since the last call (for TensorBoard text)
        self.layout_written = False
        self.spectra: dict[str, np.ndarray] = {}

    def reset(self) -> None:
        self.layout_written = False
        self.spectra = {}

    def write(self, trainer: Any, measurement: Measurement, position: Position, state: MonitorState,
              layers: list[str], warn: Warn) -> None:
        """Send one measurement everywhere, at the loggers' ``position.step``; ``state`` already holds it."""
        step, values = position.step, measurement.values
        device = getattr(getattr(trainer, "strategy", None), "root_device", None)
        for key, value in values.items():
            trainer.callback_metrics[key] = torch.tensor(value, device=device) if device is not None \
                else torch.tensor(value)
        folder = raw_dir(trainer, self.config.prefix) if self.config.save_raw else None
        if not trainer.is_global_zero:
            return
        logged = {**values, f"{self.config.prefix}/epoch": float(position.epoch)}
        for logger in trainer.loggers:
            logger.log_metrics(logged, step=step)
            if self.tensorboard_loggers and isinstance(logger, self.tensorboard_loggers):
                try:
                    self._tensorboard_extras(logger.experiment, measurement.spectra, step, layers, state)
                except Exception as err:  # the extras are optional: never kill the run for them
                    warn(f"DSEMonitor: writing the TensorBoard layout/spectrum at epoch {step} "
                         f"failed ({type(err).__name__}: {err}).")
        self.layout_written = True
        if folder is not None:
            try:
                self._save_raw(folder, measurement.spectra, position.key, state)
            except Exception as err:  # e.g. a full disk or a file in the way
                warn(f"DSEMonitor: save_raw could not write to {folder} at epoch {step} "
                     f"({type(err).__name__}: {err}); training goes on.")

    def _tensorboard_extras(self, writer: Any, spectra: dict[str, np.ndarray], step: int, layers: list[str],
                            state: MonitorState) -> None:
        cfg = self.config
        if not self.layout_written:
            write_layout(writer, cfg.prefix, layers, cfg.metrics)
            write_settings(writer, cfg, layers, state, step)
        if self.messages is not None:
            write_messages(writer, cfg.prefix, self.messages(), step)
        write_heatmaps(writer, cfg, layers, state, step)
        if cfg.log_spectrum:
            for name, lam in spectra.items():
                write_spectrum(writer, cfg.key(name, "spectrum"), lam, step)
                # the linear view is a spike at 0; log10 |lambda| spreads the small eigenvalues out
                write_spectrum(writer, cfg.key(name, "spectrum_log10"), log_spectrum(lam).numpy(), step)

    def _save_raw(self, folder: str, spectra: dict[str, np.ndarray], step: int, state: MonitorState) -> None:
        os.makedirs(folder, exist_ok=True)
        # "step": the history key (completed epochs, or the global step with a step cadence)
        rows = [{"step": s, **_position_columns(state, s), **state.history[s]} for s in sorted(state.history)]
        with open(os.path.join(folder, "history.json"), "w") as f:
            json.dump({"indices": state.indices, "history": rows}, f, indent=1)
        fixed = ["step", "epoch", "global_step", "logged_step"]
        columns = fixed + sorted({k for r in rows for k in r if k not in fixed})
        with open(os.path.join(folder, "history.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        path = os.path.join(folder, "spectra.npz")
        if not self.spectra and os.path.exists(path):
            self.spectra = _earlier_spectra(path, step, state)
        for name, lam in spectra.items():
            self.spectra[f"{name}/step_{step}"] = lam
        if self.spectra:
            np.savez(path, **self.spectra)


def _position_columns(state: MonitorState, key: int) -> dict[str, Any]:
    pos = state.positions.get(key, {})
    return {"epoch": pos.get("epoch"), "global_step": pos.get("global_step"), "logged_step": pos.get("step")}


def _earlier_spectra(path: str, step: int, state: MonitorState) -> dict[str, np.ndarray]:
    """A run resumed into the same folder (e.g. ``logger=False``): keep the spectra of the restored
    history's earlier steps, which this process did not compute; drop anything else in the file."""

    def step_of(key: str) -> int:
        return int(key.rsplit("/step_", 1)[-1])

    with np.load(path) as previous:
        return {key: previous[key] for key in previous.files
                if step_of(key) < step and step_of(key) in state.history}

