"""``SimCLRModule``: the paper's contrastive condition on any timm backbone.

Two augmented views of every training image (``ImageDataModule(views=2)``), a
projection head on the backbone's penultimate features, the NT-Xent loss, AdamW with
the same warm-up + cosine schedule as :class:`~dse_monitor.train.ImageClassifier`.
The training step never reads the labels. A linear probe on the frozen penultimate
features measures what the representation knows about the classes (``probe_acc``).
"""
from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from .model import build_backbone, warmup_cosine_schedule, warmup_steps_of

__all__ = ["SimCLRModule", "linear_probe_accuracy", "nt_xent_loss"]


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """SimCLR's normalised temperature-scaled cross entropy of two views [B, D] of one batch.

    With ``u`` the 2B L2-normalised projections and ``s_ij = u_i . u_j / temperature``,
    ``loss = mean_i -log( exp(s_i,p(i)) / sum_{k != i} exp(s_ik) )``, ``p(i)`` the other
    view of the same image; the other 2B - 2 samples are the negatives.

    Example:
        >>> e = torch.eye(2)  # two images, identical orthogonal views: log(1 + 2/e)
        >>> round(nt_xent_loss(e, e).item(), 4)
        0.5514
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"two views of the same shape [B, D] are needed, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    n = z1.shape[0]
    u = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = (u @ u.T) / temperature
    self_pairs = torch.eye(2 * n, dtype=torch.bool, device=sim.device)
    sim = sim.masked_fill(self_pairs, float("-inf"))
    other_view = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(sim.device)
    return F.cross_entropy(sim, other_view)


def linear_probe_accuracy(
    train_z: torch.Tensor, train_y: torch.Tensor, val_z: torch.Tensor, val_y: torch.Tensor,
    num_classes: int, epochs: int = 10, lr: float = 1e-3, batch_size: int = 256, seed: int = 0,
) -> float:
    """Validation accuracy of a linear classifier trained on frozen features.

    ``nn.Linear(D, num_classes)`` on features standardised with the training features'
    mean and standard deviation, Adam at ``lr`` on cross-entropy for ``epochs`` passes
    over the training features in seeded shuffled batches. Runs under its own random
    stream (``torch.random.fork_rng``): the caller's generators are left as they were.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(200) % 2
        >>> z = torch.randn(200, 4, generator=g) + 3 * y[:, None]
        >>> linear_probe_accuracy(z[:100], y[:100], z[100:], y[100:], 2, epochs=50, lr=1e-2) > 0.9
        True
    """
    mean, std = train_z.mean(dim=0), train_z.std(dim=0).clamp_min(1e-8)
    train_z, val_z = (train_z - mean) / std, (val_z - mean) / std
    devices = [train_z.device] if train_z.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.enable_grad():
        torch.manual_seed(seed)
        head = nn.Linear(train_z.shape[1], num_classes).to(train_z.device, train_z.dtype)
        optimizer = torch.optim.Adam(head.parameters(), lr=lr)
        n = train_z.shape[0]
        for _ in range(epochs):
            for idx in torch.randperm(n).split(batch_size):
                idx = idx.to(train_z.device)
                loss = F.cross_entropy(head(train_z[idx]), train_y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            return float((head(val_z).argmax(dim=1) == val_y).float().mean())


class SimCLRModule(pl.LightningModule):
    """Contrastive learning (SimCLR) on a timm backbone, with a periodic linear probe.

    Args:
        backbone: a timm model name, built from scratch without its classifier; its
            pooled penultimate features are the representation (what ``DSEMonitor``'s
            ``layers: penultimate`` reads, before the projection head).
        num_classes: classes of the linear probe (the CLI takes it from the data module).
        in_chans, img_size, init_std, pretrained, backbone_kwargs: as
            :class:`~dse_monitor.train.ImageClassifier`.
        lr, weight_decay, warmup_epochs, min_lr_factor: AdamW with linear warm-up then cosine.
        temperature: of NT-Xent (the paper's pipeline: 1.0).
        projection_dim: output of the projection head (the paper: 128).
        projection_hidden_dim: ``None``: one linear layer, features -> ``projection_dim``
            (the paper's 512 -> 128); a width: SimCLR's two-layer MLP with a ReLU.
        linear_probe_every_n_epochs: train a linear probe on the frozen features after
            every n-th epoch and after the last (0: never), logged as ``probe_acc``
            (the paper: 5).
        linear_probe_epochs, linear_probe_lr: its training (the paper: 10 epochs at 1e-3).

    Example:
        >>> model = SimCLRModule("resnet10t", num_classes=3, in_chans=1, projection_dim=16,
        ...                      backbone_kwargs={"channels": [8, 8, 8, 8], "stem_width": 8})
        >>> model(torch.zeros(2, 1, 16, 16)).shape, model.projector(model(torch.zeros(2, 1, 16, 16))).shape
        (torch.Size([2, 8]), torch.Size([2, 16]))
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        num_classes: int = 10,
        in_chans: int = 3,
        img_size: int | None = None,
        init_std: float | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_epochs: float = 10,
        min_lr_factor: float = 0.0,
        temperature: float = 1.0,
        projection_dim: int = 128,
        projection_hidden_dim: int | None = None,
        linear_probe_every_n_epochs: int = 5,
        linear_probe_epochs: int = 10,
        linear_probe_lr: float = 1e-3,
        pretrained: bool = False,
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if linear_probe_every_n_epochs < 0:
            raise ValueError("linear_probe_every_n_epochs must be >= 0 (0: no probe)")
        self.backbone = build_backbone(backbone, 0, in_chans, img_size, init_std, pretrained, backbone_kwargs)
        self.save_hyperparameters()
        width = int(self.backbone.num_features)
        if projection_hidden_dim:
            self.projector = nn.Sequential(nn.Linear(width, projection_hidden_dim), nn.ReLU(inplace=True),
                                           nn.Linear(projection_hidden_dim, projection_dim))
        else:
            self.projector = nn.Linear(width, projection_dim)
        self._val_features: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The representation: the backbone's pooled penultimate features [B, D]."""
        return self.backbone(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        views = batch[0]  # batch[1], the labels, is never read
        if views.ndim != 5 or views.shape[1] < 2:
            raise ValueError(
                f"SimCLRModule trains on two augmented views per image, [B, 2, C, H, W]; got {tuple(views.shape)}. "
                "Use ImageDataModule(views=2) (data.views: 2 in the config)."
            )
        b = views.shape[0]
        x = torch.cat([views[:, 0], views[:, 1]])
        z = self.projector(self.backbone(x))
        loss = nt_xent_loss(z[:b], z[b:], self.hparams.temperature)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    # -- the linear probe ------------------------------------------------------------------
    def _probe_now(self) -> bool:
        every = self.hparams.linear_probe_every_n_epochs
        if every <= 0 or self.trainer.sanity_checking:
            return False
        done = self.current_epoch + 1
        return done % every == 0 or done == self.trainer.max_epochs

    def on_fit_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if self.hparams.linear_probe_every_n_epochs and not hasattr(dm, "eval_train_dataloader"):
            raise ValueError(
                "SimCLRModule's linear probe trains on the un-augmented training split: it needs a data module "
                "with eval_train_dataloader() (ImageDataModule). Pass datamodule=..., or set "
                "linear_probe_every_n_epochs=0."
            )

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if self._probe_now():
            x, y = batch[0], batch[1]
            self._val_features.append((self(x), y))

    def on_validation_epoch_end(self) -> None:
        collected, self._val_features = self._val_features, []
        if not collected or not self._probe_now():
            return
        # Lightning validates under inference mode; the probe needs autograd, on fresh tensors.
        with torch.inference_mode(False):
            val_z = torch.cat([z for z, _ in collected]).clone()
            val_y = torch.cat([y for _, y in collected]).clone()
            train_z, train_y = [], []
            with torch.no_grad():
                for x, y in self.trainer.datamodule.eval_train_dataloader():
                    train_z.append(self(x.to(self.device)))
                    train_y.append(y.to(self.device))
            acc = linear_probe_accuracy(
                torch.cat(train_z), torch.cat(train_y), val_z, val_y, self.hparams.num_classes,
                epochs=self.hparams.linear_probe_epochs, lr=self.hparams.linear_probe_lr, seed=self.current_epoch,
            )
        self.log("probe_acc", acc, prog_bar=True)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        warmup, total = warmup_steps_of(self.trainer, self.hparams.warmup_epochs)
        scheduler = warmup_cosine_schedule(optimizer, warmup, total, self.hparams.min_lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
