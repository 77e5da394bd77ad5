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
from dataclasses import replace
from typing import Optional

import torch

from ..capture.layer_sets import identical_layers
from ..functional import RowGroup, reference_groups, scale_diagnosis, scale_warning
from ..registry import METRICS, logged_names, parse_key
from ..registry.layer import compute_layer
from .config import FALLBACK_CLUSTERS, MonitorConfig
from .policies import Frozen, layer_scale
from .measurement import Measurement, ReferenceGroups
from .shares import Share, by_layer, layer_units, merge_parts, plan_deal, unit_of


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
    share: Optional[Share] = None,
    row_group: Optional[RowGroup] = None,
    subset_group: Optional[RowGroup] = None,
) -> Measurement:
    """Every configured metric of every layer, plus its ``sigma_ratio``; a failing metric is skipped alone.

    ``frozen`` holds the per-layer sigma / t chosen at a first measurement
    (``"median_init"``, ``"knee"``) and is completed here for new layers. ``bad_inputs``
    (``[N]`` 0/1, from the probe pass): samples whose inputs hold NaN/Inf, named instead
    of blaming the training when a layer's features are not finite. ``previous``
    holds each layer's features at the previous measurement (``cka_prev``'s reference)
    and is updated here with this measurement's (None: ``cka_prev`` is not logged).
    ``share``: compute only this rank's units (:mod:`.shares`) and return its part, to be
    merged with the other ranks' by :func:`merge_measurements`. ``row_group``: the ranks that split
    DSE's kernel rows (:mod:`.row_sharding`): every one of them computes every layer's DSE together
    (in layer order; the unit's owner keeps the value), so each must call this with the same arguments.
    ``subset_group``: the ranks, when DSMI's subset solves may be shared out among them
    (:mod:`dse_monitor.functional.shared_subsets`): done where the deal is faster for it (:func:`.shares.plan_deal`).
    """
    if share is None and (row_group is not None or subset_group is not None):
        raise ValueError("compute_measurement: row_group and subset_group make collectives of a rank's share; "
                         "pass share=Share(rank, world) with them")
    start = time.perf_counter()
    frozen = frozen if frozen is not None else Frozen()
    rank = 0 if share is None else share.rank
    notes = list(groups.notes) if rank == 0 else []  # said once, by rank 0's part
    out = Measurement(step, notes=notes, aliases=identical_layers(features), groups=groups)
    split = row_group is not None
    todo = _layer_plan(config, features, groups, out.aliases, previous, split)
    units = [u for _, _, _, layer_units_, _, _ in todo for u in layer_units_]
    deal, together = (None, set()) if share is None else plan_deal(
        units, share.world, rows_split=split, share_subsets=subset_group is not None)
    scales: dict = {}  # each layer's scale once per measurement, whichever call needs it first
    # First the units that all ranks compute together, in layer order on every rank (each is a
    # collective: DSE on a kernel whose rows are split, DSMI whose subset solves are shared out; the
    # owner keeps the values), then each rank's own units: no rank waits for another's own work.
    for layer, z, metrics, layer_units_, unit, refs in todo:
        for u in (u for u in layer_units_ if (layer, u.root) in together):
            owner = deal[(layer, u.root)] == rank
            extra = {"row_group": row_group} if u.root == "dse" else {"subset_group": subset_group}
            _measure_layer(config, out if owner else Measurement(step), layer, z, metrics,
                           [m for m in metrics if unit[m] == u.root], False, refs, frozen, bad_inputs, scales, extra)
            if owner:
                out.computed_by[f"{layer}/{u.root}"] = -1
    for layer, z, metrics, layer_units_, unit, refs in todo:
        mine = [m for m in metrics if deal is None or ((layer, unit[m]) not in together and deal[(layer, unit[m])] == rank)]
        primary = deal is None or deal[(layer, layer_units_[0].root)] == rank  # records the layer itself
        if primary or mine:
            _measure_layer(config, out, layer, z, metrics, mine, primary, refs, frozen, bad_inputs, scales)
        out.computed_by.update({f"{layer}/{unit[m]}": rank for m in mine})
    out.duration_s = time.perf_counter() - start
    return out if share is not None else finish_measurement(config, out, frozen, previous)


def _layer_plan(config: MonitorConfig, features: dict[str, torch.Tensor], groups: ReferenceGroups,
                aliases: dict[str, str], previous: Optional[dict[str, torch.Tensor]], rows_split: bool) -> list:
    """``(layer, z, metrics, units, unit, refs)`` of every layer measured (not a duplicate; ``unit``:
    each metric's unit, :func:`.shares.unit_of`). ``previous`` is
    updated here, for every layer on every rank, so that the next measurement finds it whichever rank
    computes; ``refs["previous"]`` keeps the one before."""
    plan = []
    want_previous = previous is not None and "previous" in config.references()
    for layer, z in features.items():
        if layer in aliases:  # the same features as an earlier layer: copied in finish_measurement
            continue
        refs = {"labels": groups.labels, "inputs": groups.inputs,
                "previous": previous.get(layer) if want_previous else None}
        metrics = [m for m in config.metrics if METRICS[m].reference is None or refs[METRICS[m].reference] is not None]
        shape = (int(z.shape[0]), int(z.shape[1]) if z.ndim > 1 else 0)
        unit = {m: unit_of(m, metrics, rows_split) for m in metrics}
        plan.append((layer, z, metrics, layer_units(layer, unit, shape, refs, config.num_repetitions, rows_split),
                     unit, refs))
    if want_previous:
        previous.update({layer: z.detach().to("cpu", copy=True) for layer, z, *_ in plan})
    return plan


