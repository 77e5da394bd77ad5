"""The outputs of ``dse-monitor score``: ``scores.csv`` (appended, resumable), the correlation of each
metric with accuracy (``correlation.csv``, a printed table) and ``scores.png`` (one scatter per metric)."""
from __future__ import annotations

import csv
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Sequence

from ..registry import title

__all__ = [
    "ScoresFile",
    "SettingsChangedError",
    "check_settings",
    "correlations",
    "format_correlations",
    "format_header",
    "format_row",
    "read_accuracy_file",
    "short_model",
    "write_correlations",
    "write_failures",
    "write_scatter",
]

#: Columns read back as numbers.
NUMERIC = ("accuracy", "n", "dim", "sigma_value", "seconds")
MODEL_WIDTH = 44


class SettingsChangedError(ValueError):
    """A rerun into the same ``scores.csv`` asks for other settings than the rows there were scored with."""


def _number(text: str) -> float | int | None:
    if text in ("", None):
        return None
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


class ScoresFile:
    """``scores.csv``: one row per model, appended (and flushed) as each model finishes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        with open(self.path, newline="") as f:
            rows = list(csv.DictReader(f))
        metrics = rows[0].get("metrics", "").split("+") if rows else []
        for row in rows:
            for key in (*NUMERIC, *metrics):
                if key in row:
                    try:
                        row[key] = _number(row[key])
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


def _finite_pairs(rows: Sequence[dict[str, Any]], metric: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in rows:
        x, y = row.get(metric), row.get("accuracy")
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and math.isfinite(x) and math.isfinite(y):
            xs.append(float(x))
            ys.append(float(y))
    return xs, ys


def correlations(rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """Pearson and Spearman coefficients (with p-values, :mod:`scipy.stats`) of each metric against accuracy.

    Rows without an accuracy are left out; fewer than 3 rows, or a constant column, give NaN.

    >>> rows = [{"dse": float(i), "accuracy": float(i * i)} for i in range(5)]
    >>> c = correlations(rows, ["dse"])[0]
    >>> c["n"], round(c["pearson"], 3), round(c["spearman"], 3)
    (5, 0.959, 1.0)
    """
    from scipy import stats

    table = []
    for metric in metrics:
        xs, ys = _finite_pairs(rows, metric)
        entry: dict[str, Any] = {"metric": metric, "title": title(metric), "n": len(xs)}
        if len(xs) >= 3 and len(set(xs)) > 1 and len(set(ys)) > 1:
            pearson, spearman = stats.pearsonr(xs, ys), stats.spearmanr(xs, ys)
            entry.update(pearson=float(pearson.statistic), pearson_p=float(pearson.pvalue),
                         spearman=float(spearman.statistic), spearman_p=float(spearman.pvalue))
        else:
            entry.update(pearson=math.nan, pearson_p=math.nan, spearman=math.nan, spearman_p=math.nan)
        table.append(entry)
    return table


def write_correlations(table: Sequence[dict[str, Any]], path: Path) -> None:
    columns = ["metric", "title", "n", "pearson", "pearson_p", "spearman", "spearman_p"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(table)


def write_failures(failed: dict[str, str], path: Path) -> None:
    """``failures.csv`` of this run (removed when every model succeeded)."""
    if not failed:
        if path.is_file():
            path.unlink()
        return
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "error"])
        writer.writerows(failed.items())


def _cell(value: Any, width: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-".rjust(width)
    return (f"{value:.3f}" if isinstance(value, float) else str(value)).rjust(width)


def short_model(name: str, width: int = MODEL_WIDTH) -> str:
    """A model name to show: Lightning's ``lightning_logs/version_N/checkpoints/`` left out, cut from the left.

    >>> short_model("runs/lr=0.1_seed=1/lightning_logs/version_0/checkpoints/epoch=3-step=48.ckpt")
    'runs/lr=0.1_seed=1/epoch=3-step=48.ckpt'
    >>> short_model("a" * 50, 10)
    '...aaaaaaa'
    """
    name = re.sub(r"(^|/)lightning_logs/version_\d+/checkpoints/", r"\1", name)
    return name if len(name) <= width else "..." + name[-(width - 3):]


def format_header(metrics: Sequence[str]) -> str:
    """The header line of the terminal table.

    >>> format_header(["dse", "dsmi_y"]).split()
    ['model', 'accuracy', 'DSE(Z)', 'DSMI(Z;Y)']
    """
    cells = [title(m).rjust(max(9, len(title(m)))) for m in metrics]
    return "  ".join(["model".ljust(MODEL_WIDTH), "accuracy", *cells])


def format_row(row: dict[str, Any], metrics: Sequence[str]) -> str:
    """One line of the terminal table (``-``: not available).

    >>> format_row({"model": "a.ckpt", "accuracy": 0.5, "dse": 3.25}, ["dse"]).split()
    ['a.ckpt', '0.500', '3.250']
    """
    cells = [_cell(row.get(m), max(9, len(title(m)))) for m in metrics]
    return "  ".join([short_model(str(row["model"])).ljust(MODEL_WIDTH), _cell(row.get("accuracy"), 8), *cells])


def format_correlations(table: Sequence[dict[str, Any]]) -> str:
    """The printed correlation table.

    >>> print(format_correlations([{"metric": "dse", "title": "DSE(Z)", "n": 4, "pearson": 0.5,
    ...     "pearson_p": 0.5, "spearman": 0.4, "spearman_p": 0.6}]))
    correlation with accuracy (n models):
    metric        n  pearson  p-value  spearman  p-value
    DSE(Z)        4    0.500      0.5     0.400      0.6
    """
    lines = ["correlation with accuracy (n models):",
             f"{'metric':<10}  {'n':>3}  {'pearson':>7}  {'p-value':>7}  {'spearman':>8}  {'p-value':>7}"]
    for e in table:
        def num(v: float, fmt: str) -> str:
            return "nan" if v is None or math.isnan(v) else format(v, fmt)

        lines.append(f"{e['title']:<10}  {e['n']:>3}  {num(e['pearson'], '.3f'):>7}  {num(e['pearson_p'], '.2g'):>7}"
                     f"  {num(e['spearman'], '.3f'):>8}  {num(e['spearman_p'], '.2g'):>7}")
    return "\n".join(lines)


def write_scatter(rows: Sequence[dict[str, Any]], table: Sequence[dict[str, Any]], metrics: Sequence[str],
                  path: Path) -> None:
    """``scores.png``: one scatter per metric, accuracy on y, the rank correlation in the title."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    by_metric = {e["metric"]: e for e in table}
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        pairs = [(r.get(metric), r.get("accuracy"), str(r["model"])) for r in rows]
        pairs = [(x, y, m) for x, y, m in pairs if isinstance(x, (int, float)) and isinstance(y, (int, float))
                 and math.isfinite(x) and math.isfinite(y)]
        ax.scatter([p[0] for p in pairs], [p[1] for p in pairs], s=22)
        if len(pairs) <= 12:  # few models: name them
            for x, y, m in pairs:
                ax.annotate(short_model(m, 24), (x, y), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
        e = by_metric[metric]
        rho = "nan" if math.isnan(e["spearman"]) else f"{e['spearman']:.2f}"
        p = "" if math.isnan(e["spearman_p"]) else f" (p={e['spearman_p']:.2g})"
        ax.set_title(f"{title(metric)}: Spearman {rho}{p}, n={e['n']}", fontsize=9)
        ax.set_xlabel(f"{title(metric)} (bits)")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig.savefig(path, dpi=110)
    plt.close(fig)
