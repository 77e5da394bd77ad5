"""The measured per-process choices (eigen-solver library, ``solver="auto"`` crossover), shared by processes.

Each process measures its choices at first use (:mod:`.backend`, :func:`.solver.auto_crossover`).
Processes that split one computation (DDP ranks) must choose alike, or the same matrix could
be solved by another library (values apart by LAPACK rounding, ~1e-7 relative) or by another
path (exact vs Lanczos) on another rank. They exchange :func:`measured_choices` and every one
adopts the same merge (:func:`adopt_choices`: the first process's choice where they differ).

>>> mine = measured_choices()
>>> adopt_choices([mine, mine])
>>> sorted(measured_choices()) == ["backend", "crossovers"]
True
"""
from __future__ import annotations

from typing import Any

import torch

from . import backend, solver

__all__ = ["adopt_choices", "calibrate_auto", "measured_choices"]


def measured_choices() -> dict[str, dict]:
    """This process's choices so far: ``{"backend": {kind: library}, "crossovers": {(threads, dtype): N}}``."""
    return {"backend": backend.choices(), "crossovers": solver.crossovers()}


def adopt_choices(ranked: list[dict[str, Any]]) -> None:
    """Adopt the merge of several processes' :func:`measured_choices`, the first one's where they differ."""
    backend.adopt([one["backend"] for one in ranked])
    solver.adopt_crossovers([one["crossovers"] for one in ranked])


def calibrate_auto(n_max: int, solver_name: str, dtype: torch.dtype) -> None:
    """Measure the ``solver="auto"`` crossover now if a problem of ``n_max`` points will need it (so that
    a process can share it before any of its problems is solved)."""
    if solver_name == "auto" and solver.AUTO_CROSSOVER is None and n_max > solver.AUTO_EXACT_N:
        solver.auto_crossover(dtype)
