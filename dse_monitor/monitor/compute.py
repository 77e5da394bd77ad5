"""The pure compute step: gathered features and reference groups in, a :class:`Measurement` out.

No Trainer, no logger, no warning is issued here: whatever went wrong is recorded in
the Measurement (``failures``, ``notes``) and the hook class reports it on rank zero.
Each metric is computed by its :mod:`~dse_monitor.registry` entry; the solver choice
and the out-of-memory fallback are the functional core's.

Example:
    >>> cfg = MonitorConfig(metrics=["dse", "dsmi_y"], sigma=1.0)
    >>> z = torch.cat([torch.zeros(10, 2), torch.full((10, 2), 50.0)])
    >>> groups = make_groups(cfg, ReferenceGroups(), labels=torch.arange(20) // 10, inputs=None)
    >>> m = compute_measurement(cfg, {"penultimate": z}, groups, step=3)
    >>> round(m.values["dse/penultimate/dse"], 3), round(m.values["dse/penultimate/dsmi_y"], 3)
    (1.0, 1.0)
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np
import torch

from ..capture.layer_sets import identical_layers
from ..functional import RowGroup, reference_groups, scale_diagnosis, scale_warning
from ..registry import METRICS, MetricResult, MetricSettings, logged_names, parse_key
from .config import FALLBACK_CLUSTERS, MonitorConfig
from .policies import Frozen, layer_scale


@dataclass
class ReferenceGroups:
    """Group ids of the probe samples for DSMI(Z;Y) (``labels``) and DSMI(Z;X) (``inputs``).

    Computed once per run (the input clustering is the expensive part) and stored in the
    checkpoint; a grouping that failed is not retried, and its metrics are not logged.
    """

    labels: Optional[torch.Tensor] = None
    inputs: Optional[torch.Tensor] = None
    labels_failed: bool = False
    inputs_failed: bool = False
    notes: list[str] = field(default_factory=list)

    def of(self, reference: Optional[str]) -> Optional[torch.Tensor]:
        return {"labels": self.labels, "inputs": self.inputs}.get(reference)

    def still_needed(self, config: MonitorConfig) -> tuple[bool, bool]:
        """(labels, inputs) that the next probe pass must still collect."""
        refs = config.references()
        want_inputs = "inputs" in refs and self.inputs is None and not self.inputs_failed
        # labels: for DSMI(Z;Y), or to count the classes (the default n_clusters of X)
        want_labels = self.labels is None and (
            ("labels" in refs and not self.labels_failed) or (want_inputs and config.n_clusters is None)
        )
        return want_labels, want_inputs


def make_groups(
    config: MonitorConfig,
    known: ReferenceGroups,
    labels: Optional[torch.Tensor],
    inputs: Optional[torch.Tensor],
    why_no_inputs: Optional[str] = None,
) -> ReferenceGroups:
    """Complete ``known`` with the groups that the collected labels and inputs allow.

    ``why_no_inputs``: the batches had no X to cluster (e.g. token ids): DSMI(Z;X) is
    then given up once, with that reason, never computed on something meaningless.
    """
    out = ReferenceGroups(known.labels, known.inputs, known.labels_failed, known.inputs_failed)
    refs = config.references()
    if why_no_inputs is not None and "inputs" in refs and out.inputs is None and not out.inputs_failed:
        out.inputs_failed = True
        out.notes.append(f"DSEMonitor: {why_no_inputs}; DSMI(Z;X) and CSMI(Z;X) will not be logged.")
    if out.labels is None and labels is not None and "labels" in refs and not out.labels_failed:
        try:
            out.labels = reference_groups(labels.cpu(), n_clusters=config.n_clusters or FALLBACK_CLUSTERS).cpu()
        except Exception as err:  # e.g. NaN labels: the other metrics still go on
            out.labels_failed = True
            out.notes.append(f"DSEMonitor: grouping the probe labels for DSMI(Z;Y) failed ({err}); "
                             "DSMI(Z;Y) and CSMI(Z;Y) will not be logged.")
    if out.inputs is None and inputs is not None:
        if config.n_clusters is not None:
            k = config.n_clusters
        elif out.labels is not None or labels is not None:
            k = int(torch.unique(out.labels if out.labels is not None else labels.cpu(), dim=0).shape[0])
        else:
            k = FALLBACK_CLUSTERS
        try:
            out.inputs = reference_groups(inputs.cpu(), n_clusters=k, seed=config.seed).cpu()
        except Exception as err:  # e.g. fewer samples than clusters
            out.inputs_failed = True
            out.notes.append(f"DSEMonitor: clustering the probe inputs for DSMI(Z;X) failed ({err}); "
                             "DSMI(Z;X) and CSMI(Z;X) will not be logged.")
    return out


@dataclass
class Measurement:
    """Everything one measurement produced.

    ``values``: ``{"<prefix>/<layer>/<metric>": bits}`` (NaN for a layer with NaN/Inf
    features); ``spectra``: the DSE eigenvalues per layer (exact path); ``failures``:
    ``{layer: {metric: reason}}`` of metrics skipped alone; ``fallbacks``: why a solver
    was left (memory); ``notes``: warnings for the user; ``info``: choices made (frozen
    sigma / t); ``verdicts``: layers whose DSE is pinned by the scale.
    """

    step: int
    values: dict[str, float] = field(default_factory=dict)
    spectra: dict[str, np.ndarray] = field(default_factory=dict)
    failures: dict[str, dict[str, str]] = field(default_factory=dict)
    fallbacks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)
    #: ``{layer: (direction, warning)}`` where DSE sits at 0 or log2 N because of sigma's scale.
    verdicts: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: ``{duplicate: original}``: layers with identical pooled features, measured once (the original's values).
    aliases: dict[str, str] = field(default_factory=dict)
    duration_s: float = 0.0
    #: ``{layer: (N, D)}``: the shape of each layer's features.
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: ``{layer: sigma}``: the numeric bandwidth each layer was measured with.
    sigmas: dict[str, float] = field(default_factory=dict)
    #: The reference groups the measurement used (pass them on: later measurements reuse them).
    groups: Optional[ReferenceGroups] = None

    def of_layer(self, layer: str) -> dict[str, float]:
        """``{name: value}`` of one layer (metrics and diagnostics), read from the logged keys."""
        keys = {k: parse_key(k) for k in self.values}
        return {key.name: self.values[k] for k, key in keys.items() if key is not None and key.layer == layer}


def _nonfinite_cause(bad_inputs: Optional[torch.Tensor]) -> str:
    """Why features are not finite: NaN/Inf in the probe's own inputs (named), else the training."""
    if bad_inputs is None or not bool(bad_inputs.any()):
        return "diverged training?"
    rows = torch.nonzero(bad_inputs.cpu()).flatten().tolist()
    shown = ", ".join(map(str, rows[:5])) + ("" if len(rows) <= 5 else f" and {len(rows) - 5} more")
    return (f"the probe's inputs hold NaN/Inf: {len(rows)} sample(s), probe positions {shown}; "
            "repair the data or the transform")


