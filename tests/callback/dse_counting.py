"""Datasets that count their reads, and a callback that says which reads were the monitor's (module level,
so that ddp_spawn can pickle them; each process counts its own reads)."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import lightning.pytorch as L
import torch
from dse_callback_models import LitClassifier, make_data
from torch import nn
from torch.utils.data import DataLoader, Dataset

#: Reads of every CountingImages in this process, by phase ("validation" or "monitor": everything else).
READS: Counter = Counter()
_PHASE = ["monitor"]


class CountingImages(Dataset):
    """Images and labels held in memory; ``__getitem__`` counts its calls in :data:`READS`."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    @classmethod
    def uint8(cls, n: int, size: int, seed: int = 0) -> "CountingImages":
        g = torch.Generator().manual_seed(seed)
        y = torch.arange(n) % 4
        return cls(torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8), y)

    @classmethod
    def like(cls, n: int, size: int = 16, seed: int = 2) -> "CountingImages":
        return cls(*make_data(n, size, seed=seed).tensors)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        READS[_PHASE[0]] += 1
        return self.x[i], self.y[i]


class PooledNet(nn.Module):
    """A tiny classifier for images of any size and dtype: it reads an 8 x 8 grid of their pixels (cheap on
    large images, so that a test's time goes to loading them)."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(3 * 64, 16), nn.ReLU())
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        step = max(1, x.shape[-1] // 8)
        return self.fc(self.hidden(x[:, :, ::step, ::step][:, :, :8, :8].float().flatten(1)))


class CountedValidation(LitClassifier):
    """LitClassifier whose validation split is a CountingImages (the same object every call)."""

    def __init__(self, val: CountingImages, **kw) -> None:
        super().__init__(n_val=len(val), **kw)
        self.val = val

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=self.batch_size)


class ReadLog(L.Callback):
    """The monitor's reads (outside validation) at each point: after the preflight, after the measurement
    at init, after every epoch's measurement (list it after the monitor). Written to ``out`` per rank."""

    def __init__(self, out: Path | None = None) -> None:
        self.out, self.marks = out, []

    def setup(self, trainer, pl_module, stage):
        READS.clear()
        _PHASE[0] = "monitor"

    def on_fit_start(self, trainer, pl_module):
        self.marks = [READS["monitor"]]

    def on_train_start(self, trainer, pl_module):
        self.marks.append(READS["monitor"])

    def on_validation_epoch_start(self, trainer, pl_module):
        _PHASE[0] = "validation"

    def on_validation_epoch_end(self, trainer, pl_module):
        _PHASE[0] = "monitor"

    def on_train_epoch_end(self, trainer, pl_module):
        self.marks.append(READS["monitor"])

    def on_fit_end(self, trainer, pl_module):
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.per_point))

    @property
    def per_point(self) -> list[int]:
        """Reads in the preflight, at init, and at each epoch end."""
        return [self.marks[0]] + [b - a for a, b in zip(self.marks, self.marks[1:])]
