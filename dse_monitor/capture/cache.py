"""Keeping a fixed probe's batches in memory, so that later passes skip loading them.

The probe is the same samples at every measurement; with deterministic transforms
(a validation split) its batches are the same tensors every time, and loading them
(decoding, resizing, collating: 80-90% of an own probe pass on a GPU) is repeated
work. :func:`plan_cache` picks where the batches are kept, cheapest replay first:

- ``"device"``: on the model's (CUDA) device, when they take at most
  ``device_share`` of its free memory (``torch.cuda.mem_get_info``);
- ``"pinned"``: in page-locked host memory, replayed with non-blocking copies, when
  they take at most ``host_share`` of the available RAM (split among the processes
  of the host);
- ``"host"``: the model runs on the CPU (or another non-CUDA device): host memory
  within the same RAM budget, replayed as copies;
- nowhere (loaded at every pass) otherwise.

:class:`BatchRecorder` keeps the batches of one pass in the chosen tier while they
fit its byte limit (an allocation failure drops them and the pass goes on);
:class:`CachedBatches` replays them. Every replay hands out copies (on the device a
clone, from pinned memory the copy to the device), so a model that writes into its
inputs cannot change the next pass. The dtype is kept as it is.

>>> from torch.utils.data import DataLoader, TensorDataset
>>> loader = DataLoader(TensorDataset(torch.arange(6.0)), batch_size=4)
>>> recorder = BatchRecorder(loader, limit_bytes=1024)
>>> [len(b[0]) for b in recorder], recorder.nbytes
([4, 2], 24)
>>> cached = CachedBatches(recorder.batches)
>>> [b[0].tolist() for b in cached]
[[0.0, 1.0, 2.0, 3.0], [4.0, 5.0]]
>>> same_batches(next(iter(loader)), cached.batches[0])
True
>>> plan_cache(2**20, torch.device("cpu")).where
'host'
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional

import numpy as np
import torch

from ..functional.operator import available_memory
from .probe import map_tensors, tensor_leaves

#: What ``cache_inputs="auto"`` may fill on the model's CUDA device: a quarter of its free memory.
DEVICE_SHARE = 0.25
#: What it may fill in host RAM (pinned under CUDA): a quarter of the available RAM, split among the host's processes.
HOST_SHARE = 0.25


@dataclass(frozen=True)
class CacheBudget:
    """The shares of free device memory and of available host RAM that kept batches may take."""

    device_share: float = DEVICE_SHARE
    host_share: float = HOST_SHARE


@dataclass(frozen=True)
class Tier:
    """Where kept batches live (``"device"``, ``"pinned"`` or ``"host"``), their byte limit, and the model's device."""

    where: str
    limit_bytes: Optional[int]
    device: torch.device

    def keep(self, t: torch.Tensor) -> torch.Tensor:
        """A copy of ``t`` in this tier (same dtype)."""
        if self.where == "pinned":
            return torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t)
        return t.detach().to(self.device if self.where == "device" else "cpu", copy=True)

    def replay(self, t: torch.Tensor) -> torch.Tensor:
        """A copy of a kept ``t`` for one pass: cloned on the device, or copied there from pinned memory."""
        return t.to(self.device if self.where != "host" else t.device, non_blocking=self.where == "pinned", copy=True)


#: The tier of batches kept with no plan (a CPU copy, no limit).
HOST = Tier("host", None, torch.device("cpu"))


def plan_cache(estimate_bytes: int, device: torch.device, budget: CacheBudget = CacheBudget(), *,
               unlimited: bool = False, device_allowed: bool = True, host_processes: int = 1) -> Optional[Tier]:
    """The cheapest tier that holds ``estimate_bytes`` within ``budget``, or None.

    ``unlimited`` (``cache_inputs=True``): the host tier takes any size. ``device_allowed=False``
    leaves the device out (before training has run, its free memory does not yet show
    what training needs).
    """
    device = torch.device(device)
    if device.type == "cuda" and device_allowed:
        limit = int(budget.device_share * available_memory(device))
        if estimate_bytes <= limit:
            return Tier("device", None if unlimited else limit, device)
    limit = int(budget.host_share * available_memory("cpu") / max(1, host_processes))
    if unlimited or estimate_bytes <= limit:
        return Tier("pinned" if device.type == "cuda" else "host", None if unlimited else limit, device)
    return None


