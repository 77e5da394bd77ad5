"""Every requested metric of one layer, each base computed once, a failing metric skipped alone.

When DSE and ``knn_acc`` are both measured on the same rows, ``knn_acc`` ranks its
neighbours from the candidates that DSE's dense kernel product leaves
(:mod:`dse_monitor.functional.kernel_neighbours`) instead of a second N x N x D product;
the value is the same (the candidates carry their own rounding bound, and a row the bound
cannot certify is ranked again in float64).

>>> from dse_monitor.registry import MetricSettings
>>> z = torch.cat([torch.zeros(10, 2), torch.full((10, 2), 50.0)]) + torch.arange(20.0)[:, None] / 100
>>> results, failures = compute_layer(z, ["dse", "knn_acc"], {"labels": torch.arange(20) // 10},
...                                   MetricSettings(sigma=1.0, knn_k=3))
>>> round(results["dse"].value, 3), results["knn_acc"].value, failures
(1.018, 1.0, {})
"""
from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from typing import Optional

import torch

from ..functional.kernel_neighbours import kernel_neighbours
from ..functional.knn_vote import EXTRA_CANDIDATES
from . import METRICS, root_metric
from .computations import MetricResult, MetricSettings

__all__ = ["compute_layer"]


def compute_layer(
    z: torch.Tensor, metrics: list[str], refs: dict[str, Optional[torch.Tensor]], settings: MetricSettings
) -> tuple[dict[str, MetricResult], dict[str, str]]:
    """``(results, failures)`` by metric name; ``refs``: the groups of each reference (``"labels"``, ...)."""
    results: dict[str, MetricResult] = {}
    failures: dict[str, str] = {}
    share_kernel = "knn_acc" in metrics and settings.kernel == "gaussian" and any(
        root_metric(m) == "dse" for m in metrics)
    first = [m for m in metrics if not (share_kernel and m == "knn_acc")]
    with kernel_neighbours(z.shape[0], settings.knn_k + 1 + EXTRA_CANDIDATES) if share_kernel else nullcontext() as tap:
        for name in first:
            _compute(name, z, refs, settings, results, failures)
    if share_kernel:
        candidates = tap.candidates  # None: no dense kernel of all rows was built (subsample, streamed)
        _compute("knn_acc", z, refs, dataclasses.replace(settings, knn_candidates=candidates), results, failures)
    return results, failures


def _compute(name: str, z: torch.Tensor, refs: dict[str, Optional[torch.Tensor]], settings: MetricSettings,
             results: dict[str, MetricResult], failures: dict[str, str]) -> None:
    if name in results:  # the base of a derived metric asked for before it
        return
    metric = METRICS[name]
    try:
        results[name] = metric.compute(z, refs.get(metric.reference), settings, results)
    except MemoryError as err:  # no approximate path could take it (t outside {1, 2})
        failures[name] = f"MemoryError: {err} Lower num_samples."
    except Exception as err:  # noqa: BLE001 - recorded, training goes on
        failures[name] = f"{type(err).__name__}: {err}"
