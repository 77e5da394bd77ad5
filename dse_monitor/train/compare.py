"""``dse-monitor compare``: the runs under a log root grouped by a hyperparameter, mean +/- std
over seeds per epoch, drawn (one panel per metric), tabulated and written as CSV.

Reading the runs is :mod:`~dse_monitor.train.runs`; the figures :mod:`~dse_monitor.train.plots`;
the other views (information plane, layer heat map, correlation) :mod:`~dse_monitor.train.analyses`.
``--x step`` plots against the global step that ends each epoch instead of the epoch.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from ..registry import title
from .plots import Curves, plot_curves
from .runs import Run, by_step, find_runs, flatten, group_runs, load_runs, monitor_key, read_run, resolve_tags
from .stats import mean_std_n
from .tables import format_columns, mean_std, output_paths, write_csv

# Run, find_runs, flatten, read_run, load_runs, by_step: re-exported, where the readers of runs used to be
__all__ = ["Run", "aggregate", "by_step", "compare", "find_runs", "flatten", "format_table", "load_runs", "read_run"]


def aggregate(runs: Sequence[Run], tag: str, group_by: str | None) -> dict[Any, dict[int, tuple[float, float, int]]]:
    """``{group value: {epoch: (mean, std, n)}}`` of one tag over the runs of each group.

    ``std`` is the sample standard deviation over seeds (0 for one run).

    Example:
        >>> a = Run(Path("a"), "a", {"model.init_std": 0.1}, {"dse": {0: 1.0, 1: 2.0}})
        >>> b = Run(Path("b"), "b", {"model.init_std": 0.1}, {"dse": {0: 3.0, 1: 2.0}})
        >>> aggregate([a, b], "dse", "model.init_std")
        {0.1: {0: (2.0, 1.4142135623730951, 2), 1: (2.0, 0.0, 2)}}
    """
    out: dict[Any, dict[int, tuple[float, float, int]]] = {}
    for value, members in group_runs([r for r in runs if tag in r.curves], group_by).items():
        epochs = sorted({e for r in members for e in r.curves[tag]})
        out[value] = {e: mean_std_n([r.curves[tag][e] for r in members if e in r.curves[tag]]) for e in epochs}
    return out


def _drop_partial(runs: list[Run], tags: Sequence[str], group_by: str | None, say: Any) -> list[Run]:
    """Runs missing a requested curve, or stopped before the others of their group, are skipped."""
    kept = []
    longest: dict[tuple[str, Any], int] = {}
    for r in runs:
        for t in tags:
            if t in r.curves:
                k = (t, r.get(group_by))
                longest[k] = max(longest.get(k, -1), max(r.curves[t]))
    for r in runs:
        reason = None
        for t in tags:
            if t not in r.curves:
                reason = f"no {t!r} curve"
                break
            last = max(r.curves[t])
            if last < longest[(t, r.get(group_by))]:
                reason = f"partial: {t!r} stops at epoch {last}, its group reaches {longest[(t, r.get(group_by))]}"
                break
        if reason:
            say(f"skipped {r.name}: {reason}")
        else:
            kept.append(r)
    return kept


def format_table(curves: Curves, group_by: str | None, x: str = "epoch") -> str:
    """A compact table: per metric and group, the runs and the values at first, second and last epoch."""
    lines = []
    for tag, groups in curves.items():
        epochs = sorted({e for g in groups.values() for e in g})
        shown = sorted({epochs[0], epochs[min(1, len(epochs) - 1)], epochs[-1]}) if epochs else []
        rows = []
        for value, table in groups.items():
            n = max((v[2] for v in table.values()), default=0)
            rows.append([str(value), str(n)] + [mean_std(*table[e]) if e in table else "-" for e in shown])
        key = monitor_key(tag)
        lines.append(f"{title(key.name if key else tag)} [{tag}]")
        lines.append(format_columns([group_by or "group", "runs"] + [f"{x} {e}" for e in shown], rows, indent="  "))
    return "\n".join(lines)


def compare(
    root: str | os.PathLike,
    metrics: Sequence[str] = ("dse",),
    group_by: str | None = None,
    out: str | os.PathLike | None = None,
    csv_path: str | os.PathLike | None = None,
    accuracy: str | None = "val_acc,probe_acc",
    say: Any = print,
    x: str = "epoch",
) -> dict[str, Any]:
    """Group the runs under ``root`` by ``group_by``; write a PNG and a CSV; print a table.

    ``accuracy`` may name several scalars, comma-separated (``"val_acc,probe_acc"``); those
    present are drawn beside the metrics. ``x="step"`` plots against the global step that
    ends each epoch instead of the epoch.

    Returns ``{"curves": ..., "runs": [...], "png": path, "csv": path}``.
    """
    if x not in ("epoch", "step"):
        raise ValueError(f"x must be 'epoch' or 'step', got {x!r}")
    root = Path(root)
    runs = load_runs(root, group_by, say)
    tags = resolve_tags(runs, metrics)
    accuracies = [a for a in (accuracy or "").split(",") if a and any(a in r.curves for r in runs)]
    tags += [a for a in accuracies if a not in tags]
    runs = _drop_partial(runs, [t for t in tags if t not in accuracies], group_by, say)
    if not runs:
        raise ValueError("every run was skipped")
    if x == "step":
        runs = [replace(r, curves={t: by_step(r, t) for t in tags if t in r.curves}) for r in runs]
    curves = {t: aggregate(runs, t, group_by) for t in tags}
    slug = "_".join(m.replace("/", "-") for m in metrics)
    png, csv_file = output_paths(out, csv_path, root / f"compare_{slug}.png")
    by = f" by {group_by}" if group_by else ""
    plot_curves(curves, group_by, png, suptitle=f"{root.name}: {len(runs)} runs{by}", x=x)
    write_csv(csv_file, ["metric", "group_by", "group", x, "mean", "std", "n_runs"],
              [[tag, group_by, value, e, *stats] for tag, groups in curves.items()
               for value, table in groups.items() for e, stats in table.items()])
    say(format_table(curves, group_by, x=x))
    say(f"figure: {png}\ncurves: {csv_file}")
    return {"curves": curves, "runs": runs, "png": png, "csv": csv_file}
