"""The closing table of ``dse-monitor fit``: what the run measured, by completed epoch.

It is built from what the run measured in memory: the :class:`~dse_monitor.DSEMonitor`
callbacks' ``history`` and the validation scalars that
:class:`~dse_monitor.train.scalars.EpochScalars` records after each validation. One block
per layer (the accuracies beside each), so that lines stay short with many layers.
"""
from __future__ import annotations

from typing import Any

from ..registry import METRICS, title
from .runs import monitor_key
from .scalars import ACCURACIES, EpochScalars
from .tables import format_columns, num

__all__ = ["format_run_table", "run_curves", "run_table"]


def format_run_table(curves: dict[str, dict[int, float]]) -> str:
    """Epoch-by-epoch tables of the monitor's curves and the accuracies (``val_acc``, ``probe_acc``).

    One table per layer, headed by the layer's name when there are several.

    Example:
        >>> print(format_run_table({"dse/penultimate/dse": {0: 8.4, 1: 5.25}, "val_acc": {1: 0.9}}))
        epoch  DSE(Z)  val_acc
            0   8.400        -
            1   5.250    0.900
        >>> print(format_run_table({"dse/layer4/dse": {0: 8.4}, "dse/head/dse": {0: 2.0}}))
        layer4
          epoch  DSE(Z)
              0   8.400
        head
          epoch  DSE(Z)
              0   2.000
    """
    order = {m: i for i, m in enumerate(METRICS)}
    keys = {t: k for t in curves if (k := monitor_key(t)) is not None and k.name in METRICS}  # no diagnostics
    layers: dict[str, list[str]] = {}
    for t, k in keys.items():
        layers.setdefault(f"{k.prefix}/{k.layer}", []).append(t)
    if not layers:
        return ""
    prefixes = {k.prefix for k in keys.values()}
    accuracies = [a for a in ACCURACIES if a in curves]
    blocks = []
    for layer, tags in layers.items():
        tags = sorted(tags, key=lambda t: order[keys[t].name]) + accuracies
        epochs = sorted({e for t in tags for e in curves[t]})
        rows = [[str(e)] + [num(curves[t].get(e)) for t in tags] for e in epochs]
        header = ["epoch", *(title(keys[t].name) if t in keys else t for t in tags)]
        if len(layers) == 1:
            return format_columns(header, rows)
        name = layer if len(prefixes) > 1 else keys[tags[0]].layer
        blocks.append(f"{name}\n" + format_columns(header, rows, indent="  "))
    return "\n".join(blocks)


def run_curves(trainer: Any) -> dict[str, dict[int, float]]:
    """``{tag: {completed epochs: value}}`` from the monitors' ``history`` and :class:`EpochScalars`.

    A history entry is ``{"<prefix>/<layer>/<metric>": value}`` keyed by completed epochs
    (by global step with a step cadence); the monitor's ``positions`` give each entry's
    epoch, and an entry that carries its own ``"epoch"`` is placed at that epoch.
    """
    curves: dict[str, dict[int, float]] = {}
    for cb in trainer.callbacks:
        if isinstance(cb, EpochScalars):
            for name, series in cb.history.items():
                curves.setdefault(name, {}).update(series)
            continue
        history = getattr(cb, "history", None)
        if not isinstance(history, dict):
            continue
        positions = getattr(cb, "positions", None) or {}
        for step, values in history.items():
            if not isinstance(values, dict):
                continue
            epoch = int(positions.get(step, {}).get("epoch", values.get("epoch", step)))
            for k, v in values.items():
                if monitor_key(k) is not None:
                    curves.setdefault(k, {})[epoch] = float(v)
    return curves


def run_table(trainer: Any) -> str:
    """The end-of-run table of ``dse-monitor fit`` (empty when nothing was measured)."""
    table = format_run_table(run_curves(trainer))
    return "DSE/DSMI in bits by completed epoch (0 = at initialisation):\n" + table if table else ""
