"""``dse-monitor report RUN_DIR [--out FILE]``: one self-contained HTML page of a monitored run.

Everything comes from the run's TensorBoard event files (and ``save_raw``'s
``spectra.npz`` when present): the settings and the messages the monitor wrote as text
(``<prefix>/settings``, ``<prefix>/messages``), its scalars, its spectrum histograms.
Pictures are PNGs embedded as base64: the page needs no server, no internet, and holds
no external address.

Sections: settings; warnings and info lines; per layer the curves of every metric
against completed epochs beside the validation scalars (``val_*``); the layers x
measurements heat maps; the spectrum over the run (log10 |lambda| by measurement); the
sigma ratio.

Example:
    >>> from dse_monitor import report                   # doctest: +SKIP
    >>> report("runs/digits")                            # doctest: +SKIP
    PosixPath('runs/digits/lightning_logs/version_0/dse_report.html')
"""
from __future__ import annotations

import argparse
import html
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..monitor.tensorboard import parse_messages, parse_settings
from ..registry import METRICS, is_monitor_name, parse_key
from .runs import Run, find_runs, read_run
from .report_figures import heatmap, layer_curves, layers_compared, sigma_ratio, spectrum_picture

__all__ = ["main", "report"]

REPORT_NAME = "dse_report.html"


