"""The probe set: a fixed, seeded subset of a dataset, its loader, and helpers over (nested) batches."""
from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from ..functional._checks import check_int

#: Dictionary keys tried, in order, for the inputs and the labels of a batch.
INPUT_KEYS = ("x", "input", "inputs", "image", "images", "img", "pixel_values", "input_ids", "data", "features")
LABEL_KEYS = ("y", "label", "labels", "target", "targets", "class", "classes")

def choose_indices(n_total: int, num_samples: int | None, seed: int = 0) -> list[int]:
    """Indices of the probe subset, sorted (the dataset's order), the same for a given seed.

    ``num_samples=None`` or at least ``n_total`` takes the whole split.

    >>> choose_indices(10, 4, seed=0)
    [0, 2, 6, 9]
    >>> choose_indices(3, None)
    [0, 1, 2]
    """
    check_int(num_samples, "num_samples (None: the whole split)", 2, allow_none=True)
    if num_samples is None or num_samples >= n_total:
        return list(range(n_total))
    return sorted(random.Random(seed).sample(range(n_total), num_samples))


def first_dataloader(loaders: Any) -> Any:
    """The first loader of what a ``*_dataloader()`` hook may return (a loader, list, dict or CombinedLoader)."""
    flattened = getattr(loaders, "flattened", None)  # Lightning's CombinedLoader
    if isinstance(flattened, list):
        loaders = flattened
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        if not loaders:
            raise ValueError("the dataloader hook returned no loader")
        return first_dataloader(loaders[0])
    return loaders


def source_dataset(source: Dataset | DataLoader) -> Dataset:
    """The map-style dataset behind a Dataset or DataLoader (what indices refer to)."""
    dataset = source.dataset if isinstance(source, DataLoader) else source
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise TypeError(
            f"the probe needs a map-style dataset (with __len__ and __getitem__) to pick a fixed subset; "
            f"got {type(dataset).__name__}. Pass probe=<a map-style Dataset>."
        )
    return dataset


def probe_loader(source: Dataset | DataLoader, indices: Sequence[int], batch_size: int | None = None,
                 overrides: Mapping[str, Any] | None = None) -> DataLoader:
    """A loader over ``indices`` of ``source``'s dataset, in that order, never shuffled.

    A DataLoader source lends its batch size, collate function and workers (with their
    ``worker_init_fn``: datasets that open files or connections per worker need it);
    ``overrides`` (DataLoader arguments such as ``num_workers``) replace what it lends.

    >>> from torch.utils.data import TensorDataset
    >>> ds = TensorDataset(torch.arange(10.0), torch.arange(10))
    >>> [b[1].tolist() for b in probe_loader(ds, [1, 3, 5], batch_size=2)]
    [[1, 3], [5]]
    """
    dataset = source_dataset(source)
    kwargs: dict[str, Any] = {}
    if isinstance(source, DataLoader):
        kwargs = dict(collate_fn=source.collate_fn, num_workers=source.num_workers, pin_memory=source.pin_memory)
        if source.num_workers > 0:
            kwargs["multiprocessing_context"] = source.multiprocessing_context
            kwargs["worker_init_fn"] = source.worker_init_fn
            kwargs["persistent_workers"] = source.persistent_workers
        batch_size = batch_size or source.batch_size
    kwargs.update(overrides or {})
    if not kwargs.get("num_workers"):  # arguments that DataLoader refuses without workers
        kwargs = {k: v for k, v in kwargs.items() if k not in ("persistent_workers", "multiprocessing_context")}
    return DataLoader(Subset(dataset, list(indices)), batch_size=batch_size or 64, shuffle=False, **kwargs)


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """Apply ``fn`` to the tensors of a (nested) tuple/list/mapping; the rest stays as it is.

    Mappings keep their type when it can be rebuilt from a dict (e.g. Hugging Face
    ``BatchEncoding``), named tuples stay named tuples.

    >>> from collections import namedtuple
    >>> Pair = namedtuple("Pair", "x y")
    >>> map_tensors(Pair(torch.zeros(1), {"m": torch.ones(1), "id": "a"}), lambda t: t + 1)
    Pair(x=tensor([1.]), y={'m': tensor([2.]), 'id': 'a'})
    """
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        mapped = {k: map_tensors(v, fn) for k, v in obj.items()}
        if type(obj) is dict:
            return mapped
        try:
            return type(obj)(mapped)
        except Exception:  # a mapping type that cannot be built from a dict
            return mapped
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(map_tensors(v, fn) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_tensors(v, fn) for v in obj)
    return obj


def tensor_leaves(obj: Any) -> list[torch.Tensor]:
    """The tensors of a (nested) tuple/list/mapping, in the order :func:`map_tensors` visits them.

    >>> [t.tolist() for t in tensor_leaves({"x": torch.zeros(1), "meta": ("id", torch.ones(2))})]
    [[0.0], [1.0, 1.0]]
    """
    leaves: list[torch.Tensor] = []

    def keep(t: torch.Tensor) -> torch.Tensor:
        leaves.append(t)
        return t

    map_tensors(obj, keep)
    return leaves


def to_device(obj: Any, device: torch.device | str) -> Any:
    """Move the tensors of a (nested) tuple/list/mapping to ``device`` (see :func:`map_tensors`).

    >>> to_device({"m": torch.ones(1)}, "cpu")
    {'m': tensor([1.])}
    """
    return map_tensors(obj, lambda t: t.to(device, non_blocking=True))


def resize_inputs(x: Any, size: int | None = 64) -> torch.Tensor:
    """Inputs as flat float32 rows for DSMI(Z;X): images [B, C, H, W] are resized to
    ``size x size`` (nearest) first; other inputs are flattened as they are.

    >>> resize_inputs(torch.zeros(2, 3, 32, 32), 8).shape
    torch.Size([2, 192])
    >>> resize_inputs(torch.zeros(2, 5)).shape
    torch.Size([2, 5])
    """
    if not isinstance(x, torch.Tensor):
        from .pooling import first_tensor

        x = first_tensor(x)
    x = x.detach().float()
    if size is not None and x.ndim == 4 and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="nearest")
    return x.reshape(x.shape[0], -1)
