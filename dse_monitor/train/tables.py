"""The text tables of ``dse-monitor fit`` (the closing table) and ``compare`` (one formatter).

The closing table of ``fit`` is built from what the run measured in memory: the
:class:`~dse_monitor.DSEMonitor` callbacks' ``history`` and the validation scalars that
:class:`~dse_monitor.train.scalars.EpochScalars` records after each validation.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from ..registry import METRICS, is_monitor_name

__all__ = ["format_columns", "format_run_table", "is_monitor_tag", "mean_std", "num", "run_curves", "run_table"]

#: Scalars of the LightningModules shown beside the monitor's curves.
ACCURACIES = ("val_acc", "probe_acc")


def num(v: float) -> str:
    """Three decimals, without the ``-0.000`` of tiny negative estimates.

    >>> num(-1e-9), num(2.71828), num(float("nan"))
    ('0.000', '2.718', 'nan')
    """
    if math.isnan(v):
        return "nan"
    text = f"{v:.3f}"
    return "0.000" if text == "-0.000" else text


def mean_std(mean: float, std: float, n: int) -> str:
    """``mean±std`` over ``n`` runs (the mean alone for one run).

    >>> mean_std(8.2, 0.1, 3), mean_std(8.2, 0.0, 1)
    ('8.200±0.100', '8.200')
    """
    if math.isnan(mean):
        return "nan"
    return num(mean) if n <= 1 else f"{num(mean)}±{num(std)}"


def format_columns(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> str:
    """Right-aligned columns, each as wide as its widest cell, two spaces apart.

    >>> print(format_columns(["epoch", "DSE(Z)"], [["0", "8.400"], ["1", "5.250"]]))
    epoch  DSE(Z)
        0   8.400
        1   5.250
    """
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(indent + "  ".join(str(c).rjust(w) for c, w in zip(r, widths)) for r in [header, *rows])


def is_monitor_tag(tag: str) -> bool:
    """Whether a logged tag is one of the monitor's: ``<prefix>/<layer>/<metric>``.

    >>> is_monitor_tag("dse/penultimate/dsmi_y"), is_monitor_tag("val_acc")
    (True, False)
    """
    parts = tag.split("/")
    return len(parts) >= 3 and is_monitor_name(parts[-1])


def format_run_table(curves: dict[str, dict[int, float]]) -> str:
    """Epoch-by-epoch table of the monitor's curves and the accuracies (``val_acc``, ``probe_acc``).

    Example:
        >>> print(format_run_table({"dse/penultimate/dse": {0: 8.4, 1: 5.25}, "val_acc": {1: 0.9}}))
        epoch  DSE(Z)  val_acc
            0   8.400        -
            1   5.250    0.900
    """
    order = {m: i for i, m in enumerate(METRICS)}
    tags = sorted((t for t in curves if is_monitor_tag(t) and t.split("/")[-1] in METRICS),  # no diagnostics
                  key=lambda t: ("/".join(t.split("/")[:-1]), order[t.split("/")[-1]]))
    layers = {"/".join(t.split("/")[1:-1]) for t in tags}
    names = []
    for t in tags:
        title = METRICS[t.split("/")[-1]].title
        names.append(title if len(layers) <= 1 else f"{title}@{'/'.join(t.split('/')[1:-1])}")
    for acc in ACCURACIES:
        if acc in curves:
            tags.append(acc)
            names.append(acc)
    if not tags:
        return ""
    epochs = sorted({e for t in tags for e in curves[t]})
    rows = [[str(e)] + ["-" if curves[t].get(e) is None else num(curves[t][e]) for t in tags] for e in epochs]
    return format_columns(["epoch", *names], rows)


def run_curves(trainer: Any) -> dict[str, dict[int, float]]:
    """``{tag: {completed epochs: value}}`` from the monitors' ``history`` and :class:`EpochScalars`.

    A history entry is ``{"<prefix>/<layer>/<metric>": value}`` keyed by completed epochs
    (by global step with a step cadence); the monitor's ``positions`` give each entry's
    epoch, and an entry that carries its own ``"epoch"`` is placed at that epoch.
    """
    from .scalars import EpochScalars

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
                if is_monitor_tag(k):
                    curves.setdefault(k, {})[epoch] = float(v)
    return curves


def run_table(trainer: Any) -> str:
    """The end-of-run table of ``dse-monitor fit`` (empty when nothing was measured)."""
    curves = run_curves(trainer)
    if not any(is_monitor_tag(t) for t in curves):
        return ""
    return "DSE/DSMI in bits by completed epoch (0 = at initialisation):\n" + format_run_table(curves)