def _failure_note(layer: str, step: int, failures: dict[str, str]) -> str:
    reasons = "; ".join(dict.fromkeys(failures.values()))
    return (f"DSEMonitor: computing {list(failures)} for layer {layer!r} at epoch {step} failed ({reasons}); "
            f"skipping {'it' if len(failures) == 1 else 'them'}.")


def compute_measurement(
    config: MonitorConfig,
    features: dict[str, torch.Tensor],
    groups: ReferenceGroups,
    step: int,
    frozen: Optional[Frozen] = None,
    bad_inputs: Optional[torch.Tensor] = None,
    previous: Optional[dict[str, torch.Tensor]] = None,
    row_group: Optional[RowGroup] = None,
) -> Measurement:
    """Every configured metric of every layer, plus its ``sigma_ratio``; a failing metric is skipped alone.

    ``frozen`` holds the per-layer sigma / t chosen at a first measurement
    (``"median_init"``, ``"knee"``) and is completed here for new layers. ``bad_inputs``
    (``[N]`` 0/1, from the probe pass): samples whose inputs hold NaN/Inf, named instead
    of blaming the training when a layer's features are not finite. ``previous``
    holds each layer's features at the previous measurement (``cka_prev``'s reference)
    and is updated here with this measurement's (None: ``cka_prev`` is not logged).
    ``row_group``: the ranks that split DSE's kernel rows (:mod:`.row_sharding`); every one of them
    must then call this with the same arguments.
    """
    start = time.perf_counter()
    frozen = frozen if frozen is not None else Frozen()
    out = Measurement(step, notes=list(groups.notes), aliases=identical_layers(features), groups=groups)
    for layer, z in features.items():
        if layer in out.aliases:  # the same features as an earlier layer: copied below
            continue
        if config.device is not None:
            z = z.to(config.device)
        out.shapes[layer] = (int(z.shape[0]), int(z.shape[1]) if z.ndim > 1 else 0)
        refs = {"labels": groups.labels, "inputs": groups.inputs, "previous": None}
        if previous is not None and "previous" in config.references():
            refs["previous"] = previous.get(layer)
            previous[layer] = z.detach().to("cpu", copy=True)  # the next measurement's reference
        metrics = [m for m in config.metrics if METRICS[m].reference is None or refs[METRICS[m].reference] is not None]
        if not bool(torch.isfinite(z).all()):
            out.notes.append(f"DSEMonitor: layer {layer!r} has NaN/Inf features at epoch {step}; "
                             f"logging NaN for its metrics ({_nonfinite_cause(bad_inputs)}).")
            out.values.update({config.key(layer, k): float("nan") for m in metrics
                               for k in logged_names(m, config.settings())})
            continue
        try:
            scale = layer_scale(config, layer, z, frozen)
        except Exception as err:  # noqa: BLE001 - e.g. no features: every metric of the layer fails alike
            failures = {m: f"{type(err).__name__}: {err}" for m in metrics}
            out.failures[layer] = failures
            out.notes.append(_failure_note(layer, step, failures))
            continue
        out.notes.extend(scale.warnings)
        out.info.extend(scale.info)
        out.values.update({config.key(layer, k): v for k, v in scale.frozen_now.items()})
        out.sigmas[layer] = float(scale.settings.sigma)
        gaussian = scale.settings.kernel == "gaussian"  # the kNN kernel has no global sigma to diagnose
        ratio = scale.median / scale.settings.sigma
        if gaussian:
            out.values[config.key(layer, "sigma_ratio")] = ratio
        settings = scale.settings if row_group is None else replace(scale.settings, row_group=row_group)
        results, failures = _layer_metrics(z, metrics, refs, settings)
        for name in metrics:
            result = results.get(name)
            if result is None:  # failed: in failures
                continue
            if result.note is not None:  # why a value is NaN or not logged (said once per run)
                out.info.append(f"DSEMonitor: {name} of layer {layer!r}: {result.note}.")
            out.values.update({config.key(layer, k): v for k, v in result.logged(name).items()})
            if result.eigenvalues is not None:
                out.spectra[layer] = result.eigenvalues
            if result.fallback is not None:
                out.fallbacks.append(f"DSEMonitor: {result.fallback}")
        dse = results.get("dse")  # also when only a metric derived from it was asked for
        if gaussian and dse is not None and dse.n is not None and dse.n > 1:
            direction = scale_diagnosis(dse.value, dse.n, ratio)
            if direction is not None:
                message = scale_warning(direction, layer=layer, dse_bits=dse.value, n=dse.n, median=scale.median,
                                        sigma=scale.settings.sigma)
                out.verdicts[layer] = (direction, f"DSEMonitor: {message}")
        if failures:
            out.failures[layer] = failures
            out.notes.append(_failure_note(layer, step, failures))
    for duplicate, original in out.aliases.items():
        out.values.update({config.key(duplicate, name): value for name, value in out.of_layer(original).items()})
        # the duplicate's own state too: a later measurement that finds it distinct again keeps the values
        # frozen at its first measurement and compares with its previous features
        for per_layer in (out.spectra, out.shapes, out.sigmas, frozen.sigma, frozen.t,
                          *(() if previous is None else (previous,))):
            if original in per_layer:
                per_layer[duplicate] = per_layer[original]
    out.duration_s = time.perf_counter() - start
    return out


def _layer_metrics(
    z: torch.Tensor, metrics: list[str], refs: dict[str, Optional[torch.Tensor]], settings: MetricSettings
) -> tuple[dict[str, MetricResult], dict[str, str]]:
    """The metrics of one layer by name, plus the bases that derived ones computed (each computed once)."""
    results: dict[str, MetricResult] = {}
    failures: dict[str, str] = {}
    for name in metrics:
        if name in results:  # the base of a derived metric asked for before it
            continue
        metric = METRICS[name]
        try:
            results[name] = metric.compute(z, refs.get(metric.reference), settings, results)
        except MemoryError as err:  # no approximate path could take it (t outside {1, 2})
            failures[name] = f"MemoryError: {err} Lower num_samples."
        except Exception as err:  # noqa: BLE001 - recorded, training goes on
            failures[name] = f"{type(err).__name__}: {err}"
    return results, failures
