"""``dse-monitor compare``: the runs under a log root grouped by a hyperparameter, mean +/- std
over seeds per epoch, drawn (one panel per metric), tabulated and written as CSV.

Here: selecting the runs (readable, with the hyperparameter, newest of identical configs, not
stopped early), grouping and aggregating them. Reading one run is :mod:`~dse_monitor.train.runs`;
the figures :mod:`~dse_monitor.train.plots`;
the other views (information plane, layer heat map, correlation) :mod:`~dse_monitor.train.analyses`.
``--x step`` plots against the global step that ends each epoch instead of the epoch.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..registry import title
from .plots import Curves, plot_curves
from .runs import Run, by_step, find_runs, flatten, monitor_key, read_run
from .stats import mean_std_n
from .tables import format_columns, mean_std, output_paths, write_csv

# Run, find_runs, flatten, read_run, by_step: re-exported, where the readers of runs used to be
__all__ = ["Run", "aggregate", "by_step", "compare", "find_runs", "flatten", "format_table", "group_runs", "load_runs",
           "read_run", "resolve_tags", "sort_key"]


# ------------------------------------------------------------------------- selecting runs
def resolve_tags(runs: Sequence[Run], metrics: Sequence[str]) -> list[str]:
    """Metric names (``dse``) or full tags (``dse/penultimate/dse``) -> tags present in the runs."""
    present = sorted({t for r in runs for t in r.curves})
    out: list[str] = []
    for m in metrics:
        if m in present:
            hits = [m]
        else:
            hits = [t for t in present if (k := monitor_key(t)) is not None and k.name == m]
        if not hits:
            raise ValueError(f"no run has the metric {m!r}; scalars found: {', '.join(present) or 'none'}")
        out.extend(h for h in hits if h not in out)
    return out


def sort_key(value: Any) -> tuple[int, Any]:
    """Group values in order: numbers by value, then the rest as text.

    >>> sorted(["b", 10, "2", None], key=sort_key)
    ['2', 10, None, 'b']
    """
    try:
        return (0, float(value))
    except (TypeError, ValueError):
        return (1, str(value))


def load_runs(root: Path, group_by: str | None, say: Any = print) -> list[Run]:
    """The readable runs under ``root`` that have ``group_by``, newest of identical configs; others named."""
    paths = find_runs(root)
    if not paths:
        raise FileNotFoundError(f"no TensorBoard event files under {root}")
    runs = _select_runs(paths, root, group_by, say)
    if not runs:
        raise ValueError(f"no readable run under {root} has the hyperparameter {group_by!r}")
    return _drop_duplicates(runs, say)


def _select_runs(paths: Iterable[Path], root: Path, group_by: str | None, say: Any) -> list[Run]:
    runs: list[Run] = []
    for p in paths:
        try:
            run = read_run(p, root)
        except Exception as err:  # noqa: BLE001 - an unreadable run is reported, not fatal
            name = str(p.relative_to(root)) if p != root else p.name
            say(f"skipped {name}: unreadable ({err})")
            continue
        try:
            run.get(group_by)
        except KeyError:
            say(f"skipped {run.name}: no hyperparameter {group_by!r} (no config.yaml / hparams.yaml with it)")
            continue
        runs.append(run)
    return runs


def _drop_duplicates(runs: list[Run], say: Any) -> list[Run]:
    """Runs with identical hyperparameters (a sweep re-run into the same root): the newest counts."""
    def newest(r: Run) -> float:
        return max((f.stat().st_mtime for f in r.path.glob("events.out.tfevents.*")), default=0.0)

    by_config: dict[str, list[Run]] = {}
    for r in runs:
        if not r.hparams:
            by_config[f"__{r.path}"] = [r]
            continue
        by_config.setdefault(repr(sorted((k, repr(v)) for k, v in r.hparams.items())), []).append(r)
    kept = []
    for group in by_config.values():
        group.sort(key=newest)
        for old in group[:-1]:
            say(f"skipped {old.name}: same hyperparameters as the newer {group[-1].name}")
        kept.append(group[-1])
    return sorted(kept, key=lambda r: r.name)


def group_runs(runs: Sequence[Run], group_by: str | None) -> dict[Any, list[Run]]:
    """``{value of group_by: its runs}``, the values in :func:`sort_key` order."""
    out: dict[Any, list[Run]] = {}
    for r in runs:
        out.setdefault(r.get(group_by), []).append(r)
    return {k: out[k] for k in sorted(out, key=sort_key)}


# ---------------------------------------------------------------------------- aggregating


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
