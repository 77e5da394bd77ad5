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

Colours: TensorBoard's custom-scalars charts colour a line by its *run* (the frontend
parses the run out of "tag (run)"; the layout proto has no colour field), so the layers of
one run share a colour there; the legend still names each tag. The layers are told apart
by the labelled heat map (Images tab, one row per named layer) and by the "Layers
compared" figure of ``dse-monitor report`` (one colour per layer).
"""
from __future__ import annotations

import math
import weakref
from typing import Any, Sequence

import numpy as np

from ..registry import HEALTH_METRICS, title, unit
from .heatmap import heatmap_figure



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
    """One labelled image per metric: layers (rows, in depth order) x measurements so far (columns).

    Written at every measurement under ``<prefix>/heatmap/<metric>`` (TensorBoard's image
    slider then steps through the run), one layer included; the colour range is the
    image's own min..max, said by its colour bar.
    """
    keys = sorted(state.history)
    by_step = getattr(config, "every_n_train_steps", None) is not None
    for metric in config.metrics:
        table = [[state.history[k].get(config.key(layer, metric), float("nan")) for k in keys] for layer in layers]
        if all(math.isnan(v) for row in table for v in row):
            continue
        image = heatmap_figure(table, layers, keys, title=title(metric), unit=unit(metric) or "",
                               axis="step" if by_step else "epoch")
        writer.add_image(f"{config.prefix}/heatmap/{metric}", image, global_step=step, dataformats="CHW")


def settings_table(config: Any, layers: Sequence[str], state: Any) -> dict[str, str]:
    """The run's monitor settings by name, as ``dse-monitor report`` shows them.

    >>> from dse_monitor.monitor import DSEMonitorCore, MonitorState
    >>> table = settings_table(DSEMonitorCore(sigma="median_init").config, ["penultimate"], MonitorState())
    >>> table["sigma"], table["t"], table["metrics"]
    ('median_init (frozen per layer at its first measurement)', '1', 'dse, dsmi_y, dsmi_x')
    >>> settings_table(DSEMonitorCore(sigma="median_init", kernel="knn").config, ["penultimate"], MonitorState())["sigma"]
    "not used (kernel='knn', k = 15: each sample's bandwidth is its distance to its k-th neighbour)"
    """
    frozen = getattr(state, "frozen", None)

    def policy(name: str, value: Any, frozen_values: dict) -> str:
        if not isinstance(value, str):
            return f"{value:g} (absolute)" if name == "sigma" else f"{value:g}"
        chosen = ", ".join(f"{layer} {v:.4g}" for layer, v in frozen_values.items())
        kind = "recomputed every measurement" if value == "median" else (
            "frozen per layer at its first measurement" if value in ("median_init", "knee") else "per layer")
        return f"{value} ({kind}{': ' + chosen if chosen else ''})"

    n = len(state.indices) if getattr(state, "indices", None) is not None else config.num_samples
    cadence = (f"every {config.every_n_train_steps} optimizer steps" if config.every_n_train_steps is not None
               else f"every {config.every_n_epochs} epoch(s)") + (", and at init" if config.at_init else "")
    return {
        "layers": ", ".join(layers),
        "probe": f"{config.probe_name()}, N = {n} samples (seed {config.seed})",
        "metrics": ", ".join(config.metrics),
        "sigma": policy("sigma", config.sigma, getattr(frozen, "sigma", {}) or {}) if config.kernel == "gaussian"
        else f"not used (kernel={config.kernel!r}, k = {config.k}: each sample's bandwidth is its distance to its "
             "k-th neighbour)",
        "t": policy("t", config.t, getattr(frozen, "t", {}) or {}),
        "solver": f"{config.solver} ({config.dtype or 'float64'})".replace("torch.", ""),
        "schedule": cadence,
        "pooling": config.pooling if isinstance(config.pooling, str) else getattr(config.pooling, "__name__", "custom"),
        "DSMI": f"{config.num_repetitions} repetitions, X resized to {config.x_size}, "
                f"{config.n_clusters or 'as many clusters as classes'}",
    }


def write_settings(writer: Any, config: Any, layers: Sequence[str], state: Any, step: int) -> None:
    """The settings as a markdown table under ``<prefix>/settings`` (TensorBoard's Text tab)."""
    rows = "\n".join(f"| {k} | {v} |" for k, v in settings_table(config, layers, state).items())
    writer.add_text(f"{config.prefix}/settings", f"| setting | value |\n|---|---|\n{rows}", global_step=step)


def parse_settings(text: str) -> dict[str, str]:
    r"""The table :func:`write_settings` wrote, back as a dict.

    >>> parse_settings("| setting | value |\n|---|---|\n| sigma | 10 (absolute) |")
    {'sigma': '10 (absolute)'}
    """
    rows = [line.strip().strip("|").split(" | ", 1) for line in text.splitlines()[2:]]
    return {k.strip(): v.strip() for k, v in (r for r in rows if len(r) == 2)}


def write_messages(writer: Any, prefix: str, messages: Sequence[tuple[str, str]], step: int) -> None:
    """The warnings and info lines said since the last measurement, under ``<prefix>/messages``."""
    if messages:
        text = "\n".join(f"- **{kind}**: {message}".replace("\n", "\n  ") for kind, message in messages)
        writer.add_text(f"{prefix}/messages", text, global_step=step)


def parse_messages(text: str) -> list[tuple[str, str]]:
    r"""The ``(kind, message)`` pairs :func:`write_messages` wrote.

    >>> parse_messages("- **warning**: DSEMonitor: a\n- **info**: DSEMonitor: b")
    [('warning', 'DSEMonitor: a'), ('info', 'DSEMonitor: b')]
    """
    out: list[tuple[str, str]] = []
    for line in text.splitlines():
        kind, sep, message = line[4:].partition("**: ")
        if line.startswith("- **") and sep:
            out.append((kind, message))
        elif out:  # a message of several lines
            out[-1] = (out[-1][0], f"{out[-1][1]}\n{line.strip()}")
    return out