def report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the HTML report of the run under ``run_dir``; return its path.

    ``run_dir``: a run folder (``.../lightning_logs/version_0``) or a folder above one (the
    trainer's ``default_root_dir``), where the most recently written run is taken.
    ``out``: the HTML file (default: ``dse_report.html`` in the run folder).
    """
    folder = _run_folder(Path(run_dir))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = read_run(folder)
    events = EventAccumulator(str(folder), size_guidance={"histograms": 0, "tensors": 0, "scalars": 0}).Reload()
    prefixes = sorted({k.prefix for k in map(parse_key, run.curves) if k is not None and is_monitor_name(k.name)})
    if not prefixes:
        raise ValueError(f"{folder} holds no DSE monitor scalars (<prefix>/<layer>/dse ...): was DSEMonitor among "
                         "the trainer's callbacks, with a TensorBoard logger?")
    body = [_header(run, folder)]
    for prefix in prefixes:
        body.append(_monitor_sections(run, events, prefix, folder, len(prefixes) > 1))
    path = Path(out) if out is not None else folder / REPORT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_page(f"DSE report: {run.name}", "\n".join(body)), encoding="utf-8")
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``dse-monitor report RUN_DIR [--out FILE]``: write the page, print its path."""
    parser = argparse.ArgumentParser(prog="dse-monitor report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run folder (lightning_logs/version_N) or the trainer's default_root_dir")
    parser.add_argument("--out", default=None, help=f"the HTML file (default: {REPORT_NAME} in the run folder)")
    args = parser.parse_args(argv)
    try:
        path = report(args.run_dir, args.out)
    except (ValueError, FileNotFoundError) as err:
        print(f"dse-monitor report: {err}", file=sys.stderr)
        return 1
    print(f"dse-monitor: report written to {path}")
    return 0


# ----------------------------------------------------------------------------- reading
def _run_folder(run_dir: Path) -> Path:
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a folder; give a run folder such as runs/digits")
    runs = find_runs(run_dir)
    if not runs:
        raise ValueError(f"no TensorBoard event files under {run_dir}; give the folder a run logged to "
                         "(e.g. runs/digits or runs/digits/lightning_logs/version_0)")
    return max(runs, key=lambda p: max(f.stat().st_mtime for f in p.glob("events.out.tfevents.*")))


def _texts(events: Any, tag: str) -> list[tuple[int, str]]:
    from tensorboard.util import tensor_util

    full = f"{tag}/text_summary"
    if full not in events.Tags().get("tensors", []):
        return []
    out = []
    for event in events.Tensors(full):
        value = tensor_util.make_ndarray(event.tensor_proto).reshape(-1)[0]
        out.append((event.step, value.decode("utf-8") if isinstance(value, bytes) else str(value)))
    return out


def _layers_and_metrics(run: Run, prefix: str, settings: dict[str, str]) -> tuple[list[str], list[str]]:
    keys = [k for k in map(parse_key, run.curves) if k is not None and k.prefix == prefix]
    found = list(dict.fromkeys(k.layer for k in keys))
    order = [name.strip() for name in settings.get("layers", "").split(",")]
    layers = [l for l in order if l in found] + [l for l in found if l not in order]
    metrics = [m for m in METRICS if any(k.name == m for k in keys)]
    return layers, metrics


def _epoch_of_step(events: Any, prefix: str) -> dict[int, int]:
    tag = f"{prefix}/epoch"
    if tag not in events.Tags().get("scalars", []):
        return {}
    return {e.step: int(round(e.value)) for e in events.Scalars(tag)}


def _spectra(events: Any, folder: Path, prefix: str, layer: str, epoch_of: dict[int, int]) -> dict[int, tuple]:
    """``{epoch: (values, weights)}`` of log10 |lambda|: the exact spectra of ``save_raw``, else the histograms."""
    raw = folder / f"{prefix}_monitor" / "spectra.npz"
    if raw.is_file():
        with np.load(raw) as saved:
            found = {int(k.rsplit("/step_", 1)[1]): saved[k] for k in saved.files if k.rsplit("/step_", 1)[0] == layer}
        if found:
            floor = 1e-16
            return {e: (np.log10(np.maximum(np.abs(lam), floor)), np.ones(len(lam))) for e, lam in found.items()}
    tag = f"{prefix}/{layer}/spectrum_log10"
    if tag not in events.Tags().get("histograms", []):
        return {}
    out = {}
    for event in events.Histograms(tag):
        h = event.histogram_value
        limits = np.asarray(h.bucket_limit, dtype=float)
        lefts = np.concatenate([[h.min], limits[:-1]])
        centres = (np.clip(lefts, h.min, h.max) + np.clip(limits, h.min, h.max)) / 2
        out[epoch_of.get(event.step, event.step)] = (centres, np.asarray(h.bucket, dtype=float))
    return out


# ----------------------------------------------------------------------------- HTML
def _monitor_sections(run: Run, events: Any, prefix: str, folder: Path, several: bool) -> str:
    settings_texts = _texts(events, f"{prefix}/settings")
    settings = parse_settings(settings_texts[-1][1]) if settings_texts else {}
    layers, metrics = _layers_and_metrics(run, prefix, settings)
    epoch_of = _epoch_of_step(events, prefix)
    messages = [(epoch_of.get(step, step), kind, m) for step, text in _texts(events, f"{prefix}/messages")
                for kind, m in parse_messages(text)]
    label = f" ({html.escape(prefix)})" if several else ""
    out = [f'<h2 id="settings-{prefix}">Settings{label}</h2>', _settings_html(settings, run, prefix, layers)]
    out.append(f'<h2 id="messages-{prefix}">Warnings and info lines{label}</h2>')
    out.append(_messages_html(messages))
    if len(layers) > 1:
        out.append(f'<h2 id="compared-{prefix}">Layers compared{label}</h2>')
        out.append(layers_compared(run, prefix, layers, metrics))
    out.append(f'<h2 id="curves-{prefix}">Curves by layer{label}</h2>')
    for layer in layers:
        out += [f"<h3>{html.escape(layer)}</h3>", layer_curves(run, prefix, layer, metrics)]
    out.append(f'<h2 id="heatmaps-{prefix}">Layers x measurements{label}</h2>')
    out += [p for p in (heatmap(run, prefix, layers, m) for m in metrics) if p]
    out.append(f'<h2 id="spectrum-{prefix}">Spectrum over the run{label}</h2>')
    spectra = {layer: _spectra(events, folder, prefix, layer, epoch_of) for layer in layers}
    pictures = [spectrum_picture(cols, layer) for layer, cols in spectra.items() if cols]
    out += pictures or ['<p class="note">No spectrum logged (log_spectrum=False, or the approximate solver '
                        'ran: the histogram needs the exact path).</p>']
    out.append(f'<h2 id="sigma-{prefix}">Sigma ratio{label}</h2>')
    ratio = sigma_ratio(run, prefix, layers)
    out.append('<p class="note">Median pairwise distance of the features over sigma. Outside the band, DSE '
               'sits near 0 (below) or log2 N (above) whatever the features\' structure.</p>')
    out.append(ratio or '<p class="note">No sigma_ratio logged.</p>')
    return "\n".join(out)


def _settings_html(settings: dict[str, str], run: Run, prefix: str, layers: list[str]) -> str:
    rows = dict(settings)
    for name in ("sigma", "t"):
        frozen = {l: run.curves[f"{prefix}/{l}/{name}"] for l in layers if f"{prefix}/{l}/{name}" in run.curves}
        if frozen:
            rows[f"{name} frozen at"] = ", ".join(f"{l} {next(iter(c.values())):.4g}" for l, c in frozen.items())
    if not rows:
        return '<p class="note">No settings recorded: the run predates the monitor\'s settings text.</p>'
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows.items())
    return f"<table>{cells}</table>"


