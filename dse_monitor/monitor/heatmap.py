"""A labelled heat map of one metric over layers and measurements, drawn without matplotlib.

The callback's own install has no plotting library, but TensorBoard brings Pillow: the
figure is drawn with it (``PIL.ImageDraw``, Pillow's bundled font) and returned as an RGB
uint8 tensor ``[3, H, W]`` for ``SummaryWriter.add_image`` (``dataformats="CHW"``).

Layout: a title ("DSE(Z) in bits, layers x epochs"), one row per layer named on the
left, one column per measurement labelled below, the value written in each cell when
it fits, and a colour bar with the scale on the right. Colours follow viridis (dark
purple = smallest value, yellow = largest), linearly interpolated between five anchors,
over the min..max of the finite values; a missing value (NaN) is a grey cell. The
figure is at least :data:`MIN_WIDTH` pixels wide, one layer included.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
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
#: TensorBoard shows an image scaled to its card; below this width labels would shrink unreadably.
MIN_WIDTH = 560
_TEXT, _BACKGROUND = (30, 30, 30), (255, 255, 255)


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


def scale_values(values: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """``(v - lo) / (hi - lo)`` over the finite values (all equal: 0.5; NaN stays NaN), with lo and hi.

    >>> scale_values(torch.tensor([[1.0, 3.0, float("nan")]]))
    (tensor([[0., 1., nan]], dtype=torch.float64), 1.0, 3.0)
    """
    v = values.to(torch.float64)
    finite = v[torch.isfinite(v)]
    if finite.numel() == 0:
        return torch.full_like(v, float("nan")), math.nan, math.nan
    lo, hi = float(finite.min()), float(finite.max())
    scaled = (v - lo) / (hi - lo) if hi > lo else torch.full_like(v, 0.5)
    scaled[~torch.isfinite(v)] = float("nan")
    return scaled, lo, hi


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:  # Pillow >= 10.1 with FreeType: its bundled scalable font
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # older Pillow: the fixed bitmap font
        return ImageFont.load_default()


def _fit(draw: Any, text: str, font: Any, width: float) -> str:
    """``text``, cut from the left with an ellipsis to fit ``width`` (a layer's last parts say most)."""
    if draw.textlength(text, font=font) <= width:
        return text
    while len(text) > 1 and draw.textlength("…" + text, font=font) > width:
        text = text[1:]
    return "…" + text


def _ticks(count: int, room: float, label_width: float) -> list[int]:
    """Column indices to label: every k-th (k in 1, 2, 5, 10, 20, ...), the last one included when it fits."""
    steps = (k * 10 ** e for e in range(12) for k in (1, 2, 5))
    step = next(s for s in steps if room / math.ceil(count / s) >= label_width or s >= count)
    ticks = list(range(0, count, step))
    if ticks[-1] != count - 1 and (count - 1 - ticks[-1]) * room / count >= label_width:
        ticks.append(count - 1)
    return ticks


def _text(draw: Any, xy: tuple[float, float], text: str, fill: Any = _TEXT, font: Any = None,
          anchor: str = "la") -> None:
    """``draw.text`` with the anchor applied here from the text's box, so that Pillow's fixed bitmap
    font (which ignores anchors) places labels like the scalable one: ``anchor`` = horizontal
    l/m/r + vertical a (top) / m / d (bottom)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    dx = {"l": 0, "m": (right - left) / 2, "r": right - left}[anchor[0]] + left
    dy = {"a": 0, "t": 0, "m": (bottom - top) / 2, "d": bottom - top}[anchor[1]] + top
    draw.text((xy[0] - dx, xy[1] - dy), text, fill=fill, font=font)


def _number(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def heatmap_figure(
    values: torch.Tensor | Sequence[Sequence[float]],
    layers: Sequence[str],
    columns: Sequence[Any],
    *,
    title: str = "DSE(Z)",
    unit: str = "bits",
    axis: str = "epoch",
    width: int = MIN_WIDTH,
) -> torch.Tensor:
    """The labelled heat map of ``values`` ``[layers, measurements]``: an RGB uint8 image ``[3, H, W]``.

    ``layers`` names the rows (top to bottom), ``columns`` the measurements (e.g. the
    epochs), ``axis`` says what the columns count; the colour bar spans the finite values'
    min..max in ``unit``. The width is ``max(width, MIN_WIDTH)``, wider when there are more
    measurements than 2 pixels each allow.

    Example:
        >>> image = heatmap_figure([[0.5, 1.0, 2.0]], ["penultimate"], [0, 1, 2])
        >>> image.dtype, image.shape[0], image.shape[2] >= MIN_WIDTH
        (torch.uint8, 3, True)
    """
    from PIL import Image, ImageDraw

    v = torch.as_tensor(values, dtype=torch.float64)
    if v.ndim != 2 or v.shape[0] == 0 or v.shape[1] == 0:
        raise ValueError(f"values must be a non-empty 2-D [layers, measurements] table, got shape {list(v.shape)}")
    n_rows, n_cols = v.shape
    if len(layers) != n_rows or len(columns) != n_cols:
        raise ValueError(f"values are {n_rows} layers x {n_cols} measurements, but got {len(layers)} layer names "
                         f"and {len(columns)} column labels")
    scaled, lo, hi = scale_values(v)
    colours = colorize(scaled).permute(1, 2, 0).numpy()  # [L, M, 3]
    font, small = _font(13), _font(11)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = min(200.0, max(probe.textlength(str(name), font=font) for name in layers)) + 10
    bar_w = 24 + (max(probe.textlength(_number(x), font=small) for x in (lo, hi)) if math.isfinite(lo) else 16)
    total_w = max(int(width), MIN_WIDTH, int(label_w + bar_w + 40 + 2 * n_cols))
    left, right = int(label_w) + 8, int(bar_w) + 24
    grid_w = total_w - left - right
    row_h = max(16, min(56, 240 // n_rows))
    top, grid_h = 34, n_rows * row_h
    bottom = 42
    image = Image.new("RGB", (total_w, top + grid_h + bottom), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    missing = "   (grey: not measured)" if bool(torch.isnan(v).any()) else ""
    _text(draw, (8, 8), f"{title} in {unit}: layers x {axis}s{missing}", fill=_TEXT, font=font)
    xs = [left + round(j * grid_w / n_cols) for j in range(n_cols + 1)]
    cell_w = grid_w / n_cols
    for i, name in enumerate(layers):
        y0 = top + i * row_h
        _text(draw, (left - 8, y0 + row_h / 2), _fit(draw, str(name), font, label_w - 10), fill=_TEXT, font=font,
                  anchor="rm")
        for j in range(n_cols):
            rgb = tuple(int(c) for c in colours[i, j])
            draw.rectangle([xs[j], y0, xs[j + 1] - 1, y0 + row_h - 1], fill=rgb)
            value = float(v[i, j])
            text = _number(value) if math.isfinite(value) else ""
            if text and cell_w >= probe.textlength(text, font=small) + 6 and row_h >= 16:
                dark = float(scaled[i, j]) < 0.6  # viridis is dark below ~0.6: write in white there
                _text(draw, ((xs[j] + xs[j + 1]) / 2, y0 + row_h / 2), text, font=small, anchor="mm",
                          fill=(255, 255, 255) if dark else (0, 0, 0))
    draw.rectangle([left - 1, top - 1, left + grid_w, top + grid_h], outline=_TEXT)
    labels = [str(c) for c in columns]
    widest = max(probe.textlength(t, font=small) for t in labels) + 8
    for j in _ticks(n_cols, grid_w, widest):
        x = (xs[j] + xs[j + 1]) / 2
        draw.line([x, top + grid_h, x, top + grid_h + 3], fill=_TEXT)
        _text(draw, (x, top + grid_h + 5), labels[j], fill=_TEXT, font=small, anchor="mt")
    _text(draw, (left + grid_w / 2, top + grid_h + 22), axis, fill=_TEXT, font=font, anchor="mt")
    _colour_bar(draw, total_w - right + 14, top, grid_h, lo, hi, unit, small)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()


def _colour_bar(draw: Any, x: int, top: int, height: int, lo: float, hi: float, unit: str, font: Any) -> None:
    """A vertical viridis gradient (largest at the top) labelled with lo and hi in ``unit``."""
    if not math.isfinite(lo):
        return
    steps = torch.linspace(1, 0, height, dtype=torch.float64) if hi > lo else torch.full((height,), 0.5)
    for k, rgb in enumerate(colorize(steps).T.tolist()):
        draw.line([x, top + k, x + 13, top + k], fill=tuple(rgb))
    draw.rectangle([x, top, x + 13, top + height - 1], outline=_TEXT)
    _text(draw, (x + 18, top), _number(hi), fill=_TEXT, font=font, anchor="la")
    if hi > lo:
        _text(draw, (x + 18, top + height), _number(lo), fill=_TEXT, font=font, anchor="ld")
    if len(unit) <= 6:  # a long unit ("fraction of log2 N") is in the title only
        _text(draw, (x + 7, top - 4), unit, fill=_TEXT, font=font, anchor="md")
