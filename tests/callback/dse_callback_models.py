"""Tiny models and data shared by the callback tests (module level, so ddp_spawn can pickle them)."""
from __future__ import annotations

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

NUM_CLASSES = 4


def make_data(n: int = 128, size: int = 16, seed: int = 0, num_classes: int = NUM_CLASSES) -> TensorDataset:
    """Images [n, 3, size, size] whose mean depends on the class, labels 0..num_classes-1."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % num_classes
    x = torch.randn(n, 3, size, size, generator=g) + 0.5 * y[:, None, None, None].float()
    return TensorDataset(x, y)


class TinyCNN(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.pool(self.features(x)).flatten(1)))


class LitClassifier(L.LightningModule):
    """A classifier around any ``net``; records the training loss of every step."""

    def __init__(self, net: nn.Module | None = None, n_train: int = 96, n_val: int = 64, size: int = 16,
                 batch_size: int = 32, lr: float = 0.05, shuffle: bool = True) -> None:
        super().__init__()
        self.net = net if net is not None else TinyCNN()
        self.n_train, self.n_val, self.size = n_train, n_val, size
        self.batch_size, self.lr, self.shuffle = batch_size, lr, shuffle
        self.losses: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.losses.append(float(loss.detach()))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def train_dataloader(self):
        return DataLoader(make_data(self.n_train, self.size, seed=1), batch_size=self.batch_size, shuffle=self.shuffle)

    def val_dataloader(self):
        return DataLoader(make_data(self.n_val, self.size, seed=2), batch_size=self.batch_size)


def trainer_kwargs(tmp_path, **overrides):
    kw = dict(
        accelerator="cpu", devices=1, max_epochs=2, default_root_dir=str(tmp_path), logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, log_every_n_steps=1,
    )
    kw.update(overrides)
    return kw


class FailsOnRank1:
    """A ``batch_fn`` that raises on rank 1 at its ``fail_on_call``-th call only (calls: 1 = the setup peek).

    Module level so that ddp_spawn can pickle it; each process counts its own calls.
    """

    def __init__(self, fail_on_call: int) -> None:
        self.fail_on_call = fail_on_call
        self.calls = 0

    def __call__(self, batch):
        self.calls += 1
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if rank == 1 and self.calls == self.fail_on_call:
            raise RuntimeError("probe batch failed on rank 1 only")
        return batch[0], batch[1]


def deep_mlp(width: int = 24, depth: int = 4, size: int = 16) -> nn.Sequential:
    """Flatten, then ``depth`` Linear+ReLU blocks (the monitored layers "1", "3", ...), then the head."""
    blocks: list[nn.Module] = [nn.Flatten()]
    for i in range(depth):
        blocks += [nn.Linear(3 * size * size if i == 0 else width, width), nn.ReLU()]
    return nn.Sequential(*blocks, nn.Linear(width, NUM_CLASSES))


class WritesLastMeasurement(L.Callback):
    """Writes each rank's last monitor measurement (values, who computed what) to ``out/rank<r>.json``
    at the end of fit (list it after the monitor)."""

    def __init__(self, monitor, out) -> None:
        self.monitor, self.out = monitor, out

    def on_fit_end(self, trainer, pl_module):
        import json

        m = self.monitor.last_measurement
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(
            {"values": m.values, "computed_by": m.computed_by, "notes": m.notes}))
