"""The figures of ``compare`` and ``score``: matplotlib set up once (:func:`pyplot`, the Agg
backend: no display needed), one colour per group the same way in every figure."""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..registry import title, unit
from .runs import monitor_key
from .tables import num

__all__ = ["draw_info_plane", "draw_layer_heatmap", "draw_scores", "group_colors", "plot_curves", "pyplot", "save"]

#: ``{tag: {group value: {epoch: (mean, std, n runs)}}}``
Curves = dict[str, dict[Any, dict[int, tuple[float, float, int]]]]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only): the one place matplotlib is set up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def group_colors(k: int) -> list[Any]:
    """``k`` distinct colours: tab10 up to 10 groups, else evenly along viridis.

    >>> len(group_colors(3)), group_colors(12)[0] != group_colors(12)[-1]
    (3, True)
    """
    plt = pyplot()
    if k <= 10:
        return [plt.get_cmap("tab10")(i) for i in range(k)]
    return [plt.get_cmap("viridis")(i / max(1, k - 1) * 0.9) for i in range(k)]


def save(fig: Any, path: Path, dpi: int = 120) -> None:
    """Lay out, write and close a figure (matplotlib's layout warnings are not the user's concern)."""
    plt = pyplot()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
        fig.savefig(path, dpi=dpi, bbox_inches="tight")  # no label cut at the edge
    plt.close(fig)


def _grid(n: int, width: float, height: float, max_cols: int = 3) -> tuple[Any, list[Any]]:
    """A figure of ``n`` panels, at most ``max_cols`` a row; the unused cells hidden."""
    plt = pyplot()
    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def plot_curves(curves: Curves, group_by: str | None, path: Path, suptitle: str | None = None,
                x: str = "epoch") -> None:
    """One panel per curve, one line per group: mean with a +/- std band over seeds."""
    from matplotlib.ticker import MaxNLocator

    fig, axes = _grid(len(curves), 4.2, 3.5, max_cols=4)
    for ax, (tag, groups) in zip(axes, curves.items()):
        for color, (value, table) in zip(group_colors(len(groups)), groups.items()):
            epochs = np.array(sorted(table))
            mean = np.array([table[e][0] for e in epochs])
            std = np.array([table[e][1] for e in epochs])
            nruns = max(v[2] for v in table.values())
            ax.plot(epochs, mean, color=color, marker="o", markersize=2.5, label=f"{value} (n={nruns})")
            ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
        key = monitor_key(tag)
        layer = f" — {key.layer}" if key is not None and key.layer != "penultimate" else ""
        ax.set_title((title(key.name) if key else title(tag)) + layer)
        ax.set_xlabel("global step" if x == "step" else "epoch")
        ax.set_ylabel((key is not None and unit(key.name)) or ("accuracy" if "acc" in tag else tag))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].legend(title=group_by or "runs", fontsize=8, title_fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    save(fig, path)


def draw_info_plane(trajectories: dict[Any, list[tuple[int, float, float]]], group_by: str | None, layer: str,
                    path: Path, suptitle: str) -> None:
    """DSMI(Z;X) against DSMI(Z;Y), one line per group, the epochs coloured along it and its ends numbered."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    last = max((e for pts in trajectories.values() for e, _, _ in pts), default=1)
    scatter = None
    for color, (value, pts) in zip(group_colors(len(trajectories)), trajectories.items()):
        epochs = np.array([p[0] for p in pts])
        xs, ys = np.array([p[1] for p in pts]), np.array([p[2] for p in pts])
        ax.plot(xs, ys, color=color, linewidth=1.2, label=str(value))
        scatter = ax.scatter(xs, ys, c=epochs, cmap="viridis", vmin=0, vmax=last, s=22, zorder=3,
                             edgecolors=color, linewidths=0.8)
        for k in {0, len(pts) - 1}:
            ax.annotate(str(epochs[k]), (xs[k], ys[k]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if scatter is not None:
        fig.colorbar(scatter, ax=ax, label="epoch")
    ax.set_xlabel("DSMI(Z;X) [bits]")
    ax.set_ylabel("DSMI(Z;Y) [bits]")
    ax.set_title(f"information plane — {layer}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(title=group_by or "runs", fontsize=8, title_fontsize=8)
    fig.suptitle(suptitle, fontsize=9)
    save(fig, path)


def draw_layer_heatmap(grids: dict[Any, np.ndarray], panel_titles: Sequence[str], layers: Sequence[str],
                       metrics: Sequence[str], path: Path, suptitle: str) -> None:
    """One panel per group: a layers (rows) x metrics (columns) grid, each cell's value written in it,
    one colour scale (bits) for every panel so that the groups compare."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(grids), squeeze=False,
                             figsize=((2.6 + 1.3 * max(2, len(metrics))) * len(grids), 1.6 + 0.5 * len(layers)))
    cells = np.concatenate([g[np.isfinite(g)] for g in grids.values()] + [np.zeros(0)])
    scale = {"vmin": float(cells.min()), "vmax": float(cells.max())} if cells.size else {}
    for ax, grid, panel in zip(axes[0], grids.values(), panel_titles):
        im = ax.imshow(grid, cmap="viridis", aspect="auto", **scale)
        ax.set_xticks(range(len(metrics)), [title(m) for m in metrics], rotation=30, fontsize=8)
        ax.set_yticks(range(len(layers)), layers, fontsize=8)
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):  # dark text on the bright end of viridis, white on the dark
                ax.text(j, i, num(v), ha="center", va="center", fontsize=7, color="k" if im.norm(v) > 0.6 else "w")
        ax.set_xlabel("metric")
        ax.set_ylabel("layer")
        ax.set_title(panel, fontsize=9)
        fig.colorbar(im, ax=ax, label="bits")
    fig.suptitle(suptitle, fontsize=9)
    save(fig, path)


def draw_scores(points: dict[str, list[tuple[float, float, str, Any]]], subtitles: dict[str, str],
                legend: str, path: Path, label: Any = str) -> None:
    """``scores.png``: one scatter panel per metric (accuracy on y), three a row; the points coloured by
    their group (one legend titled ``legend``); points of no group (None) grey, named by ``label`` when few.

    ``points[metric]`` holds ``(metric value, accuracy, model name, group or None)``.
    """
    fig, axes = _grid(len(points), 4.4, 3.8)
    groups = sorted({p[3] for pts in points.values() for p in pts if p[3] is not None}, key=str)
    colors = {**dict(zip(groups, group_colors(len(groups)))), None: "0.4"}
    for ax, (metric, pts) in zip(axes, points.items()):
        for value in [*groups, None]:
            mine = [p for p in pts if p[3] == value]
            ax.scatter([p[0] for p in mine], [p[1] for p in mine], s=24, color=colors[value], alpha=0.85,
                       label=None if value is None else str(value), edgecolors="none")
        loose = [p for p in pts if p[3] is None]
        if len(loose) <= 12:  # models outside runs (timm:NAME, ...): name them
            for x, y, name, _ in loose:
                ax.annotate(label(name), (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_title(subtitles[metric], fontsize=9)
        ax.set_xlabel(f"{title(metric)} (bits)")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    if groups:
        axes[0].legend(title=legend, fontsize=7, title_fontsize=7, ncol=1 if len(groups) <= 8 else 2)
    save(fig, path, dpi=110)
