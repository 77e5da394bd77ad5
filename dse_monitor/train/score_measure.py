"""One model of ``dse-monitor score``: load it, measure it with the monitor's own measurement
(:func:`dse_monitor.measure`, retried on the CPU when the GPU runs out of memory) and turn the
measurement into a row, or an error when the measurement failed."""
from __future__ import annotations

import gc
import math
import time
import warnings
from typing import Any, Sequence

import torch
from torch import nn

from ..monitor import Measurement, MonitorConfig, ReferenceGroups, measure
from ..registry import logged_names
from .score_models import load_model, parse_model
from .score_probe import Probe, ProbeAccuracy
from .score_settings import ScoreSettings

__all__ = ["ScoreFailedWarning", "ScoreWarning", "default_device", "score_one"]


class ScoreWarning(UserWarning):
    """A model was moved to the CPU after running out of GPU memory."""


class ScoreFailedWarning(ScoreWarning):
    """A model could not be scored (it is left out; the others go on)."""


def _is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _measure(model: nn.Module, probe: Probe, config: MonitorConfig, device: torch.device,
             groups: ReferenceGroups | None) -> tuple[Measurement, float | None]:
    """One model on ``device``: the monitor's measurement and the probe accuracy (None when the head does not match)."""
    model.to(device)
    accuracy = ProbeAccuracy(probe.num_classes)
    measurement = measure(model, probe.source, config, indices=probe.indices, groups=groups, on_output=accuracy)
    return measurement, accuracy.value()


def _metric_notes(measurement: Measurement, layer: str, metrics: Sequence[str]) -> dict[str, str]:
    """``{metric: line}``: the note a metric's result gave (why its value is NaN or not logged)."""
    notes = measurement.metric_notes.get(layer, {})
    return {m: f"DSEMonitor: {m} of layer {layer!r}: {notes[m]}." for m in metrics if m in notes}


def _values(measurement: Measurement, settings: ScoreSettings) -> tuple[str, dict[str, float | None], list[str]]:
    """The layer, its value of each column (None: not measurable, e.g. no X for token ids) and the notes.

    A value that is NaN for a reason its metric gave (a note: e.g. alpha-ReQ of a spectrum with zeros in
    its fit range) is kept, the reason among the notes. A metric that failed, features with NaN/Inf
    entries or a NaN without a reason fail the model: no row is better than a wrong one.
    """
    layer = next(iter(measurement.shapes))
    failures = measurement.failures.get(layer)
    if failures:
        raise RuntimeError("; ".join(f"computing {name} failed ({reason})" for name, reason in failures.items()))
    measured = measurement.of_layer(layer)
    values = {name: measured.get(name) for name in settings.columns}
    explained = _metric_notes(measurement, layer, settings.config.metrics)
    config_settings = settings.config.settings()
    reasoned = {name for metric in explained for name in logged_names(metric, config_settings)}
    unexplained = [name for name, v in values.items() if v is not None and math.isnan(v) and name not in reasoned]
    if unexplained:
        if layer not in measurement.sigmas:  # NaN/Inf features: the measurement stopped before the scale
            raise ValueError(f"the {layer} features have NaN/Inf entries (a broken checkpoint?); no score")
        raise ValueError(f"{', '.join(unexplained)} of the {layer} features came out NaN with no reason given; "
                         "no score")
    notes = [n.removeprefix("DSEMonitor: ") for n in (*measurement.notes, *explained.values(), *measurement.fallbacks)]
    return layer, values, notes


def score_one(spec_text: str, module: nn.Module | None, probe: Probe, settings: ScoreSettings,
               device: torch.device, model_class: Any,
               groups: ReferenceGroups | None) -> tuple[dict[str, Any], ReferenceGroups | None]:
    """One row, and the reference groups (labels, input clusters) for the next models."""
    start = time.perf_counter()
    kind = "module" if module is not None else parse_model(spec_text).kind
    model = module if module is not None else load_model(spec_text, model_class)
    home = next(iter(model.parameters()), torch.empty(0)).device  # a given module goes back where it was
    used = device
    try:
        try:
            measurement, acc = _measure(model, probe, settings.config, device, groups)
        except Exception as err:  # noqa: BLE001 - out of memory on the GPU: the CPU has more
            if device.type != "cuda" or not _is_out_of_memory(err):
                raise
            warnings.warn(f"score: {spec_text} ran out of GPU memory ({err}); retrying on the CPU.",
                          ScoreWarning, stacklevel=3)
            torch.cuda.empty_cache()
            used = torch.device("cpu")
            measurement, acc = _measure(model, probe, settings.config, used, groups)
    finally:
        if module is not None:
            module.to(home)
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    layer, values, notes = _values(measurement, settings)
    n, dim = measurement.shapes[layer]
    row: dict[str, Any] = {"model": spec_text, "kind": kind, "accuracy": acc,
                           "accuracy_source": "probe" if acc is not None else "none", **values,
                           "n": n, "dim": dim, "sigma_value": measurement.sigmas.get(layer),
                           "device": used.type, "seconds": round(time.perf_counter() - start, 2),
                           "note": "; ".join(notes)}
    return row, measurement.groups
