"""The one probe set of ``dse-monitor score``: fixed indices, labels, input clusters, a fingerprint.

Built once for all models with the capture room's helpers (:func:`choose_indices`,
:func:`probe_loader`, :func:`resize_inputs`); the inputs are clustered here, once, so
that DSMI(Z;X) of every model refers to the same groups.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..capture import choose_indices, first_dataloader, probe_loader, resize_inputs, unpack_batch
from ..capture.probe import source_dataset
from ..functional import reference_groups
from ..registry import METRICS

if TYPE_CHECKING:
    from .score import ScoreSettings

__all__ = ["Probe", "build_probe", "data_arguments"]

#: Data arguments that do not change which images and labels the probe holds.
NOT_THE_DATA = ("batch_size", "num_workers", "download", "root", "_instantiator")


@dataclass
class Probe:
    """The probe: its loader, first batch of inputs, labels, groups and fingerprint."""

    loader: DataLoader
    indices: list[int]
    peek: Any
    labels: torch.Tensor | None
    label_groups: torch.Tensor | None
    input_groups: torch.Tensor | None
    num_classes: int | None
    fingerprint: str
    data: str

    def record(self) -> dict[str, str]:
        """What identifies the probe in ``scores.csv``: a hash of its indices, labels and input values, and
        the data arguments (to name the one that changed)."""
        return {"data": self.data, "probe": self.fingerprint}


def data_arguments(datamodule: Any) -> dict[str, Any]:
    """The arguments that define a data module's images (its saved hyperparameters), as JSON-safe values.

    >>> from dse_monitor.train.data import ImageDataModule
    >>> data_arguments(ImageDataModule("digits", image_size=16, batch_size=7))["image_size"]
    16
    """
    hparams = getattr(datamodule, "hparams", None)
    if not hparams:
        return {"class": type(datamodule).__name__}
    out = {"class": type(datamodule).__name__}
    for key, value in dict(hparams).items():
        if key not in NOT_THE_DATA:
            out[key] = value if isinstance(value, (int, float, str, bool, type(None))) else repr(value)
    return out


def _source(datamodule: Any, split: str) -> Any:
    hook = getattr(datamodule, f"{split}_dataloader", None)
    if hook is None or not hasattr(datamodule, "setup"):  # a Dataset or DataLoader: the probe source itself
        return datamodule
    stage = {"val": "fit", "train": "fit", "test": "test"}[split]
    if hasattr(datamodule, "prepare_data"):
        datamodule.prepare_data()
    datamodule.setup(stage)
    return first_dataloader(hook())


def build_probe(datamodule: Any, settings: "ScoreSettings", batch_size: int | None = None) -> Probe:
    """Choose the probe subset of ``settings.split``, read its labels and cluster its inputs once.

    >>> from torch.utils.data import TensorDataset
    >>> from dse_monitor.train.score import ScoreSettings
    >>> ds = TensorDataset(torch.randn(40, 5), torch.arange(40) % 4)
    >>> probe = build_probe(ds, ScoreSettings(num_samples=30, x_size=None))
    >>> len(probe.indices), probe.num_classes, int(probe.input_groups.unique().numel())
    (30, 4, 4)
    """
    source = _source(datamodule, settings.split)
    n_total = len(source_dataset(source))
    if n_total < 2:
        raise ValueError(f"the {settings.split} split has {n_total} samples; the probe needs at least 2")
    indices = choose_indices(n_total, settings.num_samples, settings.seed)
    loader = probe_loader(source, indices, batch_size)
    wants = {METRICS[m].reference for m in settings.metrics}
    digest = hashlib.sha1(np.asarray(indices, dtype=np.int64).tobytes())
    peek, ys, xs = None, [], []
    for batch in loader:
        x, y = unpack_batch(batch)
        if peek is None:
            peek = x
        if isinstance(x, torch.Tensor):
            digest.update(x.detach().cpu().contiguous().numpy().tobytes())
        if y is not None:
            y = torch.as_tensor(y).cpu()
            digest.update(y.numpy().tobytes())
            ys.append(y)
        if "inputs" in wants:
            xs.append(resize_inputs(x, settings.x_size).cpu())
    labels = torch.cat(ys) if ys and len(ys) == len(loader) else None
    if labels is None and ("labels" in wants or "inputs" in wants and settings.n_clusters is None):
        raise ValueError(
            f"the {settings.split} batches carry no labels: DSMI(Z;Y), CSMI(Z;Y), the probe accuracy and the default "
            "number of input clusters need (x, y) batches. Drop those metrics or pass n_clusters."
        )
    label_groups = reference_groups(labels) if labels is not None and "labels" in wants else None
    input_groups = None
    if "inputs" in wants:
        k = settings.n_clusters or int(torch.unique(labels).numel())
        input_groups = reference_groups(torch.cat(xs), n_clusters=k, seed=settings.seed)
    num_classes = getattr(datamodule, "num_classes", None)
    if not isinstance(num_classes, int):
        num_classes = int(labels.max()) + 1 if labels is not None and labels.dtype != torch.bool else None
    data = json.dumps(data_arguments(datamodule), sort_keys=True)
    return Probe(loader, indices, peek, labels, label_groups, input_groups, num_classes,
                 digest.hexdigest()[:12], data)
