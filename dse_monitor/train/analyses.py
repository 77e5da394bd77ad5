"""The paper's other views of a set of runs, for ``dse-monitor compare``.

- :func:`info_plane` (``--plot info-plane``): DSMI(Z;X) against DSMI(Z;Y), one
  trajectory per group (mean over seeds at each epoch), epochs marked along it.
- :func:`layer_heatmap` (``--plot layers``): layers x measurements at one epoch, one
  panel per group, for runs whose monitor logged several layers.
- :func:`correlate` (``--correlate val_acc``): Pearson and Spearman coefficients (with
  p-values) of each metric against an accuracy over all (run, epoch) points, and per group.

Each writes the CSV its numbers come from beside what it draws or prints.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..registry import METRICS
from .compare import Run, _pyplot, _sort_key, load_runs, resolve_tags
from .tables import format_columns, mean_std, num

__all__ = ["correlate", "correlation", "info_plane", "layer_heatmap"]


def _layers(runs: Sequence[Run]) -> list[str]:
    """``<prefix>/<layer>`` of every monitor curve in the runs, in order of appearance."""
    seen: list[str] = []
    for r in runs:
        for tag in r.curves:
            parts = tag.split("/")
            if len(parts) >= 3 and parts[-1] in METRICS and "/".join(parts[:-1]) not in seen:
                seen.append("/".join(parts[:-1]))
    return seen


def _groups(runs: Sequence[Run], group_by: str) -> dict[Any, list[Run]]:
    out: dict[Any, list[Run]] = {}
    for r in runs:
        out.setdefault(r.get(group_by), []).append(r)
    return {k: out[k] for k in sorted(out, key=_sort_key)}


def _stats(vals: list[float]) -> tuple[float, float, int]:
    a = np.asarray(vals, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0, len(a)


# ---------------------------------------------------------------------------- info plane
def info_plane(root: str | os.PathLike, group_by: str, layer: str | None = None, out: str | os.PathLike | None = None,
               csv_path: str | os.PathLike | None = None, say: Any = print) -> dict[str, Any]:
    """DSMI(Z;X) (x-axis) against DSMI(Z;Y) (y-axis), one trajectory per group; PNG and CSV.

    A point is the mean over the group's runs at one epoch (epochs where every run of
    the group has both values); the CSV holds those means, their standard deviations
    and the number of runs. ``layer`` is ``<prefix>/<layer>`` (default: the first with both).
    """
    root = Path(root)
    runs = load_runs(root, group_by, say)
    layers = [lay for lay in _layers(runs) if any(f"{lay}/dsmi_x" in r.curves and f"{lay}/dsmi_y" in r.curves
                                                 for r in runs)]
    if layer is not None:
        layer = layer if layer in layers else next((lay for lay in layers if lay.split("/", 1)[-1] == layer), None)
        if layer is None:
            raise ValueError(f"no run has DSMI(Z;X) and DSMI(Z;Y) for layer {layer!r}; layers with both: {layers}")
    elif not layers:
        raise ValueError("the information plane needs dsmi_x and dsmi_y: no run logged both "
                         "(add them to the monitor's metrics)")
    layer = layer or layers[0]
    tx, ty = f"{layer}/dsmi_x", f"{layer}/dsmi_y"
    runs = [r for r in runs if tx in r.curves and ty in r.curves]
    rows = []
    trajectories: dict[Any, list[tuple[int, float, float]]] = {}
    for value, members in _groups(runs, group_by).items():
        epochs = sorted(set.intersection(*(set(r.curves[tx]) & set(r.curves[ty]) for r in members)))
        for e in epochs:
            mx, sx, n = _stats([r.curves[tx][e] for r in members])
            my, sy, _ = _stats([r.curves[ty][e] for r in members])
            rows.append([value, e, mx, sx, my, sy, n])
            trajectories.setdefault(value, []).append((e, mx, my))
    png = Path(out) if out is not None else root / "info_plane.png"
    csv_file = Path(csv_path) if csv_path is not None else png.with_suffix(".csv")
    png.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_file, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["layer", "group_by", "group", "epoch", "dsmi_x_mean", "dsmi_x_std", "dsmi_y_mean",
                    "dsmi_y_std", "n_runs"])
        for value, e, mx, sx, my, sy, n in rows:
            w.writerow([layer, group_by, value, e, repr(mx), repr(sx), repr(my), repr(sy), n])
    _draw_info_plane(trajectories, group_by, layer, png, f"{root.name}: {len(runs)} runs by {group_by}")
    say(format_columns([group_by, "epoch", "DSMI(Z;X)", "DSMI(Z;Y)", "runs"],
                       [[str(v), str(e), mean_std(mx, sx, n), mean_std(my, sy, n), str(n)]
                        for v, e, mx, sx, my, sy, n in rows]))
    say(f"figure: {png}\npoints: {csv_file}")
    return {"trajectories": trajectories, "png": png, "csv": csv_file, "layer": layer}


def _draw_info_plane(trajectories: dict[Any, list[tuple[int, float, float]]], group_by: str, layer: str,
                     path: Path, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    cmap = plt.get_cmap("tab10")
    last = max((e for pts in trajectories.values() for e, _, _ in pts), default=1)
    scatter = None
    for i, (value, pts) in enumerate(trajectories.items()):
        epochs = np.array([p[0] for p in pts])
        xs, ys = np.array([p[1] for p in pts]), np.array([p[2] for p in pts])
        ax.plot(xs, ys, color=cmap(i % 10), linewidth=1.2, label=str(value))
        # epochs marked along the trajectory: the colour gives the epoch, the ends are numbered
        scatter = ax.scatter(xs, ys, c=epochs, cmap="viridis", vmin=0, vmax=last, s=22, zorder=3,
                             edgecolors=cmap(i % 10), linewidths=0.8)
        for k in {0, len(pts) - 1}:
            ax.annotate(str(epochs[k]), (xs[k], ys[k]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if scatter is not None:
        fig.colorbar(scatter, ax=ax, label="epoch")
    ax.set_xlabel("DSMI(Z;X) [bits]")
    ax.set_ylabel("DSMI(Z;Y) [bits]")
    ax.set_title(f"information plane — {layer}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(title=group_by, fontsize=8, title_fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------- layer heat map
def layer_heatmap(root: str | os.PathLike, metrics: Sequence[str], group_by: str, epoch: int | None = None,
                  out: str | os.PathLike | None = None, csv_path: str | os.PathLike | None = None,
                  say: Any = print) -> dict[str, Any]:
    """Layers x measurements at one epoch (default: the last), one panel per group; PNG and CSV.

    A cell is the mean over the group's runs of ``<prefix>/<layer>/<metric>`` at ``epoch``.
    """
    root = Path(root)
    runs = load_runs(root, group_by, say)
    names = [m.split("/")[-1] for m in resolve_tags(runs, metrics)]
    names = [m for i, m in enumerate(names) if m in METRICS and m not in names[:i]]
    layers = _layers(runs)
    if len(layers) < 2:
        say(f"note: the runs logged {len(layers)} layer(s); the heat map has one row per layer")
    if epoch is None:
        epoch = max(e for r in runs for t, c in r.curves.items() if t.split("/")[-1] in names for e in c)
    grids: dict[Any, np.ndarray] = {}
    rows = []
    for value, members in _groups(runs, group_by).items():
        grid = np.full((len(layers), len(names)), np.nan)
        for i, lay in enumerate(layers):
            for j, m in enumerate(names):
                vals = [r.curves[f"{lay}/{m}"][epoch] for r in members if epoch in r.curves.get(f"{lay}/{m}", {})]
                if vals:
                    mean, std, n = _stats(vals)
                    grid[i, j] = mean
                    rows.append([value, lay, m, epoch, mean, std, n])
        grids[value] = grid
    png = Path(out) if out is not None else root / "layers.png"
    csv_file = Path(csv_path) if csv_path is not None else png.with_suffix(".csv")
    png.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_file, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["group_by", "group", "layer", "metric", "epoch", "mean", "std", "n_runs"])
        for value, lay, m, e, mean, std, n in rows:
            w.writerow([group_by, value, lay, m, e, repr(mean), repr(std), n])
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(grids), figsize=(1.2 + 1.3 * len(names) * len(grids), 1.2 + 0.5 * len(layers)),
                             squeeze=False)
    for ax, (value, grid) in zip(axes[0], grids.items()):
        im = ax.imshow(grid, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(names)), [METRICS[m].title for m in names], rotation=30, fontsize=8)
        ax.set_yticks(range(len(layers)), layers, fontsize=8)
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):
                ax.text(j, i, num(v), ha="center", va="center", fontsize=7, color="w")
        ax.set_title(f"{group_by} = {value}", fontsize=9)
        fig.colorbar(im, ax=ax, label="bits")
    fig.suptitle(f"{root.name}: layers x measurements at epoch {epoch}", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    say(format_columns([group_by, "layer", *[METRICS[m].title for m in names]],
                       [[str(value), lay, *[num(v) for v in grid[i]]]
                        for value, grid in grids.items() for i, lay in enumerate(layers)]))
    say(f"figure: {png}\ncells: {csv_file}")
    return {"grids": grids, "layers": layers, "metrics": names, "epoch": epoch, "png": png, "csv": csv_file}


# ---------------------------------------------------------------------------- correlation
def correlation(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float, float]:
    """``(pearson r, its p-value, spearman rho, its p-value)`` (scipy.stats); NaN below 3 points or for a constant.

    Example:
        >>> [round(v, 3) for v in correlation([1, 2, 3, 4], [1, 3, 2, 4])]
        [0.8, 0.2, 0.8, 0.2]
    """
    from scipy.stats import pearsonr, spearmanr

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return (float("nan"),) * 4
    p = pearsonr(x, y)
    s = spearmanr(x, y)
    return float(p.statistic), float(p.pvalue), float(s.statistic), float(s.pvalue)


def correlate(root: str | os.PathLike, metrics: Sequence[str], accuracy: str, group_by: str,
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
    groups = sorted({p[1] for p in points}, key=_sort_key)
    for t in tags:
        for g in ["all", *groups]:
            sel = [p for p in points if p[3] == t and (g == "all" or p[1] == g)]
            results.append([t, g, len(sel), *correlation([p[4] for p in sel], [p[5] for p in sel])])
    csv_file = Path(csv_path) if csv_path is not None else root / f"correlate_{accuracy}.csv"
    csv_file.parent.mkdir(parents=True, exist_ok=True)
    points_file = csv_file.with_name(csv_file.stem + "_points.csv")
    with open(csv_file, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric", "accuracy", "group_by", "group", "n_points", "pearson_r", "pearson_p", "spearman_r",
                    "spearman_p"])
        for t, g, n, *vals in results:
            w.writerow([t, accuracy, group_by, g, n, *(repr(v) for v in vals)])
    with open(points_file, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "group", "epoch", "metric", "value", accuracy])
        for name, g, e, t, v, a in points:
            w.writerow([name, g, e, t, repr(v), repr(a)])
    say(f"correlation with {accuracy} over (run, epoch) points:")
    say(format_columns(["metric", group_by, "points", "pearson r", "p", "spearman rho", "p"],
                       [[t, str(g), str(n), num(pr), f"{pp:.2g}", num(sr), f"{sp:.2g}"]
                        for t, g, n, pr, pp, sr, sp in results], indent="  "))
    say(f"coefficients: {csv_file}\npoints: {points_file}")
    return {"results": results, "points": points, "csv": csv_file, "points_csv": points_file}
