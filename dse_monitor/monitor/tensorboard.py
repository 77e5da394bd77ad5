"""TensorBoard extras of the monitor: a custom-scalars layout, eigenvalue histograms, layer heat maps.

Works with any writer that has ``add_custom_scalars`` / ``add_histogram``
(``torch.utils.tensorboard.SummaryWriter``, what Lightning's TensorBoardLogger holds
as ``logger.experiment``). The layout groups the curves in one chart per metric,
titled as in the paper::

    DSE monitor
      DSE(Z)       dse/<layer>/dse        (one line per layer)
      DSMI(Z;Y)    dse/<layer>/dsmi_y
      DSMI(Z;X)    dse/<layer>/dsmi_x
    Health (the representation-health metrics, when chosen)
      RankMe(Z)    dse/<layer>/rankme$
      ...
"""
from __future__ import annotations

import math
import weakref
from typing import Any, Sequence

import numpy as np

from ..registry import HEALTH_METRICS, title
from .heatmap import heatmap_image



def scalar_layout(prefix: str, layers: Sequence[str], metrics: Sequence[str]) -> dict[str, dict[str, list[Any]]]:
    """The layout dict of ``SummaryWriter.add_custom_scalars``: one multiline chart per metric.

    >>> scalar_layout("dse", ["penultimate"], ["dse", "dsmi_y"])
    {'DSE monitor (dse)': {'DSE(Z)': ['Multiline', ['dse/penultimate/dse']], 'DSMI(Z;Y)': ['Multiline', ['dse/penultimate/dsmi_y']]}}

    The health metrics get their own section, ``Health (<prefix>)``, with anchored tag
    patterns (TensorBoard matches a chart's tags as regular expressions from the start):

    >>> scalar_layout("dse", ["penultimate"], ["dse", "rankme"])["Health (dse)"]
    {'RankMe(Z)': ['Multiline', ['dse/penultimate/rankme$']]}
    """
    charts = {title(m): ["Multiline", [f"{prefix}/{layer}/{m}" for layer in layers]]
              for m in metrics if m not in HEALTH_METRICS}
    layout = {f"DSE monitor ({prefix})": charts} if charts else {}
    health = {title(name): ["Multiline", [f"{prefix}/{layer}/{pattern}$" for layer in layers]]
              for m in metrics if m in HEALTH_METRICS for name, pattern in _HEALTH_CHARTS.get(m, ((m, m),))}
    if health:
        layout[f"Health ({prefix})"] = health
    return layout


#: Health metrics charted under other names than their own: (title's name, tag pattern).
_HEALTH_CHARTS = {
    "alpha_req": (("alpha_req", "alpha_req"), ("alpha_req_r2", "alpha_req_r2")),
    "dse_t": (("dse_t", r"dse_t[0-9.e+-]+"),),  # one chart, a line per t and layer
}


_LAYOUTS: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def write_layout(writer: Any, prefix: str, layers: Sequence[str], metrics: Sequence[str]) -> None:
    """Write the custom-scalars layout (once per run is enough).

    TensorBoard shows only the last layout of a run, so the categories of several
    monitors sharing one writer are merged and written together.
    """
    try:
        merged = _LAYOUTS.setdefault(writer, {})
    except TypeError:  # a writer that cannot be weakly referenced
        merged = {}
    merged.update(scalar_layout(prefix, layers, metrics))
    writer.add_custom_scalars(dict(merged))


def write_spectrum(writer: Any, tag: str, eigenvalues: Any, step: int) -> None:
    """The eigenvalue spectrum of the diffusion operator as a histogram at ``step``."""
    values = np.asarray(eigenvalues, dtype=np.float64)
    writer.add_histogram(tag, values, global_step=step)
    flush = getattr(writer, "flush", None)
    if callable(flush):
        flush()


def write_heatmaps(writer: Any, config: Any, layers: Sequence[str], state: Any, step: int) -> None:
    """One image per metric: layers (rows, in depth order) x measurements so far (columns).

    Written at every measurement under ``<prefix>/heatmap/<metric>`` (TensorBoard's image
    slider then steps through the run); the colour range is the image's own min..max.
    """
    keys = sorted(state.history)
    for metric in config.metrics:
        table = [[state.history[k].get(config.key(layer, metric), float("nan")) for k in keys] for layer in layers]
        if all(math.isnan(v) for row in table for v in row):
            continue
        image = heatmap_image(table)
        writer.add_image(f"{config.prefix}/heatmap/{metric}", image, global_step=step, dataformats="CHW")
