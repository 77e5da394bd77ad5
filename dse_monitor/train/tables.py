"""The one text-table formatter of the main job (``fit``'s closing table, ``compare``, ``score``)
and the one CSV writer of its studies."""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

__all__ = ["format_columns", "format_line", "mean_std", "num", "output_paths", "write_csv"]


def num(v: float | None, digits: int = 3) -> str:
    """``digits`` decimals, without the ``-0.000`` of tiny negative estimates; ``-`` for a missing value.

    >>> num(-1e-9), num(2.71828), num(float("nan")), num(None)
    ('0.000', '2.718', 'nan', '-')
    """
    if v is None:
        return "-"
    if math.isnan(v):
        return "nan"
    text = f"{v:.{digits}f}"
    return text[1:] if float(text) == 0 and text.startswith("-") else text


def mean_std(mean: float, std: float, n: int) -> str:
    """``mean±std`` over ``n`` runs (the mean alone for one run).

    >>> mean_std(8.2, 0.1, 3), mean_std(8.2, 0.0, 1)
    ('8.200±0.100', '8.200')
    """
    if math.isnan(mean):
        return "nan"
    return num(mean) if n <= 1 else f"{num(mean)}±{num(std)}"


def format_line(cells: Sequence[Any], widths: Sequence[int], left: int = 0, indent: str = "") -> str:
    """One line of a table: the first ``left`` cells left-aligned, the others right-aligned, two spaces apart.

    >>> format_line(["a.ckpt", "0.5"], [8, 5], left=1)
    'a.ckpt      0.5'
    """
    return indent + "  ".join(str(c).ljust(w) if i < left else str(c).rjust(w)
                              for i, (c, w) in enumerate(zip(cells, widths))).rstrip()


def format_columns(header: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "", left: int = 0) -> str:
    """Columns as wide as their widest cell, two spaces apart (right-aligned but the first ``left``).

    >>> print(format_columns(["epoch", "DSE(Z)"], [["0", "8.400"], ["1", "5.250"]]))
    epoch  DSE(Z)
        0   8.400
        1   5.250
    """
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(format_line(r, widths, left, indent) for r in [header, *rows])


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """Write ``header`` and ``rows`` to ``path`` (its folder created); floats as ``repr`` (no digits lost)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([repr(float(c)) if isinstance(c, float) else c for c in row] for row in rows)
    return path


def output_paths(out: str | os.PathLike | None, csv_path: str | os.PathLike | None,
                 default: Path) -> tuple[Path, Path]:
    """``(figure, its CSV)``: ``out`` (else ``default``) and ``csv_path`` (else the figure's with ``.csv``).

    >>> import tempfile
    >>> [p.name for p in output_paths(None, None, Path(tempfile.gettempdir()) / "layers.png")]
    ['layers.png', 'layers.csv']
    """
    png = Path(out) if out is not None else default
    png.parent.mkdir(parents=True, exist_ok=True)
    return png, Path(csv_path) if csv_path is not None else png.with_suffix(".csv")
