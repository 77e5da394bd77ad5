"""The one probe set of ``dse-monitor score`` (the split's source, fixed indices, a fingerprint) and
the accuracy of a model's head on it.

The indices are the monitor's (:func:`~dse_monitor.monitor.standalone.probe_indices`);
each model is then measured on them by :func:`~dse_monitor.monitor.standalone.measure`,
which reads the batches as the callback does. The labels and input clusters come from
the first model's measurement and are reused for the others (``Measurement.groups``),
so that DSMI(Z;X) of every model refers to the same groups.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..capture import ProbeBatch, first_dataloader, probe_loader
from ..capture.probe import tensor_leaves
from ..monitor import MonitorConfig
from ..monitor.standalone import probe_indices

__all__ = ["Probe", "ProbeAccuracy", "build_probe", "data_arguments"]

#: Data arguments that do not change which images and labels the probe holds.
NOT_THE_DATA = ("batch_size", "num_workers", "download", "root", "_instantiator")


@dataclass
class Probe:
    """The probe: its source (Dataset or DataLoader), indices, number of classes, fingerprint and data arguments."""

    source: Any
    indices: list[int]
    num_classes: int | None
    fingerprint: str
    data: str

    def record(self) -> dict[str, str]:
        """What identifies the probe in ``scores.csv``: a hash of its indices and of every tensor of its
        batches (inputs, labels), and the data arguments (to name the one that changed)."""
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


def build_probe(datamodule: Any, split: str, config: MonitorConfig) -> Probe:
    """Choose the probe subset of ``split`` and fingerprint its batches (no model runs here).

    >>> from torch.utils.data import TensorDataset
    >>> ds = TensorDataset(torch.randn(40, 5), torch.arange(40) % 4)
    >>> probe = build_probe(ds, "val", MonitorConfig(num_samples=30))
    >>> len(probe.indices), probe.num_classes, len(probe.fingerprint)
    (30, None, 12)
    """
    source = _source(datamodule, split)
    indices = probe_indices(source, config)
    digest = hashlib.sha1(np.asarray(indices, dtype=np.int64).tobytes())
    for batch in probe_loader(source, indices, config.batch_size):
        for t in tensor_leaves(batch):
            digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    num_classes = getattr(datamodule, "num_classes", None)
    data = json.dumps(data_arguments(datamodule), sort_keys=True)
    return Probe(source, indices, num_classes if isinstance(num_classes, int) else None, digest.hexdigest()[:12], data)


class ProbeAccuracy:
    """The probe accuracy of a model's head, read from each forward pass (``measure(..., on_output=)``).

    Counted when every output is (or holds as ``.logits`` / first element) logits
    [B, num_classes]; ``num_classes`` defaults to the largest label + 1. None otherwise.
    accuracy = (samples whose argmax of the logits is their label) / N.

    >>> acc = ProbeAccuracy()
    >>> acc(torch.tensor([[2.0, 0.0], [2.0, 1.0]]), ProbeBatch(labels=torch.tensor([0, 1])))
    >>> acc.value()
    0.5
    """

    def __init__(self, num_classes: int | None = None) -> None:
        self.num_classes = num_classes
        self.correct, self.total, self.largest_label = 0, 0, -1
        self.widths: set[int] = set()
        self.usable = True

    def __call__(self, output: Any, batch: ProbeBatch) -> None:
        logits = getattr(output, "logits", output)  # Hugging Face ModelOutput
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        if not (isinstance(logits, torch.Tensor) and logits.ndim == 2 and batch.labels is not None):
            self.usable = False
            return
        labels = torch.as_tensor(batch.labels).cpu()
        if labels.dtype == torch.bool or labels.is_floating_point() or labels.shape != logits.shape[:1]:
            self.usable = False
            return
        self.widths.add(int(logits.shape[1]))
        self.largest_label = max(self.largest_label, int(labels.max()))
        self.correct += int((logits.argmax(dim=1).cpu() == labels).sum())
        self.total += int(labels.shape[0])

    def value(self) -> float | None:
        classes = self.num_classes if self.num_classes is not None else self.largest_label + 1
        if not self.usable or not self.total or self.widths != {classes}:
            return None
        return self.correct / self.total
