"""The pictures of ``dse-monitor report``: each a PNG embedded as a base64 ``<img>`` (no external address).

Curves by layer, the layers compared (one colour per layer), the layers x measurements
heat map (the monitor's own renderer, as in TensorBoard's Images tab), the spectrum over
the run (the share of eigenvalues by log10 |lambda|, one column per measurement) and the
sigma ratio with the band where sigma is on the features' scale.
"""
from __future__ import annotations

import base64
import html
import io
from typing import Any, Optional

import numpy as np

from ..functional.scale import HIGH_RATIO, LOW_RATIO
from ..monitor.heatmap import heatmap_figure
from ..registry import title, unit
from .plots import pyplot
from .runs import Run

__all__ = ["heatmap", "layer_curves", "layers_compared", "sigma_ratio", "spectrum_picture"]

def _png_of_figure(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    pyplot().close(fig)
    return _img(buffer.getvalue())


def _img(png: bytes, alt: str = "") -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def layer_curves(run: Run, prefix: str, layer: str, metrics: list[str]) -> str:
    plt = pyplot()
    panels = [(f"{prefix}/{layer}/{m}", f"{title(m)} ({unit(m)})") for m in metrics]
    panels += [(tag, tag) for tag in sorted(run.curves) if tag.startswith("val_")]
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.5 * rows), squeeze=False, sharex=True)
    for ax, (tag, name) in zip(axes.flat, panels):
        curve = run.curves.get(tag, {})
        ax.plot(list(curve), list(curve.values()), marker="o", ms=3, color="C1" if tag.startswith("val_") else "C0")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("completed epochs", fontsize=8)
        ax.xaxis.set_tick_params(labelbottom=True)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return _png_of_figure(fig)


def layers_compared(run: Run, prefix: str, layers: list[str], metrics: list[str]) -> str:
    """One panel per metric, one colour per layer (TensorBoard's custom scalars colour by run only)."""
    plt = pyplot()
    cols = min(3, len(metrics))
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 2.9 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for i, layer in enumerate(layers):
            curve = run.curves.get(f"{prefix}/{layer}/{metric}", {})
            ax.plot(list(curve), list(curve.values()), marker="o", ms=3, color=f"C{i % 10}", label=layer,
                    linestyle="-" if i < 10 else "--")
        ax.set_title(f"{title(metric)} ({unit(metric)})", fontsize=10)
        ax.set_xlabel("completed epochs", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper center", ncol=min(6, len(layers)), fontsize=8, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (2.9 * rows) * (1 + len(layers) // 6)))
    return _png_of_figure(fig)


def heatmap(run: Run, prefix: str, layers: list[str], metric: str) -> Optional[str]:
    from PIL import Image

    curves = [run.curves.get(f"{prefix}/{layer}/{metric}", {}) for layer in layers]
    epochs = sorted({e for c in curves for e in c})
    if not epochs:
        return None
    table = [[c.get(e, float("nan")) for e in epochs] for c in curves]
    image = heatmap_figure(table, layers, epochs, title=title(metric), unit=unit(metric), axis="epoch", width=720)
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return _img(buffer.getvalue(), f"{metric} heat map")


def spectrum_picture(columns: dict[int, tuple], layer: str) -> str:
    plt = pyplot()
    epochs = sorted(columns)
    lo = min(float(np.min(v)) for v, _ in columns.values())
    hi = max(float(np.max(v)) for v, _ in columns.values())
    n = max(float(np.sum(w)) for _, w in columns.values())  # eigenvalues per measurement
    bins = np.linspace(lo, hi + 1e-9, int(np.clip(n / 4, 16, 60)) + 1)
    grid = np.stack([np.histogram(columns[e][0], bins=bins, weights=columns[e][1])[0] for e in epochs], axis=1)
    grid = np.ma.masked_equal(grid / np.maximum(grid.sum(axis=0, keepdims=True), 1e-12), 0)  # empty: white
    from matplotlib.colors import PowerNorm

    fig, ax = plt.subplots(figsize=(8, 3.2))
    shown = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis", interpolation="nearest",
                      norm=PowerNorm(0.5, vmin=0, vmax=float(grid.max())),  # small fractions stay visible
                      extent=(-0.5, len(epochs) - 0.5, bins[0], bins[-1]))
    ax.set_xticks(range(len(epochs)), [str(e) for e in epochs], fontsize=8)
    ax.set_xlabel("completed epochs")
    ax.set_ylabel("log10 |lambda|")
    ax.set_title(f"{layer}: eigenvalues of the diffusion operator by measurement", fontsize=10)
    fig.colorbar(shown, ax=ax, label="fraction of eigenvalues")
    fig.tight_layout()
    return _png_of_figure(fig)


def sigma_ratio(run: Run, prefix: str, layers: list[str]) -> Optional[str]:
    curves = {l: run.curves[f"{prefix}/{l}/sigma_ratio"] for l in layers if f"{prefix}/{l}/sigma_ratio" in run.curves}
    if not curves:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.axhspan(LOW_RATIO, HIGH_RATIO, color="green", alpha=0.12, label=f"sigma on the features' scale "
               f"({LOW_RATIO:.2g} to {HIGH_RATIO:g})")
    for i, (layer, curve) in enumerate(curves.items()):
        positive = {e: v for e, v in curve.items() if v > 0}
        ax.plot(list(positive), list(positive.values()), marker="o", ms=3, label=layer, color=f"C{i % 10}")
    ax.set_yscale("log")
    ax.set_xlabel("completed epochs")
    ax.set_ylabel("median distance / sigma")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png_of_figure(fig)
