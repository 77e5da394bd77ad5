"""Keeping a fixed probe's batches in memory, so that later passes skip loading them.

The probe is the same samples at every measurement; with deterministic transforms
(a validation split) its batches are the same tensors every time, and loading them
(decoding, resizing, collating: on the embedded default half of a measurement) is
repeated work. :class:`BatchRecorder` keeps the batches of one pass while they fit a
byte budget; :class:`CachedBatches` replays them. Each replay hands out copies, so a
model that writes into its inputs cannot change the next pass.

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
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterable, Iterator, Optional

import numpy as np
import torch

from .probe import map_tensors, tensor_leaves

#: What ``cache_inputs="auto"`` keeps at most: 256 MiB (1,000 images of 3 x 150 x 150 in float32).
CACHE_LIMIT_BYTES = 256 * 2**20


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
    """Iterates ``loader`` once and keeps a copy of its batches while they total at most ``limit_bytes``.

    After the pass, :attr:`batches` is the list of batches, or None when they did not fit
    (``limit_bytes=None``: no limit); :attr:`nbytes` is what they took (up to the overrun).
    """

    def __init__(self, loader: Iterable[Any], limit_bytes: Optional[int]) -> None:
        self.loader, self.limit_bytes = loader, limit_bytes
        self.batches: Optional[list[Any]] = []
        self.nbytes = 0

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            if self.batches is not None:
                self.nbytes += batch_nbytes(batch)
                if self.limit_bytes is not None and self.nbytes > self.limit_bytes:
                    self.batches = None  # over budget: stop keeping, keep counting nothing more
                else:
                    self.batches.append(map_tensors(batch, torch.clone))  # the model may write into its inputs
            yield batch


class CachedBatches:
    """Replays kept batches; every pass gets fresh copies of the tensors."""

    def __init__(self, batches: list[Any]) -> None:
        self.batches = batches
        self.nbytes = sum(batch_nbytes(b) for b in batches)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.batches:
            yield map_tensors(batch, torch.clone)

    def __len__(self) -> int:
        return len(self.batches)
