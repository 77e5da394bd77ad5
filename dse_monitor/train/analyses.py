"""The paper's other views of a set of runs, for ``dse-monitor compare``.

- :func:`info_plane` (``--plot info-plane``): DSMI(Z;X) against DSMI(Z;Y), one
  trajectory per group (mean over seeds at each epoch), epochs marked along it.
- :func:`layer_heatmap` (``--plot layers``): layers x metrics at one epoch, one
  panel per group, for runs whose monitor logged several layers.
- :func:`correlate` (``--correlate val_acc``): Pearson and Spearman coefficients (with
  p-values) of each metric against an accuracy over all (run, epoch) points, and per group.

Each writes the CSV its numbers come from beside what it draws or prints.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..registry import METRICS, title
from .plots import draw_info_plane, draw_layer_heatmap
from .compare import group_runs, load_runs, resolve_tags, sort_key
from .runs import layers_of, monitor_key
from .stats import correlation, mean_std_n
from .tables import format_columns, mean_std, num, output_paths, write_csv

# correlation: re-exported from stats, where the one correlation of the package now lives
__all__ = ["correlate", "correlation", "info_plane", "layer_heatmap"]


# ---------------------------------------------------------------------------- info plane
def info_plane(root: str | os.PathLike, group_by: str | None, layer: str | None = None, out: str | os.PathLike | None = None,
               csv_path: str | os.PathLike | None = None, say: Any = print) -> dict[str, Any]:
    """DSMI(Z;X) (x-axis) against DSMI(Z;Y) (y-axis), one trajectory per group; PNG and CSV.

    A point is the mean over the group's runs at one epoch (epochs where every run of
    the group has both values); the CSV holds those means, their standard deviations
    and the number of runs. ``layer`` is ``<prefix>/<layer>`` (default: the first with both).
    """
    root = Path(root)
    runs = load_runs(root, group_by, say)
    layers = [lay for lay in layers_of(runs) if any(f"{lay}/dsmi_x" in r.curves and f"{lay}/dsmi_y" in r.curves
                                                 for r in runs)]
    if layer is not None:
        wanted = layer  # <prefix>/<layer> or <layer>
        layer = layer if layer in layers else next((lay for lay in layers if lay.partition("/")[2] == layer), None)
        if layer is None:
            raise ValueError(f"no run has DSMI(Z;X) and DSMI(Z;Y) for layer {wanted!r}; layers with both: {layers}")
    elif not layers:
        raise ValueError("the information plane needs dsmi_x and dsmi_y: no run logged both "
                         "(add them to the monitor's metrics)")
    layer = layer or layers[0]
    tx, ty = f"{layer}/dsmi_x", f"{layer}/dsmi_y"
    runs = [r for r in runs if tx in r.curves and ty in r.curves]
    rows = []
    trajectories: dict[Any, list[tuple[int, float, float]]] = {}
    for value, members in group_runs(runs, group_by).items():
        epochs = sorted(set.intersection(*(set(r.curves[tx]) & set(r.curves[ty]) for r in members)))
        for e in epochs:
            mx, sx, n = mean_std_n([r.curves[tx][e] for r in members])
            my, sy, _ = mean_std_n([r.curves[ty][e] for r in members])
            rows.append([value, e, mx, sx, my, sy, n])
            trajectories.setdefault(value, []).append((e, mx, my))
    png, csv_file = output_paths(out, csv_path, root / "info_plane.png")
    write_csv(csv_file, ["layer", "group_by", "group", "epoch", "dsmi_x_mean", "dsmi_x_std", "dsmi_y_mean",
                         "dsmi_y_std", "n_runs"], [[layer, group_by, *row] for row in rows])
    draw_info_plane(trajectories, group_by, layer, png, _suptitle(root, runs, group_by))
    say(format_columns([group_by or "group", "epoch", "DSMI(Z;X)", "DSMI(Z;Y)", "runs"],
                       [[str(v), str(e), mean_std(mx, sx, n), mean_std(my, sy, n), str(n)]
                        for v, e, mx, sx, my, sy, n in rows]))
    say(f"figure: {png}\npoints: {csv_file}")
    return {"trajectories": trajectories, "png": png, "csv": csv_file, "layer": layer}


# ------------------------------------------------------------------------- layer heat map
def layer_heatmap(root: str | os.PathLike, metrics: Sequence[str], group_by: str | None, epoch: int | None = None,
                  out: str | os.PathLike | None = None, csv_path: str | os.PathLike | None = None,
                  say: Any = print) -> dict[str, Any]:
    """Layers (rows) x metrics (columns) at one epoch (default: the last), one panel per group; PNG and CSV.

    A cell is the mean over the group's runs of ``<prefix>/<layer>/<metric>`` at ``epoch``.
    """
    root = Path(root)
    runs = load_runs(root, group_by, say)
    names = [monitor_key(t).name for t in resolve_tags(runs, metrics) if monitor_key(t) is not None]
    names = [m for i, m in enumerate(names) if m in METRICS and m not in names[:i]]
    layers = layers_of(runs)
    if len(layers) < 2:
        say(f"note: the runs logged {len(layers)} layer(s); the heat map has one row per layer")
    if epoch is None:
        epoch = max(e for r in runs for t, c in r.curves.items() if getattr(monitor_key(t), "name", None) in names
                    for e in c)
    grids: dict[Any, np.ndarray] = {}
    rows = []
    for value, members in group_runs(runs, group_by).items():
        grid = np.full((len(layers), len(names)), np.nan)
        for i, lay in enumerate(layers):
            for j, m in enumerate(names):
                vals = [r.curves[f"{lay}/{m}"][epoch] for r in members if epoch in r.curves.get(f"{lay}/{m}", {})]
                if vals:
                    mean, std, n = mean_std_n(vals)
                    grid[i, j] = mean
                    rows.append([value, lay, m, epoch, mean, std, n])
        grids[value] = grid
    png, csv_file = output_paths(out, csv_path, root / "layers.png")
    write_csv(csv_file, ["group_by", "group", "layer", "metric", "epoch", "mean", "std", "n_runs"],
              [[group_by, *row] for row in rows])
    panels = [f"{group_by} = {value}" if group_by else f"{len(runs)} run(s)" for value in grids]
    title_ = f"{_suptitle(root, runs, group_by)}: layers x metrics at epoch {epoch}"
    draw_layer_heatmap(grids, panels, layers, names, png, title_)
    say(format_columns([group_by or "group", "layer", *[title(m) for m in names]],
                       [[str(value), lay, *[num(v) for v in grid[i]]]
                        for value, grid in grids.items() for i, lay in enumerate(layers)]))
    say(f"figure: {png}\ncells: {csv_file}")
    return {"grids": grids, "layers": layers, "metrics": names, "epoch": epoch, "png": png, "csv": csv_file,
            "title": title_, "panels": panels}


# ---------------------------------------------------------------------------- correlation
def correlate(root: str | os.PathLike, metrics: Sequence[str], accuracy: str, group_by: str | None,
              csv_path: str | os.PathLike | None = None, say: Any = print) -> dict[str, Any]:
    """Each metric against ``accuracy`` over all (run, epoch) points, and per group.

    The points are the epochs where a run has both (the accuracy exists from epoch 1 on).
    Writes ``<csv>`` (metric, group, n_points, pearson_r, pearson_p, spearman_r, spearman_p;
    group ``all`` for every run together) and ``<csv stem>_points.csv`` (the points).
    """
    root = Path(root)
    runs = load_runs(root, group_by, say)
    if not any(accuracy in r.curves for r in runs):
        present = sorted({t for r in runs for t in r.curves})
        raise ValueError(f"no run has the scalar {accuracy!r}; scalars found: {', '.join(present)}")
    tags = [t for t in resolve_tags(runs, metrics) if t != accuracy]
    points = []  # (run, group, epoch, tag, metric value, accuracy)
    for r in runs:
        acc = r.curves.get(accuracy, {})
        for t in tags:
            for e, v in sorted(r.curves.get(t, {}).items()):
                if e in acc:
                    points.append((r.name, r.get(group_by), e, t, v, acc[e]))
    results = []
    groups = sorted({p[1] for p in points}, key=sort_key)
    for t in tags:
        for g in ["all", *groups]:
            sel = [p for p in points if p[3] == t and (g == "all" or p[1] == g)]
            results.append([t, g, len(sel), *correlation([p[4] for p in sel], [p[5] for p in sel])])
    csv_file = Path(csv_path) if csv_path is not None else root / f"correlate_{accuracy}.csv"
    points_file = csv_file.with_name(csv_file.stem + "_points.csv")
    write_csv(csv_file, ["metric", "accuracy", "group_by", "group", "n_points", "pearson_r", "pearson_p",
                         "spearman_r", "spearman_p"], [[t, accuracy, group_by, *rest] for t, *rest in results])
    write_csv(points_file, ["run", "group", "epoch", "metric", "value", accuracy], points)
    say(f"correlation with {accuracy} over (run, epoch) points:")
    say(format_columns(["metric", group_by or "group", "points", "pearson r", "p", "spearman rho", "p"],
                       [[t, str(g), str(n), num(pr), f"{pp:.2g}", num(sr), f"{sp:.2g}"]
                        for t, g, n, pr, pp, sr, sp in results], indent="  "))
    say(f"coefficients: {csv_file}\npoints: {points_file}")
    return {"results": results, "points": points, "csv": csv_file, "points_csv": points_file}


def _suptitle(root: Path, runs: Sequence[Any], group_by: str | None) -> str:
    return f"{root.name}: {len(runs)} runs" + (f" by {group_by}" if group_by else "")
