"""DSE's Lanczos kernel split over the DDP ranks: the row group built from the trainer's strategy.

Under DDP every rank holds the gathered probe features; with a :class:`RowGroup` in the metric
settings, the DSE of a layer is computed by all ranks together, each holding only its rows of the
N x N kernel (:mod:`dse_monitor.functional.row_operator`): about 1/W of the memory, one
``trainer.strategy.all_gather`` per kernel product, the same value on every rank. No process group
of the monitor's own: the strategy's collective is the only one used.

Because the solve is a collective, every rank must compute the DSE of the same layers in the same
order with the same features and settings (the measurement sequence does so where rank 0
found :func:`shards_dse` and :func:`lanczos_for_auto` true).

Example (one process: nothing to split):
    >>> class Trainer:
    ...     world_size, global_rank = 1, 0
    >>> rank_group(Trainer()) is None
    True
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from ..functional.row_group import RowGroup
from ..functional.solver import AUTO_EXACT_N, choose_solver
from ..registry import root_metric
from .config import MonitorConfig

#: Points DSE keeps (``diffusion_spectral_entropy_details``' default ``max_n``, which the registry keeps).
DSE_MAX_N = 10_000


def shards_dse(config: MonitorConfig, n: Optional[int] = None) -> bool:
    """Whether ``config``'s DSE of an ``n``-row probe may take the Lanczos path on a row-split kernel.

    The Gaussian kernel only (the kNN one is sparse, O(N k) per process already), a configured
    metric that computes DSE, and ``solver="lanczos"``, or ``"auto"`` above the size where it is
    always exact (rank 0's choice of path is then followed by all ranks).

    >>> shards_dse(MonitorConfig(metrics="dse", solver="lanczos")), shards_dse(MonitorConfig(metrics="dsmi_y"))
    (True, False)
    >>> shards_dse(MonitorConfig(metrics="dse", solver="auto"), n=1000)
    False
    """
    if config.kernel != "gaussian" or not any(root_metric(m) == "dse" for m in config.metrics):
        return False
    if config.solver == "lanczos":
        return True
    return config.solver == "auto" and n is not None and min(n, DSE_MAX_N) > AUTO_EXACT_N


def rank_group(trainer: Any) -> Optional[RowGroup]:
    """The trainer's ranks as a :class:`RowGroup` over ``trainer.strategy.all_gather`` (None on one process).

    Lightning's DDP strategies return ``all_gather(t)`` stacked ``[world, *t.shape]``; the tensors
    travel on the strategy's ``root_device`` (NCCL needs them on the rank's GPU).
    """
    world = int(getattr(trainer, "world_size", 1))
    if world <= 1:
        return None
    strategy = trainer.strategy
    return RowGroup(int(trainer.global_rank), world, strategy.all_gather, getattr(strategy, "root_device", None))


def lanczos_for_auto(config: MonitorConfig, features: Any) -> bool:
    """False when ``solver="auto"`` takes the exact path for every layer of ``features`` (ProbeFeatures):
    then no rank needs a share of a kernel. Every rank must hold the same crossover (the split
    measurement shares rank 0's first), or they would decide differently.

    >>> lanczos_for_auto(MonitorConfig(solver="lanczos"), None)
    True
    """
    if config.solver != "auto":
        return True
    t = config.t if isinstance(config.t, (int, float)) else 1
    zs = list(features.features.values())
    dtype = config.dtype or torch.float64  # DSE's compute dtype when none is set
    return any(choose_solver(min(int(z.shape[0]), DSE_MAX_N), t, "auto", dtype) == "lanczos" for z in zs)
