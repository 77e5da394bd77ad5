"""DSMI's subset entropies shared out among processes: each solves its share, one gather gives all.

DSMI(Z;B) solves the DSE of many subsets of the rows (each group, and random subsets of each
group's size). With a :class:`~.row_group.RowGroup` of W processes holding the same features,
the distinct subsets are dealt by cost (|S|^3, longest first, each to the least loaded
process; the same deal on every process) and every process solves only its own. One
``all_gather`` of the entropies (float64, so a float32 value passes unchanged) gives every
process all of them, so the mutual information is then combined from the same numbers, in
the same order, as one process would: the same value.

A process whose solves fail tells the others through the same gather, and every process
raises alike (a ``MemoryError`` stays one, so the exact path's fallback is taken everywhere).

Example (one process: its own solver, unchanged):
    >>> from dse_monitor.functional.row_group import RowGroup
    >>> solve = lambda subsets: [torch.tensor(float(len(s))) for s in subsets]
    >>> [float(v) for v in shared_subset_entropies(solve, RowGroup.single())([np.arange(3), np.arange(5)])]
    [3.0, 5.0]
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from .row_group import RowGroup
from .subset_entropies import SubsetEntropies

__all__ = ["deal_subsets", "shared_subset_entropies"]

_OK, _MEMORY, _OTHER = 0.0, 1.0, 2.0


def deal_subsets(sizes: list[int], world: int) -> list[int]:
    """The process of each subset: cost |S|^3, longest first, to the least loaded (ties: lower index).

    >>> deal_subsets([100, 100, 50, 200], 2)
    [1, 1, 1, 0]
    """
    load = [0.0] * world
    owner = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        r = min(range(world), key=lambda r: (load[r], r))
        load[r] += float(sizes[i]) ** 3
        owner[i] = r
    return owner


def shared_subset_entropies(solve: SubsetEntropies, group: RowGroup, like: torch.Tensor | None = None
                            ) -> SubsetEntropies:
    """``solve`` (subsets -> their entropies) run on this process's share of the subsets only; every
    process must call the result with the same subsets, in the same order. ``like``: the features,
    whose dtype and device the entropies take (a process without subsets of its own sees none)."""
    if group.world == 1:
        return solve

    def run(subsets: Iterable[np.ndarray]) -> list[torch.Tensor]:
        subsets = list(subsets)
        owner = deal_subsets([len(s) for s in subsets], group.world)
        mine = [i for i, r in enumerate(owner) if r == group.rank]
        buf = torch.zeros(len(subsets) + 1, dtype=torch.float64)
        dtype = like.dtype if like is not None else torch.float64
        device = like.device if like is not None else torch.device("cpu")
        error = None
        try:
            values = solve([subsets[i] for i in mine]) if mine else []
            for i, v in zip(mine, values):
                buf[i] = float(v)
        except MemoryError as err:
            buf[-1], error = _MEMORY, err
        except Exception as err:  # noqa: BLE001 - said to every process below, then raised
            buf[-1], error = _OTHER, err
        gathered = group.gather(buf)  # [world, S + 1]
        status = gathered[:, -1]
        if bool((status != _OK).any()):
            failed = int(torch.nonzero(status != _OK)[0])
            if error is not None:
                raise error
            kind = MemoryError if float(status[failed]) == _MEMORY else RuntimeError
            raise kind(f"process {failed} of {group.world} failed to solve its share of the subsets")
        return [gathered[owner[i], i].to(dtype=dtype, device=device) for i in range(len(subsets))]

    return run
