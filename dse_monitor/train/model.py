"""``ImageClassifier``: a timm backbone built from scratch, the paper's initialisation,
AdamW with linear warm-up then cosine decay, accuracy logged as ``train_acc``/``val_acc``."""
from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import timm
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

__all__ = ["ImageClassifier", "build_backbone", "paper_init_", "warmup_cosine_factor", "warmup_cosine_schedule"]


def paper_init_(model: nn.Module, std: float, linear_std: float = 1e-3) -> nn.Module:
    """The initialisation of the paper's initialisation study, in place.

    Every ``Conv2d`` weight ~ N(0, std) with bias 0; every BatchNorm weight 1, bias 0
    (GroupNorm and LayerNorm alike); every ``Linear`` weight ~ N(0, linear_std) with
    bias 0. A small ``std`` (<= 0.03 for ResNet-50) collapses the representations at
    initialisation (DSE ~ 0), a large one (>= 0.05) spreads them apart (DSE ~ log2 N).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 64, 3), nn.BatchNorm2d(64), nn.Flatten(), nn.LazyLinear(2))
        >>> _ = net(torch.zeros(1, 3, 5, 5))
        >>> _ = paper_init_(net, std=0.05)
        >>> abs(net[0].weight.std().item() - 0.05) < 0.005, net[0].bias.abs().max().item(), net[1].weight.min().item()
        (True, 0.0, 1.0)
    """
    if std <= 0:
        raise ValueError(f"init_std must be positive, got {std}")
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)):
            if getattr(module, "weight", None) is not None:
                nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=linear_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, min_factor: float = 0.0) -> float:
    """Learning-rate factor: linear warm-up from 0 over ``warmup_steps``, then cosine to ``min_factor``.

    Example:
        >>> [round(warmup_cosine_factor(s, 2, 6), 2) for s in range(7)]
        [0.5, 1.0, 1.0, 0.85, 0.5, 0.15, 0.0]
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_schedule(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_factor: float = 0.0
) -> torch.optim.lr_scheduler.LRScheduler:
    """torch's schedulers giving :func:`warmup_cosine_factor` at every step, stepped once per batch.

    ``LinearLR`` from ``1 / warmup_steps`` to 1 over the warm-up steps, then
    ``CosineAnnealingLR`` down to ``lr * min_factor`` at ``total_steps``, chained by
    ``SequentialLR`` (no warm-up: the cosine alone).

    Example:
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        >>> sched = warmup_cosine_schedule(opt, 2, 6)
        >>> factors = []
        >>> for _ in range(6):
        ...     factors.append(round(opt.param_groups[0]["lr"], 2))
        ...     opt.step()
        ...     sched.step()
        >>> factors
        [0.5, 1.0, 1.0, 0.85, 0.5, 0.15]
    """
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

    warmup_steps = max(0, min(int(warmup_steps), int(total_steps)))
    base = optimizer.param_groups[0]["lr"]
    cosine = CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup_steps), eta_min=base * min_factor)
    if warmup_steps == 0:
        return cosine
    # (step + 1) / warmup_steps for step = 0 .. warmup_steps - 1; one warm-up step is factor 1
    warmup = LinearLR(optimizer, start_factor=1.0 / warmup_steps, end_factor=1.0,
                      total_iters=max(1, warmup_steps - 1))
    return SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])


def warmup_steps_of(trainer: Any, warmup_epochs: float) -> tuple[int, int]:
    """``(warm-up steps, total steps)`` of a Trainer: ``warmup_epochs`` converted with its steps per epoch."""
    total = int(trainer.estimated_stepping_batches)
    max_epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 1
    steps_per_epoch = max(1, total // max_epochs)
    return min(int(round(warmup_epochs * steps_per_epoch)), total), total


def create_backbone(
    name: str,
    num_classes: int,
    in_chans: int,
    img_size: int | None = None,
    pretrained: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """``timm.create_model`` from scratch; ``img_size`` is passed only to models that take it.

    ``pretrained=True`` loads timm's weights, which must already be in the local cache
    (e.g. ``~/.cache/huggingface``) when there is no network: a clear error says so.
    """
    if pretrained:
        try:
            return _create(name, num_classes, in_chans, img_size, True, **kwargs)
        except (OSError, RuntimeError, ValueError) as err:
            raise RuntimeError(
                f"pretrained weights for {name!r} could not be loaded ({type(err).__name__}: {err}). "
                "They must be in timm's local cache (download them once with network access, or set "
                "HF_HUB_CACHE to where they are), or use pretrained: false (the paper trains from scratch)."
            ) from err
    return _create(name, num_classes, in_chans, img_size, False, **kwargs)


def build_backbone(name: str, num_classes: int, in_chans: int, img_size: int | None, init_std: float | None,
                   pretrained: bool, backbone_kwargs: dict[str, Any] | None) -> nn.Module:
    """The backbone of the main job's LightningModules: :func:`create_backbone`, then the paper's
    initialisation when ``init_std`` is given (:func:`paper_init_`).

    ``backbone_kwargs`` as a YAML config gives them (``channels`` a list: timm wants a tuple).
    """
    if pretrained and init_std is not None:
        raise ValueError("init_std re-initialises every layer: it cannot be combined with pretrained=True")
    kwargs = dict(backbone_kwargs or {})
    if isinstance(kwargs.get("channels"), list):
        kwargs["channels"] = tuple(kwargs["channels"])
    backbone = create_backbone(name, num_classes, in_chans, img_size, pretrained, **kwargs)
    if init_std is not None:
        paper_init_(backbone, init_std)
    return backbone


def _create(name: str, num_classes: int, in_chans: int, img_size: int | None, pretrained: bool,
            **kwargs: Any) -> nn.Module:
    if img_size is not None:
        try:
            return timm.create_model(
                name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kwargs
            )
        except TypeError as err:
            if "img_size" not in str(err):
                raise
    return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs)


class ImageClassifier(pl.LightningModule):
    """An image classifier on any timm backbone, trained with cross-entropy.

    Args:
        backbone: a timm model name (``timm.list_models()``), built from scratch.
        num_classes: number of classes (the CLI takes it from the data module).
        in_chans: input channels.
        img_size: input size, passed to backbones that take it (ViTs); the CLI takes it
            from ``data.image_size``.
        init_std: ``None`` keeps timm's initialisation; a float applies the paper's
            initialisation (:func:`paper_init_`): Conv2d ~ N(0, init_std), BatchNorm 1/0,
            Linear ~ N(0, 1e-3).
        lr: peak learning rate of AdamW (the paper: 1e-4, 1e-5 on MNIST).
        weight_decay: AdamW's weight decay (torch's default, 0.01).
        warmup_epochs: linear warm-up length in epochs (the paper: 10); fractions allowed.
        min_lr_factor: the cosine decays to ``lr * min_lr_factor`` at the last step.
        pretrained: load timm's pretrained weights (needs them in the local cache; the
            paper's studies train from scratch).
        backbone_kwargs: further keyword arguments for ``timm.create_model`` (e.g.
            ``channels`` and ``stem_width`` for a narrow ResNet).
        dse_weight: DSE as a training term: ``loss = cross-entropy + dse_weight * DSE(Z)``,
            Z the batch's penultimate features (:class:`~dse_monitor.DSELoss`, bits).
            Positive compresses the representation, negative spreads it; 0 (default): off.
        dse_sigma: the kernel bandwidth of that term.

    Example:
        >>> model = ImageClassifier("resnet10t", num_classes=3, in_chans=1, init_std=0.01,
        ...                         backbone_kwargs={"channels": [8, 8, 8, 8], "stem_width": 8})
        >>> model(torch.zeros(2, 1, 16, 16)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        num_classes: int = 10,
        in_chans: int = 3,
        img_size: int | None = None,
        init_std: float | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        warmup_epochs: float = 10,
        min_lr_factor: float = 0.0,
        pretrained: bool = False,
        backbone_kwargs: dict[str, Any] | None = None,
        dse_weight: float = 0.0,
        dse_sigma: float = 10.0,
    ) -> None:
        super().__init__()
        self.backbone = build_backbone(backbone, num_classes, in_chans, img_size, init_std, pretrained,
                                       backbone_kwargs)
        self.save_hyperparameters()
        from ..loss import DSELoss

        self.dse_loss = DSELoss(sigma=dse_sigma) if dse_weight else None
        self.criterion = nn.CrossEntropyLoss()
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        if self.dse_loss is None:
            logits = self(x)
            loss = self.criterion(logits, y)
        else:  # the classifier's input, then the classifier: the same logits as forward
            z = self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)
            logits = self.backbone.get_classifier()(z)
            dse = self.dse_loss(z)
            self.log("train_dse", dse, on_step=True, on_epoch=True)
            loss = self.criterion(logits, y) + self.hparams.dse_weight * dse
        self.train_acc(logits, y)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val_loss", self.criterion(logits, y), on_epoch=True, prog_bar=True)
        self.log("val_acc", self.val_acc, on_epoch=True, prog_bar=True)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        logits = self(x)
        self.val_acc(logits, y)
        self.log("test_loss", self.criterion(logits, y), on_epoch=True)
        self.log("test_acc", self.val_acc, on_epoch=True)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        warmup, total = warmup_steps_of(self.trainer, self.hparams.warmup_epochs)
        scheduler = warmup_cosine_schedule(optimizer, warmup, total, self.hparams.min_lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
