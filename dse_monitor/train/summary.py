"""The closing table of ``dse-monitor fit``: what the run measured, by completed epoch.

It is built from what the run measured in memory: the :class:`~dse_monitor.DSEMonitor`
callbacks' ``history`` and the validation scalars that
:class:`~dse_monitor.train.scalars.EpochScalars` records after each validation. One block
per layer (the accuracies beside each), so that lines stay short with many layers.
"""
from __future__ import annotations

from typing import Any

from ..registry import DIAGNOSTICS, METRICS, is_monitor_name, title
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
    keys = {t: k for t in curves  # metrics only, no diagnostics; dse_t<t> too
            if (k := monitor_key(t)) is not None and is_monitor_name(k.name) and k.name not in DIAGNOSTICS}
    layers: dict[str, list[str]] = {}
    for t, k in keys.items():
        layers.setdefault(f"{k.prefix}/{k.layer}", []).append(t)
    if not layers:
        return ""
    prefixes = {k.prefix for k in keys.values()}
    accuracies = [a for a in ACCURACIES if a in curves]
    blocks = []
    for layer, tags in layers.items():
        tags = sorted(tags, key=lambda t: _order(keys[t].name)) + accuracies
        epochs = sorted({e for t in tags for e in curves[t]})
        columns = [(title(keys[t].name) if t in keys else t, [num(curves[t].get(e)) for e in epochs]) for t in tags]
        indent = "" if len(layers) == 1 else "  "
        table = "\n".join(_wrapped(columns, [str(e) for e in epochs], indent))
        if len(layers) == 1:
            return table
        name = layer if len(prefixes) > 1 else keys[tags[0]].layer
        blocks.append(f"{name}\n{table}")
    return "\n".join(blocks)


#: Lines of the closing table stay under this many columns: a layer's columns wrap onto more tables.
MAX_WIDTH = 119


def _order(name: str) -> tuple[int, str]:
    base = name if name in METRICS else "dse_t"  # dse_t<t> where dse_t stands in the registry
    return list(METRICS).index(base), name


def _wrapped(columns: list[tuple[str, list[str]]], epochs: list[str], indent: str) -> list[str]:
    """``columns`` (header, cells) as tables of at most :data:`MAX_WIDTH` columns, each led by the epochs."""
    chunks: list[list[tuple[str, list[str]]]] = [[]]
    width = len(indent) + max(len("epoch"), *(len(e) for e in epochs))
    for column in columns:
        w = 2 + max(len(column[0]), *(len(c) for c in column[1]))
        if chunks[-1] and width + w > MAX_WIDTH:
            chunks.append([])
            width = len(indent) + max(len("epoch"), *(len(e) for e in epochs))
        chunks[-1].append(column)
        width += w
    return [format_columns(["epoch", *(h for h, _ in chunk)],
                           [[e, *(cells[i] for _, cells in chunk)] for i, e in enumerate(epochs)], indent=indent)
            for chunk in chunks]


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
    return ("The monitor's values by completed epoch (0 = at initialisation; DSE and DSMI in bits):\n" + table
            if table else "")
