"""Keeping the probe's batches between passes: budget, copies, equality."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

import numpy as np

from dse_monitor.capture.cache import BatchRecorder, CachedBatches, batch_nbytes, holds_arrays, same_batches


def _loader(n: int = 10, batch_size: int = 4) -> DataLoader:
    return DataLoader(TensorDataset(torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n)), batch_size=batch_size)


def test_recorder_keeps_every_batch_within_the_budget_and_nothing_beyond():
    batch_bytes = 4 * 4 + 4 * 8  # 4 float32 inputs and 4 int64 labels
    kept = BatchRecorder(_loader(), limit_bytes=10 * batch_bytes)
    assert [len(b[1]) for b in kept] == [4, 4, 2]  # the pass itself sees every batch
    assert len(kept.batches) == 3 and torch.cat([b[1] for b in kept.batches]).tolist() == list(range(10))
    over = BatchRecorder(_loader(), limit_bytes=batch_bytes + 1)
    assert [len(b[1]) for b in over] == [4, 4, 2] and over.batches is None
    assert batch_nbytes({"x": torch.zeros(3, dtype=torch.float64), "meta": "id"}) == 24


def test_replays_are_copies_a_model_writing_into_its_inputs_cannot_change_the_next_pass():
    recorder = BatchRecorder(_loader(), limit_bytes=None)
    for x, _ in recorder:
        x.mul_(0)  # a forward that writes into its inputs, during the recorded pass
    cached = CachedBatches(recorder.batches)
    for x, _ in cached:
        x.add_(100)
    assert torch.cat([x for x, _ in cached]).flatten().tolist() == list(range(10))
    assert len(cached) == 3 and cached.nbytes == 10 * 4 + 10 * 8


def test_same_batches_compares_structure_shapes_dtypes_and_values():
    a = {"x": torch.ones(2, 3), "y": torch.tensor([0, 1])}
    assert same_batches(a, {"x": torch.ones(2, 3), "y": torch.tensor([0, 1])})
    assert not same_batches(a, {"x": torch.ones(2, 3) + 1e-7, "y": torch.tensor([0, 1])})
    assert not same_batches(a, {"x": torch.ones(3, 2), "y": torch.tensor([0, 1])})
    assert not same_batches(a, {"x": torch.ones(2, 3, dtype=torch.float64), "y": torch.tensor([0, 1])})
    assert not same_batches(a, {"x": torch.ones(2, 3)})


def test_numpy_leaves_are_flagged():
    assert holds_arrays([torch.zeros(2), {"crop": np.zeros(3)}]) and not holds_arrays([torch.zeros(2), "path"])
