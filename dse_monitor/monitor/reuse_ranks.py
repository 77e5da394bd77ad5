"""Validation reuse across ranks: which dataset rows this rank's validation visits (the sampler's
order) and how the ranks' probe rows come together in probe order (see :mod:`.reuse`).

Under DDP each rank validates its own shard (Lightning's ``DistributedSampler`` with
``shuffle=False``, padded to equal shards); every decision is agreed on by all ranks, so
they all take the same branch of the collective calls.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch.utils.data import DistributedSampler, SequentialSampler

from .collect import ProbeFeatures

__all__ = ["agree", "gather_rows", "visit_order"]


def agree(trainer: Any, ok: bool) -> bool:
    """``ok`` on every rank (one collective under DDP), so that all ranks take the same branch."""
    return bool(trainer.strategy.reduce_boolean_decision(ok, all=True)) if trainer.world_size > 1 else ok


def visit_order(sampler: Any, trainer: Any) -> Optional[list[int]]:
    """The dataset indices this rank's validation visits, in order, when the sampler says them
    (sequential, or distributed with ``shuffle=False``); None for any other sampler."""
    if isinstance(sampler, SequentialSampler):  # under DDP: every rank validates the whole split
        return list(range(len(sampler)))
    if type(sampler) is DistributedSampler and not sampler.shuffle and sampler.num_replicas == trainer.world_size \
            and sampler.rank == trainer.global_rank:
        return list(iter(sampler))
    return None


def gather_rows(trainer: Any, rows: dict[str, torch.Tensor], filled: torch.Tensor) -> Optional[ProbeFeatures]:
    """Every rank's rows in probe order (copied out of inference mode), or None where a probe sample is missing."""
    world = trainer.world_size
    if world == 1:
        return ProbeFeatures({n: z.clone() for n, z in rows.items()}) if bool(filled.all()) else None
    strategy, device = trainer.strategy, next(iter(rows.values())).device
    mine = filled.nonzero().squeeze(1).to(device)
    width = int(strategy.all_gather(torch.tensor([len(mine)], device=device)).max())
    positions = torch.full((width,), -1, dtype=torch.long, device=device)
    positions[: len(mine)] = mine
    positions = strategy.all_gather(positions).reshape(world, width)
    if int(torch.unique(positions[positions >= 0]).numel()) != len(filled):
        return None
    features = {}
    for name, z in rows.items():
        local = torch.zeros(width, *z.shape[1:], dtype=z.dtype, device=z.device)
        local[: len(mine)] = z[mine.to(z.device)]
        gathered = strategy.all_gather(local).reshape(world, width, *z.shape[1:])
        out = torch.zeros_like(z)
        for r in reversed(range(world)):  # a sample the sampler's padding repeats: the lowest rank's row
            keep = positions[r] >= 0
            out[positions[r][keep].to(out.device)] = gathered[r][keep.to(gathered.device)].to(out.device)
        features[name] = out
    return ProbeFeatures(features)