def describe_budget(device: torch.device, budget: CacheBudget = CacheBudget(), host_processes: int = 1) -> str:
    """The budgets of :func:`plan_cache` in words, for the line that says a probe does not fit."""
    host = budget.host_share * available_memory("cpu") / max(1, host_processes) / 2**30
    words = f"host: {budget.host_share:.0%} of available RAM = {host:.2f} GiB"
    if torch.device(device).type == "cuda":
        free = budget.device_share * available_memory(device) / 2**30
        words = f"device: {budget.device_share:.0%} of free memory = {free:.2f} GiB; " + words
    return words


def batch_nbytes(batch: Any) -> int:
    """Bytes held by the tensors of a (nested) batch."""
    return sum(t.numel() * t.element_size() for t in tensor_leaves(batch))


def holds_arrays(batch: Any) -> bool:
    """Whether a (nested) batch holds numpy arrays: they escape the byte count, the comparison and the copies.

    >>> holds_arrays({"x": torch.zeros(1), "meta": [np.zeros(2)]}), holds_arrays((torch.zeros(1), "id"))
    (True, False)
    """
    if isinstance(batch, np.ndarray):
        return True
    if isinstance(batch, Mapping):
        return any(holds_arrays(v) for v in batch.values())
    if isinstance(batch, (tuple, list)):
        return any(holds_arrays(v) for v in batch)
    return False


def same_batches(a: Any, b: Any) -> bool:
    """Whether two batches hold equal tensors (same structure, shapes, dtypes and values)."""
    left, right = tensor_leaves(a), tensor_leaves(b)
    return len(left) == len(right) and all(
        x.shape == y.shape and x.dtype == y.dtype and torch.equal(x.cpu(), y.cpu()) for x, y in zip(left, right)
    )


class BatchRecorder:
    """Iterates ``loader`` once and keeps a copy of its batches in ``tier`` while they total at most ``limit_bytes``.

    After the pass, :attr:`batches` is the list of batches, or None when they did not fit
    (``limit_bytes=None``: no limit) or a copy failed (out of device or pinned memory:
    :attr:`error` says so; the pass itself goes on); :attr:`nbytes` is what they took
    (up to the overrun).
    """

    def __init__(self, loader: Iterable[Any], limit_bytes: Optional[int], tier: Tier = HOST) -> None:
        self.loader, self.limit_bytes, self.tier = loader, limit_bytes, tier
        self.batches: Optional[list[Any]] = []
        self.nbytes = 0
        self.error: Optional[BaseException] = None

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            if self.batches is not None:
                self.nbytes += batch_nbytes(batch)
                if self.limit_bytes is not None and self.nbytes > self.limit_bytes:
                    self.batches = None  # over budget: stop keeping
                else:
                    try:  # a copy, never the batch itself: the model may write into its inputs
                        self.batches.append(map_tensors(batch, self.tier.keep))
                    except Exception as err:  # out of device / pinned memory: give the cache up, not the pass
                        self.batches, self.error = None, err
            yield batch

    def drop(self) -> None:
        """Give up what was kept (frees it for the pass or for training)."""
        self.batches = None


class CachedBatches:
    """Replays kept batches; every pass gets fresh copies of the tensors (see :class:`Tier`)."""

    def __init__(self, batches: list[Any], tier: Tier = HOST) -> None:
        self.batches, self.tier = batches, tier
        self.nbytes = sum(batch_nbytes(b) for b in batches)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.batches:
            yield map_tensors(batch, self.tier.replay)

    def __len__(self) -> int:
        return len(self.batches)

    def moved(self, tier: Tier) -> "CachedBatches":
        """The same batches in another tier (raises when it cannot hold them; this one is left as it was)."""
        return CachedBatches([map_tensors(b, tier.keep) for b in self.batches], tier)
