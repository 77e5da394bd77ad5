"""How each registered metric is computed from a layer's features: the functional core, called
with one :class:`MetricSettings`, returning one :class:`MetricResult` (:mod:`dse_monitor.registry`
names them)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import numpy as np
import torch

from ..functional import (
    classic_shannon_entropy,
    classic_shannon_mutual_information,
    diffusion_spectral_entropy_details,
    diffusion_spectral_mutual_information_terms,
    normalised_entropy,
)
from ..functional.health import NotApplicable, alpha_req, diffusion_entropy_at_times, knn_accuracy, linear_cka
from ..functional.health import rankme, spectral_gap
from ..functional.row_group import RowGroup


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
    #: Neighbours of ``knn_acc``.
    knn_k: int = 10
    #: Diffusion times of ``dse_t`` (logged as ``dse_t<t>``).
    t_values: tuple[float, ...] = (1, 2, 4, 8)
    #: ``knn_acc``'s neighbour candidates from DSE's kernel product (:mod:`..registry.layer`), or None.
    knn_candidates: Any = field(default=None, compare=False, repr=False)
    #: Processes that split the rows of DSE's Lanczos kernel (:mod:`dse_monitor.functional.row_operator`);
    #: all of them must compute ``dse`` of the same layer together. None: this process alone.
    row_group: Optional[RowGroup] = field(default=None, compare=False)
    #: Processes that share DSMI's subset solves out (:mod:`dse_monitor.functional.shared_subsets`); all of
    #: them must compute the same DSMI together. None: this process alone.
    subset_group: Optional[RowGroup] = field(default=None, compare=False)


@dataclass(frozen=True)
class MetricResult:
    """One metric of one layer: the value in bits, the DSE spectrum (exact path), why a fallback was taken."""

    value: float
    eigenvalues: Optional[np.ndarray] = None
    fallback: Optional[str] = None
    #: Points the value was computed on (DSE: after the ``max_n`` subsample).
    n: Optional[int] = None
    #: What is logged, by name, when it is not ``{name: value}``: several names (``dse_t<t>``,
    #: ``alpha_req`` with ``alpha_req_r2``), or ``{}`` when the metric does not apply here.
    values: Optional[dict[str, float]] = None
    #: Why a value is NaN or not logged (the monitor says it once, as an info line).
    note: Optional[str] = None

    def logged(self, name: str) -> dict[str, float]:
        """``{logged name: value}`` of the metric ``name``.

        >>> MetricResult(2.0).logged("dse"), MetricResult(float("nan"), values={}).logged("knn_acc")
        ({'dse': 2.0}, {})
        """
        return {name: self.value} if self.values is None else dict(self.values)


def _dse(z: torch.Tensor, _groups: Optional[torch.Tensor], s: MetricSettings) -> MetricResult:
    res = diffusion_spectral_entropy_details(
        z, s.sigma, s.t, seed=s.seed, dtype=s.dtype, solver=s.solver, memory_fallback=s.memory_fallback,
        kernel=s.kernel, k=s.k, alpha=s.alpha, row_group=s.row_group,
    )
    lam = None if res.eigenvalues is None else res.eigenvalues.detach().cpu().double().numpy()
    return MetricResult(float(res.value), lam, res.fallback, res.n)


def _dsmi(z: torch.Tensor, groups: Optional[torch.Tensor], s: MetricSettings) -> MetricResult:
    terms = diffusion_spectral_mutual_information_terms(
        z, groups=groups, sigma=s.sigma, t=s.t, num_repetitions=s.num_repetitions, seed=s.seed, dtype=s.dtype,
        solver=s.solver, memory_fallback=s.memory_fallback, kernel=s.kernel, k=s.k, alpha=s.alpha,
        subset_group=s.subset_group,
    )
    return MetricResult(float(terms.value), None, terms.fallback)


def _dse_norm(dse: MetricResult, _settings: Optional[MetricSettings] = None) -> float:
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


def _applicable(compute: Callable[..., MetricResult]) -> Callable[..., MetricResult]:
    """``compute``, with :class:`~dse_monitor.functional.NotApplicable` turned into "nothing logged, and why"."""
    def run(*args: Any) -> MetricResult:
        try:
            return compute(*args)
        except NotApplicable as err:
            return MetricResult(float("nan"), values={}, note=str(err))

    return run


@_applicable
def _rankme(z: torch.Tensor, _ref: Optional[torch.Tensor], _s: MetricSettings) -> MetricResult:
    return MetricResult(float(rankme(z)))


@_applicable
def _alpha_req(z: torch.Tensor, _ref: Optional[torch.Tensor], _s: MetricSettings) -> MetricResult:
    fit = alpha_req(z)
    note = None if not fit.zeros_in_fit else (
        "the covariance spectrum has zero eigenvalues among eigenvalues 11..100 (numerical rank below 100): "
        "the power-law fit is undefined; logging NaN")
    return MetricResult(fit.alpha, values={"alpha_req": fit.alpha, "alpha_req_r2": fit.r2}, note=note)


@_applicable
def _knn_acc(z: torch.Tensor, labels: Optional[torch.Tensor], s: MetricSettings) -> MetricResult:
    if labels is None:
        raise ValueError("knn_acc needs the probe labels")
    return MetricResult(float(knn_accuracy(z, labels, s.knn_k, candidates=s.knn_candidates)))


@_applicable
def _cka_prev(z: torch.Tensor, previous: Optional[torch.Tensor], _s: MetricSettings) -> MetricResult:
    if previous is None:
        raise NotApplicable("no previous measurement of this layer to compare with (a first measurement, "
                            "or the first after a resume: the previous features are not checkpointed)")
    return MetricResult(float(linear_cka(z, previous.to(z.device))))


def _dse_t_name(t: float) -> str:
    return f"dse_t{float(t):g}"


def _spectrum(dse: MetricResult) -> torch.Tensor:
    if dse.eigenvalues is None:
        raise NotApplicable("it needs the whole diffusion spectrum, which the approximate (Lanczos) solver does not "
                            "compute; pass solver='exact' (or a smaller num_samples) to log it")
    return torch.from_numpy(np.asarray(dse.eigenvalues, dtype=np.float64))


@_applicable
def _dse_t(dse: MetricResult, settings: Optional[MetricSettings] = None) -> MetricResult:
    # DSE's float64 re-solve of a float32 spectrum at its rounding floor (nearly collapsed Z) also covers
    # these: the floor's bias shrinks as t grows, and a smaller t at the floor puts DSE's own t there too.
    s = settings or MetricSettings()
    at = diffusion_entropy_at_times(_spectrum(dse), s.t_values)
    values = {_dse_t_name(t): float(v) for t, v in at.items()}
    return MetricResult(values[_dse_t_name(s.t_values[0])], values=values)


@_applicable
def _spectral_gap(dse: MetricResult, _settings: Optional[MetricSettings] = None) -> MetricResult:
    return MetricResult(float(spectral_gap(_spectrum(dse))))


def _alpha_req_r2(base: MetricResult, _settings: Optional[MetricSettings] = None) -> float:
    return base.values["alpha_req_r2"] if base.values else float("nan")
