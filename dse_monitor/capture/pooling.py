"""Pooling a captured activation into one vector per sample, [B, D] float32.

Default (``"mean"``):

- 4-D (and higher) feature maps ``[B, C, H, W, ...]``: global average pool over the
  spatial dimensions, ``z_b = mean_{h,w} x_{b,:,h,w}``;
- 3-D token sequences ``[B, T, C]``: mean over the tokens; with an ``attention_mask``
  ``m`` ``[B, T]`` (1 = real token, 0 = padding) over the real tokens only,
  ``z_b = sum_t m_bt x_bt / sum_t m_bt``;
- 2-D ``[B, D]``: as they are; 1-D ``[B]``: one feature per sample.

For token sequences, ``"cls"`` takes the first real token and ``"last_token"`` the last
real token (decoder models); both handle left and right padding. With a mask, padding
never changes a value: a sample padded to 16 or to 64 tokens gives the same row.
``"flatten"`` keeps everything: ``x.reshape(B, -1)`` (not for padded sequences, whose
width would depend on the padding). A callable replaces all of this; it receives the
mask as ``attention_mask=`` when its signature names that argument.
Channels-last maps (e.g. timm Swin stages, ``[B, H, W, C]``) need ``"flatten"`` or a
callable. Tuples and lists (e.g. RNN outputs, HF layer outputs) are reduced to their
first tensor.
"""
from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any, Callable, Union

import torch

Pooling = Union[str, Callable[..., torch.Tensor]]
POOLINGS = ("mean", "cls", "last_token", "flatten")
TOKEN_POOLINGS = ("cls", "last_token")


def first_tensor(x: Any) -> torch.Tensor:
    """``x`` if it is a tensor, else the first tensor of a tuple, list, dict or HF ``ModelOutput``."""
    if isinstance(x, torch.Tensor):
        return x
    if hasattr(x, "to_tuple") and callable(x.to_tuple):  # HF ModelOutput
        x = x.to_tuple()
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


def _names_mask(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return "attention_mask" in params


_names_mask_cached = lru_cache(maxsize=64)(_names_mask)


def _takes_mask(fn: Callable) -> bool:
    try:
        return _names_mask_cached(fn)
    except TypeError:  # an unhashable callable object
        return _names_mask(fn)


def check_mask(attention_mask: torch.Tensor, batch: int, tokens: int) -> torch.Tensor:
    """The mask as a bool ``[B, T]`` tensor, after checking its shape and values.

    >>> check_mask(torch.tensor([[1, 1, 0]]), 1, 3)
    tensor([[ True,  True, False]])
    """
    m = attention_mask
    if not isinstance(m, torch.Tensor) or m.ndim != 2 or tuple(m.shape) != (batch, tokens):
        shape = list(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
        raise ValueError(
            f"attention_mask must be [B, T] = [{batch}, {tokens}] (1 = real token, 0 = padding) to pool "
            f"a token sequence [B, T, C] with B={batch}, T={tokens}; got {shape}. A layer whose "
            "sequence length differs from the inputs' needs pooling=<callable>."
        )
    if m.dtype != torch.bool:
        if not bool(((m == 0) | (m == 1)).all()):
            raise ValueError(
                "attention_mask must hold 0 (padding) and 1 (real token) only; got other values "
                "(an additive mask of 0 / -inf?). Pass the tokenizer's 0/1 mask."
            )
        m = m != 0
    if not bool(m.any(dim=1).all()):
        raise ValueError("attention_mask has a sample without any real token (a row of zeros)")
    return m


def pool_features(x: Any, pooling: Pooling = "mean", attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """One detached float32 row per sample.

    Args:
        x: the activation: a tensor, or a tuple/list/dict whose first tensor is used.
        pooling: ``"mean"``, ``"cls"``, ``"last_token"``, ``"flatten"`` or a callable.
        attention_mask: optional ``[B, T]`` 0/1 mask of real tokens for ``[B, T, C]``
            activations; ignored for vectors ``[B, D]`` and feature maps.

    Example:
        >>> maps = torch.arange(8.0).reshape(1, 2, 2, 2)   # [B, C, H, W]
        >>> pool_features(maps)
        tensor([[1.5000, 5.5000]])
        >>> tokens = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [9.0, 9.0]]])  # [B, T, C]
        >>> pool_features(tokens), pool_features(tokens, "cls")
        (tensor([[4.3333, 3.6667]]), tensor([[1., 0.]]))
        >>> mask = torch.tensor([[1, 1, 0]])                # the third token is padding
        >>> pool_features(tokens, "mean", mask), pool_features(tokens, "last_token", mask)
        (tensor([[2., 1.]]), tensor([[3., 2.]]))
        >>> pool_features(maps, "flatten").shape
        torch.Size([1, 8])
    """
    if callable(pooling):
        if attention_mask is not None and _takes_mask(pooling):
            out = first_tensor(pooling(x, attention_mask=attention_mask))
        else:
            out = first_tensor(pooling(x))
    elif pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS} or a callable, got {pooling!r}")
    else:
        # float32 before averaging: a mean over many bf16/fp16 tokens or pixels loses digits
        t = first_tensor(x).float()
        if t.ndim == 3:
            out = _pool_tokens(t, pooling, attention_mask)
        elif pooling in TOKEN_POOLINGS and t.ndim > 3:
            raise ValueError(
                f"pooling={pooling!r} needs token sequences [B, T, C]; the activation is a "
                f"{t.ndim}-D map {list(t.shape)}. Use pooling='mean' or 'flatten' for feature maps."
            )
        elif pooling == "flatten" or t.ndim <= 1:
            out = t.reshape(t.shape[0], -1) if t.ndim else t.reshape(1, 1)
        elif t.ndim == 2:
            out = t
        else:
            out = t.mean(dim=tuple(range(2, t.ndim)))
    if out.ndim != 2:
        out = out.reshape(out.shape[0], -1)
    return out.detach().float()


def _pool_tokens(t: torch.Tensor, pooling: str, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """``[B, T, C] -> [B, C]`` by ``pooling``, over the real tokens when a mask is given."""
    if attention_mask is None:
        if pooling == "flatten":
            return t.reshape(t.shape[0], -1)
        return {"mean": lambda: t.mean(dim=1), "cls": lambda: t[:, 0], "last_token": lambda: t[:, -1]}[pooling]()
    if pooling == "flatten":
        raise ValueError(
            "pooling='flatten' of a padded token sequence [B, T, C] would depend on the padding length; "
            "use 'mean', 'cls' or 'last_token' (they read the real tokens only)."
        )
    m = check_mask(attention_mask.to(t.device), t.shape[0], t.shape[1])
    if pooling == "mean":
        # where(), not a product: padded positions may hold inf or nan (0 * nan = nan)
        summed = torch.where(m[..., None], t, torch.zeros((), dtype=t.dtype, device=t.device)).sum(dim=1)
        return summed / m.sum(dim=1, keepdim=True).to(t.dtype)
    positions = torch.arange(t.shape[1], device=t.device).expand_as(m)
    if pooling == "cls":  # the first real token: smallest position where the mask is set
        index = torch.where(m, positions, t.shape[1]).amin(dim=1)
    else:  # the last real token: largest position where the mask is set
        index = torch.where(m, positions, -1).amax(dim=1)
    return t[torch.arange(t.shape[0], device=t.device), index]
