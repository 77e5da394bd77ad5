"""The processes that share the rows of one kernel: this rank, their number, and one collective.

The row-sharded operator (:mod:`.row_operator`) needs a single collective, ``all_gather(t)``:
every rank's tensor of the same shape, stacked ``[world, *t.shape]`` in rank order. That is what
Lightning's ``trainer.strategy.all_gather`` returns under DDP, and what
:meth:`RowGroup.from_torch_distributed` builds from ``torch.distributed``; this module does not
know where it comes from.

Rows are split in contiguous, balanced shares: rank r holds rows ``[r N // W, (r + 1) N // W)``.
Sums are taken from the gathered partials in rank order, never by an all-reduce (whose order is
the backend's), so every rank holds bitwise the same trace, products and decisions: the Lanczos
bookkeeping after them then runs identically on every rank and the ranks' collectives stay in step.

Example:
    >>> one = RowGroup.single()
    >>> one.share(10), one.gather_columns(torch.arange(6.0).reshape(2, 3), 3).shape
    ((0, 10), torch.Size([2, 3]))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

AllGather = Callable[[torch.Tensor], torch.Tensor]


def _stack_one(t: torch.Tensor) -> torch.Tensor:
    return t.unsqueeze(0)


@dataclass(frozen=True)
class RowGroup:
    """Rank ``rank`` of ``world`` processes sharing a kernel's rows, and their ``all_gather``.

    ``all_gather(t)`` must be called by every rank with a tensor of the same shape and dtype and
    return them stacked ``[world, *t.shape]``. ``device``: where the collective's tensors must
    live (NCCL: the rank's GPU; gloo: the CPU); None leaves them where they are.
    """

    rank: int
    world: int
    all_gather: AllGather
    device: torch.device | str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.world, int) or isinstance(self.world, bool) or self.world < 1:
            raise ValueError(f"RowGroup.world must be a positive int (the number of processes), got {self.world!r}")
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or not 0 <= self.rank < self.world:
            raise ValueError(f"RowGroup.rank must be an int in [0, world={self.world}), got {self.rank!r}")
        if not callable(self.all_gather):
            raise TypeError(
                f"RowGroup.all_gather must be callable (t -> the ranks' tensors stacked [world, *t.shape], "
                f"e.g. trainer.strategy.all_gather), got {type(self.all_gather).__name__}"
            )

    @classmethod
    def single(cls) -> "RowGroup":
        """One process holding every row (the ordinary, unsharded operator)."""
        return cls(0, 1, _stack_one)

    @classmethod
    def from_torch_distributed(cls, device: torch.device | str | None = None) -> "RowGroup":
        """The default ``torch.distributed`` process group (already initialised by the caller)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("RowGroup.from_torch_distributed needs torch.distributed.init_process_group first")
        world = dist.get_world_size()

        def gather(t: torch.Tensor) -> torch.Tensor:
            out = [torch.empty_like(t) for _ in range(world)]
            dist.all_gather(out, t)
            return torch.stack(out)

        return cls(dist.get_rank(), world, gather, device)

    def share(self, n: int, rank: int | None = None) -> tuple[int, int]:
        """Rows ``[start, stop)`` of ``rank`` (default: this one) among ``n``: ``[r n // W, (r + 1) n // W)``."""
        r = self.rank if rank is None else rank
        return r * n // self.world, (r + 1) * n // self.world

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's ``t`` stacked ``[world, *t.shape]``, on ``t``'s device (one collective)."""
        if self.world == 1:
            return t.unsqueeze(0)
        sent = t.contiguous() if self.device is None else t.to(self.device).contiguous()
        out = self.all_gather(sent)
        if tuple(out.shape) != (self.world, *t.shape):
            raise RuntimeError(
                f"RowGroup.all_gather returned shape {tuple(out.shape)} for a tensor of shape {tuple(t.shape)}; "
                f"it must stack the {self.world} ranks' tensors as [world, *shape] (Lightning's "
                "strategy.all_gather does so under DDP)"
            )
        return out.to(t.device)

    def gather_columns(self, local: torch.Tensor, n: int, fingerprint: torch.Tensor | None = None) -> torch.Tensor:
        """``[b, n]`` from every rank's columns ``local`` ``[b, stop - start]`` of its share (one collective).

        Shares differ by at most one row: each is padded to the largest (plus one column for
        ``fingerprint`` [b], if given) and cut again after the gather. A fingerprint that differs
        between ranks (their operands differ) raises ``RuntimeError`` on every rank alike.
        """
        if self.world == 1:
            return local
        width = -(-n // self.world) + (fingerprint is not None)
        padded = local.new_zeros(local.shape[0], width)
        padded[:, : local.shape[1]] = local
        if fingerprint is not None:
            padded[:, -1] = fingerprint
        stacked = self.gather(padded)  # [world, b, width]
        if fingerprint is not None and bool(stacked[:, :, -1].isnan().any()):
            raise RuntimeError("another rank failed its part of the kernel product (its error is reported "
                               "there); this DSE is skipped on every rank")
        if fingerprint is not None and not bool((stacked[:, :, -1] == stacked[:1, :, -1]).all()):
            raise RuntimeError(
                "the ranks multiplied different vectors by their kernel rows: their Lanczos bookkeeping "
                "diverged (different torch thread counts or CPU/GPU models between the ranks?). Give every "
                "rank the same torch.set_num_threads and hardware, or use solver='exact'."
            )
        widths = [stop - start for start, stop in (self.share(n, r) for r in range(self.world))]
        return torch.cat([stacked[r, :, :w] for r, w in enumerate(widths)], dim=1)

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """The ranks' ``values`` summed in rank order (bitwise the same on every rank)."""
        stacked = self.gather(values)
        total = stacked[0].clone()
        for r in range(1, self.world):
            total += stacked[r]
        return total

    def agree(self, value: int) -> int:
        """Rank 0's ``value`` on every rank (a choice that must not differ between them)."""
        if self.world == 1:
            return int(value)
        return int(self.gather(torch.tensor([int(value)], dtype=torch.int64))[0, 0])

    def all_true(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank."""
        if self.world == 1:
            return bool(flag)
        return bool(self.gather(torch.tensor([int(bool(flag))], dtype=torch.int64)).min())
