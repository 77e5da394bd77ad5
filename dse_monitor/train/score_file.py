"""``scores.csv`` of ``dse-monitor score`` and what a run reads besides its models: the file itself
(appended and flushed as each model finishes, read back with every metric column a number), the
check that a rerun asks the settings its rows were scored with, and an accuracy file."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Sequence

from ..registry import METRICS, MetricSettings, logged_names

__all__ = ["NUMERIC", "ScoresFile", "SettingsChangedError", "check_settings", "logged_columns",
           "read_accuracy_file"]

#: Columns read back as numbers, besides the metrics' (:func:`logged_columns`).
NUMERIC = ("accuracy", "n", "dim", "sigma_value", "seconds")


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
    dse_monitor.train.score_file.SettingsChangedError: out/scores.csv holds models scored with sigma='sqrt_dim'; this run asks sigma='10.0'. The rows of one file must be comparable: score into another --out, or rerun with sigma='sqrt_dim'.
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
