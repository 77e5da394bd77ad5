"""Pooling a captured activation into one vector per sample, [B, D] float32.

Default (``"mean"``):

- 4-D (and higher) feature maps ``[B, C, H, W, ...]``: global average pool over the
  spatial dimensions, ``z_b = mean_{h,w} x_{b,:,h,w}``;
- 3-D token sequences ``[B, T, C]``: mean over the tokens (``"cls"``: the first token);
- 2-D ``[B, D]``: as they are; 1-D ``[B]``: one feature per sample.

``"flatten"`` keeps everything: ``x.reshape(B, -1)``. A callable replaces all of this.
Channels-last maps (e.g. timm Swin stages, ``[B, H, W, C]``) need ``"flatten"`` or a
callable. Tuples and lists (e.g. RNN outputs) are reduced to their first tensor.
"""
from __future__ import annotations

from typing import Any, Callable, Union

import torch

Pooling = Union[str, Callable[[torch.Tensor], torch.Tensor]]
POOLINGS = ("mean", "cls", "flatten")


def _first_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, dict):
        x = list(x.values())
    if isinstance(x, (tuple, list)):
        for item in x:
            if isinstance(item, torch.Tensor):
                return item
    raise TypeError(
        f"the captured activation is a {type(x).__name__} without a tensor; pass pooling=<callable> "
        "that turns it into a [B, D] tensor."
    )


def check_pooling(pooling: Pooling) -> Pooling:
    """Validate a pooling choice early (a string from :data:`POOLINGS` or a callable)."""
    if callable(pooling) or pooling in POOLINGS:
        return pooling
    raise ValueError(f"pooling must be one of {POOLINGS} or a callable, got {pooling!r}")


def pool_features(x: Any, pooling: Pooling = "mean") -> torch.Tensor:
    """One detached float32 row per sample.

    Example:
        >>> maps = torch.arange(8.0).reshape(1, 2, 2, 2)   # [B, C, H, W]
        >>> pool_features(maps)
        tensor([[1.5000, 5.5000]])
        >>> tokens = torch.tensor([[[1.0, 0.0], [3.0, 2.0]]])  # [B, T, C]
        >>> pool_features(tokens), pool_features(tokens, "cls")
        (tensor([[2., 1.]]), tensor([[1., 0.]]))
        >>> pool_features(maps, "flatten").shape
        torch.Size([1, 8])
    """
    if callable(pooling):
        out = _first_tensor(pooling(x))
    else:
        # float32 before averaging: a mean over many bf16/fp16 tokens or pixels loses digits
        t = _first_tensor(x).float()
        if pooling == "flatten" or t.ndim <= 1:
            out = t.reshape(t.shape[0], -1) if t.ndim else t.reshape(1, 1)
        elif t.ndim == 2:
            out = t
        elif t.ndim == 3:
            out = t[:, 0] if pooling == "cls" else t.mean(dim=1)
        elif pooling in POOLINGS:
            out = t.mean(dim=tuple(range(2, t.ndim)))
        else:
            raise ValueError(f"pooling must be one of {POOLINGS} or a callable, got {pooling!r}")
    if out.ndim != 2:
        out = out.reshape(out.shape[0], -1)
    return out.detach().float()
