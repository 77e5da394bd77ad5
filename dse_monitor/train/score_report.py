"""The outputs of ``dse-monitor score`` besides ``scores.csv`` (:mod:`.score_file`, whose names are
re-exported here): the correlation of each metric with accuracy (``correlation.csv``, a printed
table), the terminal table, ``failures.csv`` and ``scores.png`` (one scatter panel per metric, the
points coloured by a hyperparameter of their runs)."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Sequence

from ..registry import title
from .runs import Run, read_hparams
from .score_file import ScoresFile, SettingsChangedError, check_settings, logged_columns, read_accuracy_file
from .stats import correlation
from .tables import format_columns, format_line, num, write_csv

__all__ = [
    "ScoresFile",
    "SettingsChangedError",
    "check_settings",
    "correlations",
    "format_correlations",
    "format_header",
    "format_row",
    "group_of",
    "logged_columns",
    "read_accuracy_file",
    "short_model",
    "write_correlations",
    "write_failures",
    "write_scatter",
]

MODEL_WIDTH = 44


def _finite_pairs(rows: Sequence[dict[str, Any]], metric: str) -> list[tuple[float, float, dict[str, Any]]]:
    """``(metric value, accuracy, row)`` of the rows where both are finite numbers."""
    pairs = []
    for row in rows:
        x, y = row.get(metric), row.get("accuracy")
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and math.isfinite(x) and math.isfinite(y):
            pairs.append((float(x), float(y), row))
    return pairs


def correlations(rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """Pearson and Spearman coefficients (with p-values: :func:`~dse_monitor.train.stats.correlation`) of each
    metric against accuracy.

    Rows without an accuracy are left out; fewer than 3 rows, or a constant column, give NaN.

    >>> rows = [{"dse": float(i), "accuracy": float(i * i)} for i in range(5)]
    >>> c = correlations(rows, ["dse"])[0]
    >>> c["n"], round(c["pearson"], 3), round(c["spearman"], 3)
    (5, 0.959, 1.0)
    """
    table = []
    for metric in metrics:
        pairs = _finite_pairs(rows, metric)
        r, r_p, rho, rho_p = correlation([p[0] for p in pairs], [p[1] for p in pairs])
        table.append({"metric": metric, "title": title(metric), "n": len(pairs), "pearson": r, "pearson_p": r_p,
                      "spearman": rho, "spearman_p": rho_p})
    return table


def write_correlations(table: Sequence[dict[str, Any]], path: Path) -> None:
    """``correlation.csv``: one row per metric (its folder created)."""
    columns = ["metric", "title", "n", "pearson", "pearson_p", "spearman", "spearman_p"]
    write_csv(path, columns, [[e[c] for c in columns] for e in table])


def write_failures(failed: dict[str, str], path: Path) -> None:
    """``failures.csv`` of this run (removed when every model succeeded)."""
    if not failed:
        if path.is_file():
            path.unlink()
        return
    write_csv(path, ["model", "error"], failed.items())


def short_model(name: str, width: int = MODEL_WIDTH) -> str:
    """A model name to show: Lightning's ``lightning_logs/version_N/checkpoints/`` left out, cut from the left.

    >>> short_model("runs/lr=0.1_seed=1/lightning_logs/version_0/checkpoints/epoch=3-step=48.ckpt")
    'runs/lr=0.1_seed=1/epoch=3-step=48.ckpt'
    >>> short_model("a" * 50, 10)
    '...aaaaaaa'
    """
    name = re.sub(r"(^|/)lightning_logs/version_\d+/checkpoints/", r"\1", name)
    return name if len(name) <= width else "..." + name[-(width - 3):]


def _widths(metrics: Sequence[str]) -> list[int]:
    return [MODEL_WIDTH, 8, *(max(9, len(title(m))) for m in metrics)]


def format_header(metrics: Sequence[str]) -> str:
    """The header line of the terminal table (printed before the first model finishes).

    >>> format_header(["dse", "dsmi_y"]).split()
    ['model', 'accuracy', 'DSE(Z)', 'DSMI(Z;Y)']
    """
    return format_line(["model", "accuracy", *(title(m) for m in metrics)], _widths(metrics), left=1)


def format_row(row: dict[str, Any], metrics: Sequence[str]) -> str:
    """One line of the terminal table (``-``: not available), printed as each model finishes.

    >>> format_row({"model": "a.ckpt", "accuracy": 0.5, "dse": 3.25}, ["dse"]).split()
    ['a.ckpt', '0.500', '3.250']
    """
    cells = [short_model(str(row["model"])), num(row.get("accuracy")), *(num(row.get(m)) for m in metrics)]
    return format_line(cells, _widths(metrics), left=1)


def format_correlations(table: Sequence[dict[str, Any]]) -> str:
    """The printed correlation table.

    >>> print(format_correlations([{"metric": "dse", "title": "DSE(Z)", "n": 4, "pearson": 0.5,
    ...     "pearson_p": 0.5, "spearman": 0.4, "spearman_p": 0.6}]))
    correlation with accuracy (n models):
    metric  n  pearson  p-value  spearman  p-value
    DSE(Z)  4    0.500      0.5     0.400      0.6
    """
    def p(v: float) -> str:
        return "nan" if math.isnan(v) else f"{v:.2g}"

    rows = [[e["title"], e["n"], num(e["pearson"]), p(e["pearson_p"]), num(e["spearman"]), p(e["spearman_p"])]
            for e in table]
    return "correlation with accuracy (n models):\n" + format_columns(
        ["metric", "n", "pearson", "p-value", "spearman", "p-value"], rows, left=1)


def group_of(model: str, group_by: str | None) -> Any:
    """The group of a model's point in ``scores.png``: the ``group_by`` hyperparameter of the run a
    checkpoint was saved in (read as ``compare`` reads it: the run folder's ``config.yaml`` /
    ``hparams.yaml``; ``"n/a"`` for other models), or without ``group_by`` the run's name
    (the sweep's folder above ``lightning_logs``; None for other models).

    >>> group_of("timm:resnet18", "model.init_std"), group_of("timm:resnet18", None)
    ('n/a', None)
    >>> group_of("runs/lr=0.1_seed=1/lightning_logs/version_0/checkpoints/epoch=3-step=48.ckpt", None)
    'lr=0.1_seed=1'
    """
    path = Path(model)
    if path.suffix != ".ckpt" or path.parent.name != "checkpoints":
        return None if group_by is None else "n/a"
    version = path.parent.parent  # where Lightning saved config.yaml / hparams.yaml
    if group_by is None:
        return version.parent.parent.name if version.parent.name == "lightning_logs" else version.name
    try:
        return Run(version, version.name, read_hparams(version)).get(group_by)
    except KeyError:
        return "n/a"


def write_scatter(rows: Sequence[dict[str, Any]], table: Sequence[dict[str, Any]], metrics: Sequence[str],
                  path: Path, group_by: str | None = None) -> None:
    """``scores.png``: one scatter per metric (three a row), accuracy on y, the rank correlation in each title;
    the points coloured by ``group_by`` (see :func:`group_of`: else by run), models outside runs named."""
    from .plots import draw_scores

    by_metric = {e["metric"]: e for e in table}
    points, subtitles = {}, {}
    for metric in metrics:
        points[metric] = [(x, y, str(row["model"]), group_of(str(row["model"]), group_by))
                          for x, y, row in _finite_pairs(rows, metric)]
        e = by_metric[metric]
        p = "" if math.isnan(e["spearman_p"]) else f" (p={e['spearman_p']:.2g})"
        subtitles[metric] = f"{title(metric)}: Spearman {num(e['spearman'], 2)}{p}, n={e['n']}"
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_scores(points, subtitles, group_by or "run", path, label=lambda name: short_model(name, 24))
