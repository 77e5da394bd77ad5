"""A heat-map image of one metric over several layers: rows are layers, columns measurements.

Pure torch, for ``SummaryWriter.add_image(tag, image)`` (``dataformats="CHW"``, the
default). Colours follow viridis (dark purple = smallest value, yellow = largest),
linearly interpolated between five anchors; the scale is the min..max of the finite
values of the image (say them in the image's description); missing values (NaN) are grey.
"""
from __future__ import annotations

from typing import Sequence

import torch

#: viridis at 0, 1/4, 1/2, 3/4, 1 (RGB in [0, 1]).
VIRIDIS = torch.tensor(
    [
        [0.267, 0.005, 0.329],
        [0.230, 0.322, 0.546],
        [0.128, 0.567, 0.551],
        [0.369, 0.789, 0.383],
        [0.993, 0.906, 0.144],
    ]
)
MISSING_RGB = (128, 128, 128)


def colorize(scaled: torch.Tensor) -> torch.Tensor:
    """RGB uint8 ``[3, *shape]`` of values in [0, 1] (NaN: grey), by piecewise-linear viridis.

    >>> colorize(torch.tensor([0.0, 1.0, float("nan")])).T.tolist()
    [[68, 1, 84], [253, 231, 37], [128, 128, 128]]
    """
    s = scaled.float().clamp(0, 1)
    pos = torch.nan_to_num(s, nan=0.0) * (len(VIRIDIS) - 1)
    lo = pos.floor().long().clamp(max=len(VIRIDIS) - 2)
    frac = (pos - lo)[..., None]
    rgb = VIRIDIS[lo] * (1 - frac) + VIRIDIS[lo + 1] * frac  # [*shape, 3]
    out = (rgb * 255).round().to(torch.uint8)
    out[torch.isnan(s)] = torch.tensor(MISSING_RGB, dtype=torch.uint8)
    return out.movedim(-1, 0)


def heatmap_image(
    values: torch.Tensor | Sequence[Sequence[float]], cell_height: int = 16, max_width: int = 640
) -> torch.Tensor:
    """The heat map of ``values`` ``[layers, measurements]`` as an RGB uint8 image ``[3, H, W]``.

    Each value becomes a ``cell_height`` x ``w`` block, ``w = clamp(max_width // M, 2, 16)``
    pixels for M measurements; the colour is viridis of ``(v - min) / (max - min)`` over the
    finite values (all equal: the middle colour).

    Example:
        >>> image = heatmap_image([[0.0, 1.0], [2.0, float("nan")]], cell_height=2)
        >>> image.shape, image.dtype
        (torch.Size([3, 4, 32]), torch.uint8)
        >>> image[:, 0, 0].tolist(), image[:, 2, 0].tolist(), image[:, 2, 16].tolist()
        ([68, 1, 84], [253, 231, 37], [128, 128, 128])
    """
    v = torch.as_tensor(values, dtype=torch.float64)
    if v.ndim != 2 or v.shape[0] == 0 or v.shape[1] == 0:
        raise ValueError(f"values must be a non-empty 2-D [layers, measurements] table, got shape {list(v.shape)}")
    if isinstance(cell_height, bool) or not isinstance(cell_height, int) or cell_height < 1:
        raise ValueError(f"cell_height must be a positive integer, got {cell_height!r}")
    finite = v[torch.isfinite(v)]
    if finite.numel() == 0:
        scaled = torch.full_like(v, float("nan"))
    else:
        lo, hi = finite.min(), finite.max()
        scaled = (v - lo) / (hi - lo) if hi > lo else torch.full_like(v, 0.5)
        scaled[~torch.isfinite(v)] = float("nan")
    cell_width = max(2, min(16, max_width // v.shape[1]))
    image = colorize(scaled)  # [3, L, M]
    return image.repeat_interleave(cell_height, dim=1).repeat_interleave(cell_width, dim=2).contiguous()
