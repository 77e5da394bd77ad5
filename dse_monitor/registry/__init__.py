"""The one list of the monitor's metrics: name, title, the reference each needs, how it is computed.

Every room reads it: the monitor (which metrics exist, what a metric needs, how to
compute it), the TensorBoard layout (chart titles), ``dse-monitor compare`` and the
CLI tables (titles, which tags are the monitor's). Adding a metric is one entry here.

=========  ===========  =========  ==============================================
name       title        reference  computed by
=========  ===========  =========  ==============================================
dse        DSE(Z)       none       :func:`~dse_monitor.functional.diffusion_spectral_entropy`
dsmi_y     DSMI(Z;Y)    labels     :func:`~dse_monitor.functional.diffusion_spectral_mutual_information`
dsmi_x     DSMI(Z;X)    inputs     the same, on clusters of the probe inputs
cse        CSE(Z)       none       :func:`~dse_monitor.functional.classic_shannon_entropy`
csmi_y     CSMI(Z;Y)    labels     :func:`~dse_monitor.functional.classic_shannon_mutual_information`
csmi_x     CSMI(Z;X)    inputs     the same, on clusters of the probe inputs
dse_norm   DSE(Z)/log2N none       derived from ``dse``: DSE / log2 N, in [0, 1]
=========  ===========  =========  ==============================================

The representation-health metrics (:data:`HEALTH_METRICS`, :mod:`dse_monitor.functional.health`):
``rankme``, ``alpha_req`` (also logs ``alpha_req_r2``), ``knn_acc`` (labels, ``knn_k``
neighbours), ``cka_prev`` (linear CKA with the same layer's previous measurement) and,
from DSE's spectrum at no extra solve, ``dse_t`` (``dse_t<t>`` for each t of ``t_values``)
and ``spectral_gap``; ``metrics="health"`` selects the first four. Where one does not
apply (e.g. ``alpha_req`` with min(N, D) < 110) its result has ``values == {}`` and a
``note`` saying why: nothing is logged.

Diagnostics (:data:`DIAGNOSTICS`) are named here too but produced by the monitor
itself: ``sigma_ratio`` (median pairwise distance / sigma, every measurement), and the
values frozen at a layer's first measurement, ``sigma`` (``sigma="median_init"``) and
``t`` (``t="knee"``), logged once.

Example:
    >>> [m.name for m in METRICS.values() if m.reference == "labels"]
    ['dsmi_y', 'csmi_y', 'knn_acc']
    >>> METRICS["dsmi_x"].title
    'DSMI(Z;X)'
    >>> z = torch.eye(4) * 100
    >>> round(METRICS["dse"].compute(z, None, MetricSettings(solver="exact")).value, 6)
    2.0
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Literal, Optional, Sequence, Union

import torch

from .computations import (
    MetricResult,
    MetricSettings,
    _alpha_req,
    _alpha_req_r2,
    _cka_prev,
    _cse,
    _csmi,
    _dse,
    _dse_norm,
    _dse_t,
    _dse_t_name,
    _dsmi,
    _knn_acc,
    _rankme,
    _spectral_gap,
)

__all__ = ["DEFAULT_METRICS", "DIAGNOSTICS", "HEALTH_METRICS", "METRICS", "METRIC_GROUPS", "Metric", "MetricKey",
           "MetricResult", "MetricSettings", "derive_result", "expand_metrics", "is_monitor_name", "logged_names",
           "metric_key", "metric_names", "parse_key", "root_metric", "title", "unit"]

#: ``"previous"``: the same layer's features at the previous measurement (``cka_prev``).
Reference = Optional[Literal["labels", "inputs", "previous"]]


Compute = Callable[[torch.Tensor, Optional[torch.Tensor], MetricSettings], MetricResult]


@dataclass(frozen=True)
class Metric:
    """A metric: its key in the logs, its chart title, the reference it needs, its computation.

    Every metric computes through :meth:`compute`. A derived metric (``derived_from``)
    turns its base metric's result into its value with ``derive(result)``; the base is
    computed once per layer when a measurement asks for both (``computed``).
    """

    name: str
    title: str
    reference: Reference
    fn: Optional[Compute]
    description: str
    derived_from: Optional[str] = None
    #: ``derive(base_result, settings)`` -> a number or a :class:`MetricResult`.
    derive: Optional[Callable[..., Union[float, MetricResult]]] = None
    #: Unit of the value (the y-axis of the charts).
    unit: str = "bits"
    #: The names this metric logs when not just its own (given the settings).
    names: Optional[Callable[[MetricSettings], tuple[str, ...]]] = None

    def __post_init__(self) -> None:
        if (self.fn is None) == (self.derived_from is None) or (self.derived_from is None) != (self.derive is None):
            raise ValueError(f"metric {self.name!r}: give either fn, or derived_from with derive (same reference)")

    def compute(self, z: torch.Tensor, groups: Optional[torch.Tensor], settings: MetricSettings,
                computed: Optional[dict[str, MetricResult]] = None) -> MetricResult:
        """This metric of features ``z`` [N, D] (``groups``: the ids of its reference, or None).

        ``computed``: results of this layer so far, by name; a derived metric reads its
        base there, or computes it and adds it.

        >>> z = torch.eye(4) * 100
        >>> round(METRICS["dse_norm"].compute(z, None, MetricSettings(solver="exact")).value, 6)
        1.0
        """
        if self.fn is not None:
            return self.fn(z, groups, settings)
        computed = {} if computed is None else computed
        base = computed.get(self.derived_from)
        if base is None:
            base = computed[self.derived_from] = METRICS[self.derived_from].compute(z, groups, settings, computed)
        return derive_result(self, base, settings)


_ENTRIES = (
    Metric("dse", "DSE(Z)", None, _dse, "diffusion spectral entropy of the layer, bits in [0, log2 N]"),
    Metric("dsmi_y", "DSMI(Z;Y)", "labels", _dsmi, "diffusion spectral mutual information with the labels"),
    Metric("dsmi_x", "DSMI(Z;X)", "inputs", _dsmi, "diffusion spectral mutual information with input clusters"),
    Metric("cse", "CSE(Z)", None, _cse, "classic (binning) Shannon entropy, saturates at log2 N in high D"),
    Metric("csmi_y", "CSMI(Z;Y)", "labels", _csmi, "binning mutual information with the labels"),
    Metric("csmi_x", "CSMI(Z;X)", "inputs", _csmi, "binning mutual information with input clusters"),
    Metric("dse_norm", "DSE(Z) / log2 N", None, None, "DSE normalised to [0, 1] by its maximum log2 N",
           derived_from="dse", derive=_dse_norm, unit="fraction"),
    Metric("rankme", "RankMe(Z)", None, _rankme, "effective rank of the features, in [1, min(N, D)]",
           unit="effective rank"),
    Metric("alpha_req", "alpha-ReQ(Z)", None, _alpha_req, "power-law decay exponent of the covariance spectrum",
           unit="decay exponent", names=lambda s: ("alpha_req", "alpha_req_r2")),
    Metric("alpha_req_r2", "alpha-ReQ fit R^2", None, None, "R^2 of alpha-ReQ's fit over eigenvalues 11..100",
           derived_from="alpha_req", derive=_alpha_req_r2, unit="R^2"),
    Metric("knn_acc", "kNN accuracy(Z;Y)", "labels", _knn_acc, "leave-one-out kNN accuracy on the probe labels",
           unit="accuracy"),
    Metric("cka_prev", "CKA(Z, Z_prev)", "previous", _cka_prev, "linear CKA with the previous measurement",
           unit="CKA"),
    Metric("dse_t", "DSE(Z) at t", None, None, "DSE at each t of t_values, from DSE's spectrum",
           derived_from="dse", derive=_dse_t, names=lambda s: tuple(_dse_t_name(t) for t in s.t_values)),
    Metric("spectral_gap", "spectral gap 1 - |lambda_2|", None, None, "1 - |lambda_2| of the diffusion operator",
           derived_from="dse", derive=_spectral_gap, unit="gap"),
)

#: Every metric by name, in the order of the logs and the charts.
METRICS: dict[str, Metric] = {m.name: m for m in _ENTRIES}
#: What the monitor measures unless told otherwise (the paper's three curves).
DEFAULT_METRICS = ("dse", "dsmi_y", "dsmi_x")
#: The representation-health metrics (the "Health" section of the TensorBoard layout).
HEALTH_METRICS = ("rankme", "alpha_req", "alpha_req_r2", "knn_acc", "cka_prev", "dse_t", "spectral_gap")
#: Names that select several metrics at once in ``metrics=``.
METRIC_GROUPS = {"health": ("rankme", "alpha_req", "knn_acc", "cka_prev")}
_DSE_T = re.compile(r"dse_t(\d+(\.\d+)?(e[+-]?\d+)?)")
#: Names the monitor logs beside the metrics, with their chart titles.
DIAGNOSTICS = {
    "sigma_ratio": "median distance / sigma",
    "sigma": "sigma (frozen at the first measurement)",
    "t": "t (frozen at the first measurement)",
}


_DIAGNOSTIC_UNITS = {"sigma_ratio": "ratio", "sigma": "distance", "t": "diffusion time"}


def metric_names() -> tuple[str, ...]:
    """The metric names, in registry order.

    >>> metric_names()[:7]
    ('dse', 'dsmi_y', 'dsmi_x', 'cse', 'csmi_y', 'csmi_x', 'dse_norm')
    """
    return tuple(METRICS)


def expand_metrics(names: Sequence[str]) -> list[str]:
    """``names`` with each group (:data:`METRIC_GROUPS`) replaced by its members, each metric once.

    >>> expand_metrics(["dse", "health"])
    ['dse', 'rankme', 'alpha_req', 'knn_acc', 'cka_prev']
    """
    out: list[str] = []
    for name in names:
        out.extend(m for m in METRIC_GROUPS.get(name, (name,)) if m not in out)
    return out


def root_metric(name: str) -> str:
    """The metric that ``name`` is derived from, to the root: the one whose computation it reads.

    >>> root_metric("dse_norm"), root_metric("dsmi_y")
    ('dse', 'dsmi_y')
    """
    base = METRICS[name].derived_from
    return name if base is None else root_metric(base)


def logged_names(name: str, settings: MetricSettings) -> tuple[str, ...]:
    """The names under which the metric ``name`` is logged.

    >>> logged_names("dse_t", MetricSettings(t_values=(1, 2.5))), logged_names("dse", MetricSettings())
    (('dse_t1', 'dse_t2.5'), ('dse',))
    """
    metric = METRICS[name]
    return metric.names(settings) if metric.names is not None else (name,)


def derive_result(metric: Metric, base: MetricResult, settings: MetricSettings) -> MetricResult:
    """A derived metric's result from its base's (a base that does not apply makes it not apply either)."""
    if base.values == {}:
        return base
    out = metric.derive(base, settings)
    return out if isinstance(out, MetricResult) else MetricResult(float(out), note=base.note)


def title(name: str) -> str:
    """The chart title of a metric (or the name itself for other scalars, e.g. ``val_acc``).

    >>> title("dsmi_y"), title("val_acc"), title("dse_t4")
    ('DSMI(Z;Y)', 'val_acc', 'DSE(Z) at t=4')
    """
    metric = METRICS.get(name)
    if metric is None and _DSE_T.fullmatch(name):
        return f"{METRICS['dse_t'].title}={name[len('dse_t'):]}"
    return metric.title if metric is not None else DIAGNOSTICS.get(name, name)


def unit(name: str) -> Optional[str]:
    """The unit of a metric's or diagnostic's values (a chart's y-axis), None for other names.

    >>> unit("dsmi_y"), unit("dse_norm"), unit("rankme"), unit("dse_t4"), unit("sigma_ratio"), unit("val_acc")
    ('bits', 'fraction', 'effective rank', 'bits', 'ratio', None)
    """
    if name not in METRICS and _DSE_T.fullmatch(name):
        return METRICS["dse_t"].unit
    return METRICS[name].unit if name in METRICS else _DIAGNOSTIC_UNITS.get(name)


def is_monitor_name(name: str) -> bool:
    """Whether ``name`` (the last part of a tag) is one of the monitor's metrics or diagnostics.

    >>> is_monitor_name("dsmi_x"), is_monitor_name("sigma_ratio"), is_monitor_name("val_acc")
    (True, True, False)
    >>> is_monitor_name("dse_t2"), is_monitor_name("dse_tx")
    (True, False)
    """
    return name in METRICS or name in DIAGNOSTICS or _DSE_T.fullmatch(name) is not None


@dataclass(frozen=True)
class MetricKey:
    """The parts of a logged key ``<prefix>/<layer>/<name>`` (``name``: a metric or a diagnostic)."""

    prefix: str
    layer: str
    name: str

    def __str__(self) -> str:
        return metric_key(self.prefix, self.layer, self.name)


def metric_key(prefix: str, layer: str, name: str) -> str:
    """The key the monitor logs a layer's value under: ``<prefix>/<layer>/<name>``.

    >>> metric_key("dse", "penultimate", "dsmi_y")
    'dse/penultimate/dsmi_y'
    """
    return f"{prefix}/{layer}/{name}"


def parse_key(key: str) -> Optional[MetricKey]:
    """The parts of ``<prefix>/<layer>/<name>`` (the one place a key is taken apart); None for other tags.

    The prefix has no ``/`` (the monitor refuses one), the name is the last part, the layer
    is everything between (module names have dots, not slashes).

    >>> parse_key("dse/layer4/dse")
    MetricKey(prefix='dse', layer='layer4', name='dse')
    >>> parse_key("dse/epoch") is None, parse_key("val_acc") is None
    (True, True)
    """
    parts = key.split("/")
    if len(parts) < 3 or not all(parts):
        return None
    return MetricKey(parts[0], "/".join(parts[1:-1]), parts[-1])
