"""The image transforms of the main job (torchvision ``transforms.v2``): the plain one
(to ``in_chans`` x ``image_size`` x ``image_size``, normalised, optionally flipped and
shifted) and SimCLR's random views.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

__all__ = ["STATS", "MultiView", "contrastive_transform", "image_transform"]

# Channel statistics used for normalisation (the usual published values).
STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "digits": ((0.5,), (0.5,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def _stats_for(in_chans: int, mean: Sequence[float], std: Sequence[float]) -> tuple[list[float], list[float]]:
    """The dataset's channel statistics for ``in_chans`` channels (grey stats repeated, colour averaged)."""
    if len(mean) == in_chans:
        return list(mean), list(std)
    if len(mean) == 1:
        return list(mean) * in_chans, list(std) * in_chans
    return [sum(mean) / len(mean)] * in_chans, [sum(std) / len(std)] * in_chans


def _channels(in_chans: int) -> Any:
    """A v2 transform mapping any image to ``in_chans`` channels: grey repeated, colour to luma."""
    from torchvision.transforms import v2

    if in_chans == 3:
        return v2.RGB()
    if in_chans == 1:
        return v2.Grayscale(num_output_channels=1)
    raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")


def image_transform(image_size: int, in_chans: int, mean: Sequence[float], std: Sequence[float],
                    augment: bool = False) -> Any:
    """PIL image or [C, H, W] tensor in [0, 1] -> ``in_chans`` x ``image_size`` x ``image_size``, normalised.

    torchvision ``transforms.v2``: to a float image, channels adapted, normalised with the
    dataset's statistics, resized (bilinear, antialiased); ``augment`` adds a horizontal
    flip and a crop shifted by up to ``image_size // 8`` pixels (reflect padding).

    Example:
        >>> t = image_transform(16, 3, (0.5,), (0.5,))
        >>> x = t(torch.ones(1, 8, 8))
        >>> tuple(x.shape), x.min().item(), x.max().item()
        ((3, 16, 16), 1.0, 1.0)
    """
    from torchvision.transforms import v2

    m, s = _stats_for(in_chans, mean, std)
    steps = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), _channels(in_chans), v2.Normalize(m, s),
             v2.Resize((image_size, image_size), antialias=True)]
    if augment:
        pad = max(1, image_size // 8)
        steps += [v2.RandomHorizontalFlip(), v2.RandomCrop(image_size, padding=pad, padding_mode="reflect")]
    return v2.Compose([*steps, v2.ToPureTensor()])


def contrastive_transform(dataset: str, image_size: int, in_chans: int, mean: Sequence[float],
                          std: Sequence[float]) -> Any:
    """One random view for contrastive learning (SimCLR), with ``transforms.v2``.

    Natural images (CIFAR-10, STL-10, image folders): SimCLR's random resized crop
    (scale 0.08-1), horizontal flip, colour jitter (0.4, 0.4, 0.4, 0.1; p = 0.8), grey
    (p = 0.2) and, from 64 px up, Gaussian blur (p = 0.5). Digits and MNIST: no flip
    and no hue (a mirrored 2 is not a 2; the images are grey): a resized crop of scale
    0.5-1 (which also shifts the digit), a rotation of up to 15 degrees and
    brightness/contrast jitter (p = 0.8).

    Example:
        >>> view = contrastive_transform("digits", 24, 3, (0.5,), (0.5,))
        >>> a, b = view(torch.rand(1, 8, 8)), view(torch.rand(1, 8, 8))
        >>> tuple(a.shape), bool((a - b).abs().max() > 0)
        ((3, 24, 24), True)
    """
    from torchvision.transforms import v2

    m, s = _stats_for(in_chans, mean, std)
    if dataset in ("digits", "mnist"):
        # few, cheap steps: on 8x8 digits the per-call overhead of each transform dominates
        steps = [
            v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
            v2.RandomResizedCrop(image_size, scale=(0.5, 1.0), ratio=(0.8, 1.25), antialias=True),
            v2.RandomRotation(15),
            v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4)], p=0.8),
            _channels(in_chans),
        ]
    else:
        steps = [
            v2.ToImage(), v2.ToDtype(torch.float32, scale=True), _channels(in_chans),
            v2.RandomResizedCrop(image_size, scale=(0.08, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
        ]
        if image_size >= 64:
            k = (image_size // 10) | 1  # an odd kernel of ~10 % of the image, as SimCLR
            steps.append(v2.RandomApply([v2.GaussianBlur(k, sigma=(0.1, 2.0))], p=0.5))
    steps += [v2.Normalize(m, s), v2.ToPureTensor()]
    return v2.Compose(steps)


class MultiView:
    """``views`` independent draws of ``transform`` stacked: [views, C, S, S] (SimCLR's positive pairs)."""

    def __init__(self, transform: Callable, views: int) -> None:
        self.transform = transform
        self.views = views

    def __call__(self, img: Any) -> torch.Tensor:
        return torch.stack([self.transform(img) for _ in range(self.views)])
