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

Diagnostics (:data:`DIAGNOSTICS`) are named here too but produced by the monitor
itself: ``sigma_ratio`` (median pairwise distance / sigma, every measurement), and the
values frozen at a layer's first measurement, ``sigma`` (``sigma="median_init"``) and
``t`` (``t="knee"``), logged once.

Example:
    >>> [m.name for m in METRICS.values() if m.reference == "labels"]
    ['dsmi_y', 'csmi_y']
    >>> METRICS["dsmi_x"].title
    'DSMI(Z;X)'
    >>> z = torch.eye(4) * 100
    >>> round(METRICS["dse"].compute(z, None, MetricSettings(solver="exact")).value, 6)
    2.0
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Optional, Union

import numpy as np
import torch

from .functional import (
    normalised_entropy,
    classic_shannon_entropy,
    classic_shannon_mutual_information,
    diffusion_spectral_entropy_details,
    diffusion_spectral_mutual_information_terms,
)

__all__ = ["DEFAULT_METRICS", "DIAGNOSTICS", "METRICS", "Metric", "MetricKey", "MetricResult", "MetricSettings",
           "is_monitor_name", "metric_key", "metric_names", "parse_key", "title"]

Reference = Optional[Literal["labels", "inputs"]]


@dataclass(frozen=True)
class MetricSettings:
    """How every metric of one measurement is computed (a resolved numeric sigma or a policy name)."""

    sigma: Union[float, str] = 10.0
    t: float = 1.0
    seed: int = 0
    dtype: Optional[torch.dtype] = None
    solver: str = "auto"
    num_repetitions: int = 5
    #: An exact solve that does not fit in memory streams instead of failing (the monitor's choice).
    memory_fallback: bool = True
    #: The diffusion kernel: "gaussian" (sigma) or "knn" (k neighbours); alpha: density normalisation.
    kernel: str = "gaussian"
    k: int = 15
    alpha: float = 0.0


@dataclass(frozen=True)
class MetricResult:
    """One metric of one layer: the value in bits, the DSE spectrum (exact path), why a fallback was taken."""

    value: float
    eigenvalues: Optional[np.ndarray] = None
    fallback: Optional[str] = None
    #: Points the value was computed on (DSE: after the ``max_n`` subsample).
    n: Optional[int] = None


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
    derive: Optional[Callable[[MetricResult], float]] = None

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
        return MetricResult(self.derive(base))  # type: ignore[misc]  # set with derived_from (__post_init__)


def _dse(z: torch.Tensor, _groups: Optional[torch.Tensor], s: MetricSettings) -> MetricResult:
    res = diffusion_spectral_entropy_details(
        z, s.sigma, s.t, seed=s.seed, dtype=s.dtype, solver=s.solver, memory_fallback=s.memory_fallback,
        kernel=s.kernel, k=s.k, alpha=s.alpha,
    )
    lam = None if res.eigenvalues is None else res.eigenvalues.detach().cpu().double().numpy()
    return MetricResult(float(res.value), lam, res.fallback, res.n)


def _dsmi(z: torch.Tensor, groups: Optional[torch.Tensor], s: MetricSettings) -> MetricResult:
    terms = diffusion_spectral_mutual_information_terms(
        z, groups=groups, sigma=s.sigma, t=s.t, num_repetitions=s.num_repetitions, seed=s.seed, dtype=s.dtype,
        solver=s.solver, memory_fallback=s.memory_fallback, kernel=s.kernel, k=s.k, alpha=s.alpha,
    )
    return MetricResult(float(terms.value), None, terms.fallback)


def _dse_norm(dse: MetricResult) -> float:
    return normalised_entropy(dse.value, dse.n) if dse.n and dse.n > 1 else 0.0


#: The binning baselines bin in float64 whatever ``MetricSettings.dtype`` says: binning is cheap, and a
#: sample on a bin edge must fall on the side the reference puts it.
BINNING_DTYPE = torch.float64


def _cse(z: torch.Tensor, _groups: Optional[torch.Tensor], s: MetricSettings) -> MetricResult:
    return MetricResult(float(classic_shannon_entropy(z, dtype=BINNING_DTYPE)))


def _csmi(z: torch.Tensor, groups: Optional[torch.Tensor], s: MetricSettings) -> MetricResult:
    value = classic_shannon_mutual_information(
        z, groups=groups, num_repetitions=s.num_repetitions, seed=s.seed, dtype=BINNING_DTYPE
    )
    return MetricResult(float(value))


_ENTRIES = (
    Metric("dse", "DSE(Z)", None, _dse, "diffusion spectral entropy of the layer, bits in [0, log2 N]"),
    Metric("dsmi_y", "DSMI(Z;Y)", "labels", _dsmi, "diffusion spectral mutual information with the labels"),
    Metric("dsmi_x", "DSMI(Z;X)", "inputs", _dsmi, "diffusion spectral mutual information with input clusters"),
    Metric("cse", "CSE(Z)", None, _cse, "classic (binning) Shannon entropy, saturates at log2 N in high D"),
    Metric("csmi_y", "CSMI(Z;Y)", "labels", _csmi, "binning mutual information with the labels"),
    Metric("csmi_x", "CSMI(Z;X)", "inputs", _csmi, "binning mutual information with input clusters"),
    Metric("dse_norm", "DSE(Z) / log2 N", None, None, "DSE normalised to [0, 1] by its maximum log2 N",
           derived_from="dse", derive=_dse_norm),
)

#: Every metric by name, in the order of the logs and the charts.
METRICS: dict[str, Metric] = {m.name: m for m in _ENTRIES}
#: What the monitor measures unless told otherwise (the paper's three curves).
DEFAULT_METRICS = ("dse", "dsmi_y", "dsmi_x")
#: Names the monitor logs beside the metrics, with their chart titles.
DIAGNOSTICS = {
    "sigma_ratio": "median distance / sigma",
    "sigma": "sigma (frozen at the first measurement)",
    "t": "t (frozen at the first measurement)",
}


def metric_names() -> tuple[str, ...]:
    """The metric names, in registry order.

    >>> metric_names()
    ('dse', 'dsmi_y', 'dsmi_x', 'cse', 'csmi_y', 'csmi_x', 'dse_norm')
    """
    return tuple(METRICS)


def title(name: str) -> str:
    """The chart title of a metric (or the name itself for other scalars, e.g. ``val_acc``).

    >>> title("dsmi_y"), title("val_acc")
    ('DSMI(Z;Y)', 'val_acc')
    """
    metric = METRICS.get(name)
    return metric.title if metric is not None else DIAGNOSTICS.get(name, name)


def is_monitor_name(name: str) -> bool:
    """Whether ``name`` (the last part of a tag) is one of the monitor's metrics or diagnostics.

    >>> is_monitor_name("dsmi_x"), is_monitor_name("sigma_ratio"), is_monitor_name("val_acc")
    (True, True, False)
    """
    return name in METRICS or name in DIAGNOSTICS


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