def _messages_html(messages: list[tuple[int, str, str]]) -> str:
    if not messages:
        return '<p class="note">The monitor said nothing during this run (or the run predates its message log).</p>'
    items = "".join(f'<li class="{html.escape(kind)}"><span class="kind">{html.escape(kind)}</span> '
                    f'<span class="when">epoch {epoch}</span> {html.escape(m)}</li>' for epoch, kind, m in messages)
    return f'<ul class="messages">{items}</ul>'


def _header(run: Run, folder: Path) -> str:
    epochs = sorted({e for c in run.curves.values() for e in c})
    span = f"{epochs[0]} to {epochs[-1]}" if epochs else "none"
    return (f"<h1>DSE report</h1><p>Run <code>{html.escape(str(folder))}</code>; completed epochs {span}. "
            "Values in bits unless said otherwise; epoch 0 is the measurement at initialisation.</p>")


_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ccc; }
img { max-width: 100%; display: block; margin: .6em 0; }
table { border-collapse: collapse; } th, td { text-align: left; padding: .25em .8em; border-bottom: 1px solid #e4e4e4; }
th { font-weight: 600; white-space: nowrap; } code { background: #f2f2f2; padding: 0 .3em; }
.note { color: #555; font-size: .92em; }
ul.messages { list-style: none; padding: 0; } ul.messages li { margin: .4em 0; padding: .4em .7em;
       border-left: 4px solid #9aa; background: #f6f8f8; font-size: .93em; }
ul.messages li.warning { border-color: #d08a00; background: #fff7e6; }
.kind { font-weight: 600; text-transform: uppercase; font-size: .8em; margin-right: .4em; }
.when { color: #666; font-size: .85em; margin-right: .4em; }
nav a { margin-right: 1em; }
"""


def _page(page_title: str, body: str) -> str:
    nav = " ".join(f'<a href="#{a}-{p}">{t}</a>' for a, p, t in _anchors(body))
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(page_title)}"
            f"</title><style>{_STYLE}</style></head>\n<body>\n<nav>{nav}</nav>\n{body}\n</body></html>\n")


def _anchors(body: str) -> list[tuple[str, str, str]]:
    names = {"settings": "Settings", "messages": "Messages", "compared": "Layers compared", "curves": "Curves", "heatmaps": "Heat maps",
             "spectrum": "Spectrum", "sigma": "Sigma ratio"}
    found = []
    for part in body.split('<h2 id="')[1:]:
        anchor = part.split('"', 1)[0]
        kind, _, prefix = anchor.partition("-")
        found.append((kind, prefix, names.get(kind, kind)))
    return found


if __name__ == "__main__":  # python -m dse_monitor.train.report RUN_DIR
    raise SystemExit(main())
