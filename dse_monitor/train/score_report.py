"""The outputs of ``dse-monitor score``: ``scores.csv`` (appended, resumable), the correlation of each
metric with accuracy (``correlation.csv``, a printed table), ``failures.csv`` and ``scores.png``
(one scatter panel per metric, the points coloured by a hyperparameter of their runs)."""
from __future__ import annotations

import csv
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Sequence

from ..registry import METRICS, MetricSettings, logged_names, title
from .runs import Run, read_hparams
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

#: Columns read back as numbers, besides the metrics' (:func:`logged_columns`).
NUMERIC = ("accuracy", "n", "dim", "sigma_value", "seconds")
MODEL_WIDTH = 44


class SettingsChangedError(ValueError):
    """A rerun into the same ``scores.csv`` asks for other settings than the rows there were scored with."""


def _number(text: str) -> float | int | None:
    if text in ("", None):
        return None
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def logged_columns(metrics: Sequence[str], settings: MetricSettings | None = None) -> list[str]:
    """The columns the metrics of a row are written under: each metric's logged names in the registry
    (:func:`~dse_monitor.registry.logged_names`: ``alpha_req`` also logs ``alpha_req_r2``, ``dse_t`` logs
    ``dse_t<t>`` for each t of ``settings.t_values``), each once; a name the registry does not know, as it is.

    >>> logged_columns(["dse", "alpha_req", "dse_t", "alpha_req_r2"])
    ['dse', 'alpha_req', 'alpha_req_r2', 'dse_t1', 'dse_t2', 'dse_t4', 'dse_t8']
    """
    settings = settings if settings is not None else MetricSettings()
    names = (name for m in metrics for name in (logged_names(m, settings) if m in METRICS else (m,)))
    return list(dict.fromkeys(names))


def _float(text: str | None) -> float | None:
    return None if text in ("", None) else float(text)


class ScoresFile:
    """``scores.csv``: one row per model, appended (and flushed) as each model finishes.

    ``settings``: those of the metrics the rows were scored with (the ``t_values`` of ``dse_t``
    name its columns); the monitor's defaults, which ``score`` uses, when None.
    """

    def __init__(self, path: Path, settings: MetricSettings | None = None) -> None:
        self.path = Path(path)
        self.settings = settings

    def read(self) -> list[dict[str, Any]]:
        """The rows, with :data:`NUMERIC` and every column that the row's metrics log read as numbers
        (floats; None where empty), the rest as written."""
        if not self.path.is_file():
            return []
        with open(self.path, newline="") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            metrics = [m for m in (row.get("metrics") or "").split("+") if m]
            for key, convert in (*((k, _number) for k in NUMERIC),
                                 *((k, _float) for k in logged_columns(metrics, self.settings))):
                if key in row:
                    try:
                        row[key] = convert(row[key])
                    except ValueError:
                        raise ValueError(f"{self.path}: column {key!r} of {row.get('model')!r} holds {row[key]!r}, "
                                         "not a number; repair or remove that row") from None
        return rows

    def append(self, row: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.is_file() or self.path.stat().st_size == 0
        if new:
            header = list(row)
        else:
            with open(self.path, newline="") as f:
                header = next(csv.reader(f))
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in header})
            f.flush()
            os.fsync(f.fileno())


def check_settings(previous: Sequence[dict[str, Any]], record: dict[str, str], path: Path | None) -> None:
    """Refuse, naming it, a setting that differs from the one the rows of ``path`` were scored with.

    >>> check_settings([{"model": "a", "sigma": "sqrt_dim"}], {"sigma": "10.0"}, Path("out/scores.csv"))
    Traceback (most recent call last):
    ...
    dse_monitor.train.score_report.SettingsChangedError: out/scores.csv holds models scored with sigma='sqrt_dim'; this run asks sigma='10.0'. The rows of one file must be comparable: score into another --out, or rerun with sigma='sqrt_dim'.
    """
    for row in previous:
        for key, new in record.items():
            old = row.get(key)
            if old == new:
                continue
            if key == "data" and old:
                try:
                    a, b = json.loads(old), json.loads(new)
                except ValueError:
                    a, b = {}, {}
                changed = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
                if changed:
                    k = changed[0]
                    key, old, new = f"data.{k}", a.get(k), b.get(k)
            what = {"probe": " (the probe images or labels differ: another dataset, split or preprocessing)"}
            raise SettingsChangedError(
                f"{path} holds models scored with {key}={old!r}; this run asks {key}={new!r}{what.get(key, '')}. "
                f"The rows of one file must be comparable: score into another --out, or rerun with {key}={old!r}."
            )


def read_accuracy_file(path: str | Path) -> dict[str, float]:
    """``{model: accuracy}`` from a CSV with a ``model`` column and a column whose name holds ``acc`` (or ``top1``).

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
    ...     _ = f.write("model,top1_acc\\nresnet18,69.7\\n")
    >>> read_accuracy_file(f.name)
    {'resnet18': 69.7}
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"accuracy file {path} not found")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        acc = next((c for c in columns if "acc" in c.lower()), None) or next(
            (c for c in columns if "top1" in c.lower()), None)
        if "model" not in columns or acc is None:
            raise ValueError(f"{path} needs a 'model' column and an accuracy column (a name holding 'acc'); "
                             f"it has {columns}")
        out = {}
        for row in reader:
            try:
                out[row["model"].strip()] = float(row[acc])
            except (TypeError, ValueError):
                raise ValueError(f"{path}: {acc} of {row.get('model')!r} is {row.get(acc)!r}, not a number") from None
    return out


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
