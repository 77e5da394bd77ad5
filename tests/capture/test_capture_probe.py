"""The probe subset, its loader and batch unpacking."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from dse_monitor.capture import choose_indices, first_dataloader, probe_loader, resize_inputs, unpack_batch


def test_choose_indices_is_seeded_sorted_and_clamped():
    a = choose_indices(1000, 100, seed=3)
    assert a == choose_indices(1000, 100, seed=3) and a == sorted(a) and len(set(a)) == 100
    assert a != choose_indices(1000, 100, seed=4)
    assert choose_indices(10, 50) == list(range(10))
    assert choose_indices(10, None) == list(range(10))
    with pytest.raises(ValueError, match="num_samples"):
        choose_indices(10, 1)


def test_probe_loader_keeps_order_and_borrows_loader_settings():
    ds = TensorDataset(torch.arange(20.0)[:, None], torch.arange(20))
    source = DataLoader(ds, batch_size=3, shuffle=True, collate_fn=lambda items: [torch.stack(t) for t in zip(*items)])
    loader = probe_loader(source, [7, 2, 11, 5])
    assert loader.batch_size == 3 and loader.collate_fn is source.collate_fn
    assert torch.cat([b[1] for b in loader]).tolist() == [7, 2, 11, 5]
    assert [len(b[1]) for b in probe_loader(ds, range(5), batch_size=2)] == [2, 2, 1]
    with_workers = DataLoader(ds, batch_size=4, num_workers=2, worker_init_fn=print)
    assert probe_loader(with_workers, [1, 2]).worker_init_fn is print  # e.g. datasets that open files per worker
    assert first_dataloader([{"a": source}]) is source

    class Stream(IterableDataset):
        def __iter__(self):
            yield from range(3)

    with pytest.raises(TypeError, match="map-style"):
        probe_loader(Stream(), [0])


def test_unpack_batch_forms():
    x, y = torch.zeros(2, 3), torch.tensor([1, 0])
    assert unpack_batch((x, y))[1] is y
    assert unpack_batch([x])[1] is None
    assert unpack_batch({"pixel_values": x, "labels": y})[0] is x
    assert unpack_batch(x) == (x, None)
    with pytest.raises(ValueError, match="batch_fn"):
        unpack_batch({"foo": x})


def test_resize_inputs_nearest_for_images_flat_otherwise():
    img = torch.arange(16.0).reshape(1, 1, 4, 4)
    small = resize_inputs(img, 2)
    assert small.tolist() == [[0.0, 2.0, 8.0, 10.0]]  # nearest picks every other pixel
    assert resize_inputs(torch.zeros(3, 2, 5), 64).shape == (3, 10)  # not an image: flattened
    assert resize_inputs(img, None).shape == (1, 16)