def _measure_layer(config: MonitorConfig, out: Measurement, layer: str, z: torch.Tensor, metrics: list[str],
                   mine: list[str], primary: bool, refs: dict[str, Optional[torch.Tensor]], frozen: Frozen,
                   bad_inputs: Optional[torch.Tensor], scales: Optional[dict] = None,
                   together: Optional[dict] = None) -> None:
    """The ``mine`` metrics of one layer into ``out``; ``primary``: also the layer's own records;
    ``scales``: the layers' scales of this measurement (kept, so that a frozen sigma chosen by an
    earlier call is still reported by the primary one); ``together``: the settings that make them
    collectives (``row_group``, ``subset_group``)."""
    step = out.step
    if config.device is not None:
        z = z.to(config.device)
    if primary:
        out.shapes[layer] = (int(z.shape[0]), int(z.shape[1]) if z.ndim > 1 else 0)
    if not bool(torch.isfinite(z).all()):
        if primary:
            out.notes.append(f"DSEMonitor: layer {layer!r} has NaN/Inf features at epoch {step}; "
                             f"logging NaN for its metrics ({_nonfinite_cause(bad_inputs)}).")
            out.values.update({config.key(layer, k): float("nan") for m in metrics
                               for k in logged_names(m, config.settings())})
        return
    try:
        scales = {} if scales is None else scales
        if layer not in scales:
            scales[layer] = layer_scale(config, layer, z, frozen)
        scale = scales[layer]
    except Exception as err:  # noqa: BLE001 - e.g. no features: every metric of the layer fails alike
        if primary:
            out.failures[layer] = {m: f"{type(err).__name__}: {err}" for m in metrics}
        return
    gaussian = scale.settings.kernel == "gaussian"  # the kNN kernel has no global sigma to diagnose
    ratio = scale.median / scale.settings.sigma
    if primary:
        out.notes.extend(scale.warnings)
        out.info.extend(scale.info)
        out.values.update({config.key(layer, k): v for k, v in scale.frozen_now.items()})
        out.sigmas[layer] = float(scale.settings.sigma)
        if gaussian:
            out.values[config.key(layer, "sigma_ratio")] = ratio
    settings = scale.settings if not together else replace(scale.settings, **together)
    results, failures = compute_layer(z, mine, refs, settings)
    for name in mine:
        result = results.get(name)
        if result is None:  # failed: in failures
            continue
        if result.note is not None:  # why a value is NaN or not logged (said once per run)
            out.info.append(f"DSEMonitor: {name} of layer {layer!r}: {result.note}.")
            out.metric_notes.setdefault(layer, {})[name] = result.note
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
        out.failures.setdefault(layer, {}).update(failures)


def merge_measurements(config: MonitorConfig, parts: list[Measurement], layers: list[str], frozen: Frozen,
                       parts_frozen: list[Frozen], previous: Optional[dict[str, torch.Tensor]] = None) -> Measurement:
    """The ranks' parts (:func:`compute_measurement` with a ``share``) as one process's Measurement.

    ``frozen``: this rank's, completed with the ranks' ``parts_frozen`` (a layer's scale is frozen
    alike by every rank that computed it)."""
    settings = config.settings()
    names = [logged_names(m, settings) for m in config.metrics]

    def order(key: str) -> tuple:
        parsed = parse_key(key)
        layer = layers.index(parsed.layer) if parsed is not None and parsed.layer in layers else len(layers)
        name = parsed.name if parsed is not None else key
        for i, logged in enumerate(names):
            if name in logged:
                return (layer, 2, i, logged.index(name))
        return (layer, 1 if name == "sigma_ratio" else 0, 0, 0)  # frozen sigma / t first, as logged

    out = merge_parts(parts, order)
    out.notes, out.info = by_layer(out.notes, layers), by_layer(out.info, layers)
    out.duration_s = max(p.duration_s for p in parts)
    for part in parts_frozen:
        frozen.sigma.update(part.sigma)
        frozen.t.update(part.t)
    return finish_measurement(config, out, frozen, previous)


def finish_measurement(config: MonitorConfig, out: Measurement, frozen: Frozen,
                       previous: Optional[dict[str, torch.Tensor]]) -> Measurement:
    """The failure notes, then the duplicate layers' values and state copied from their originals."""
    for layer, failures in out.failures.items():
        out.notes.append(_failure_note(layer, out.step, failures))
    for duplicate, original in out.aliases.items():
        out.values.update({config.key(duplicate, name): value for name, value in out.of_layer(original).items()})
        # the duplicate's own state too: a later measurement that finds it distinct again keeps the values
        # frozen at its first measurement and compares with its previous features
        for per_layer in (out.spectra, out.shapes, out.sigmas, frozen.sigma, frozen.t,
                          *(() if previous is None else (previous,))):
            if original in per_layer:
                per_layer[duplicate] = per_layer[original]
    return out
