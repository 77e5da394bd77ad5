"""The monitor's configuration: one typed, validated, immutable record of its settings.

:class:`MonitorConfig` owns the defaults and validates every setting in
``__post_init__``, so that a typo fails before a Trainer exists, whoever builds it:
the callbacks (:class:`~dse_monitor.monitor.callback_core.DSEMonitorCore`, where the
arguments are documented), the Trainer-free :func:`~dse_monitor.monitor.standalone.measure`
and ``dse-monitor score``. A caller that accepts fewer policies restricts them through
the same checks (:func:`check_sigma`, :func:`check_t`).

Example:
    >>> cfg = MonitorConfig(metrics="dse", sigma=1)
    >>> cfg.layers, cfg.metrics, cfg.sigma, cfg.dtype, cfg.every_n_epochs
    (['penultimate'], ['dse'], 1.0, torch.float32, 1)
    >>> MonitorConfig(metrics=["dse", "entropy"])
    Traceback (most recent call last):
    ...
    ValueError: metrics must be distinct names among ('dse', 'dsmi_y', 'dsmi_x', 'cse', 'csmi_y', 'csmi_x', 'dse_norm', 'rankme', 'alpha_req', 'alpha_req_r2', 'knn_acc', 'cka_prev', 'dse_t', 'spectral_gap') or a group ('health',), got ['dse', 'entropy']
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
from torch.utils.data import DataLoader, Dataset

from ..capture.pooling import Pooling, check_pooling
from ..capture.forward import ForwardFn
from ..functional._checks import check_int
from ..functional.diffusion_time import T_MAX
from ..functional.knn import DEFAULT_K, check_alpha, check_kernel
from ..functional.solver import check_solver
from ..registry import DEFAULT_METRICS, METRIC_GROUPS, METRICS, MetricSettings, expand_metrics, metric_key

BatchFn = Callable[[Any], Any]
PROBES = ("val", "train")
SIGMA_POLICIES = ("sqrt_dim", "median", "median_init")
T_POLICIES = ("knee",)
#: Clusters of Y and X when the number of classes is unknown (the paper's default).
FALLBACK_CLUSTERS = 10


def parse_dtype(dtype: Union[str, torch.dtype, None]) -> Optional[torch.dtype]:
    """A floating torch dtype from its name (``"float32"``, ``"torch.float64"``) or itself.

    >>> parse_dtype("float32"), parse_dtype(None)
    (torch.float32, None)
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    parsed = getattr(torch, str(dtype).replace("torch.", ""), None)
    if not isinstance(parsed, torch.dtype) or not parsed.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype such as 'float32' or 'float64', got {dtype!r}")
    return parsed


def _choices(policies: Sequence[str]) -> str:
    quoted = [repr(p) for p in policies]
    return ", ".join(["a positive number", *quoted[:-1]]) + (f" or {quoted[-1]}" if quoted else "")


def check_sigma(
    sigma: Any, policies: Sequence[str] = SIGMA_POLICIES, refused: Optional[Mapping[str, str]] = None
) -> Union[float, str]:
    """sigma: a positive number (as float) or one of ``policies``; ``refused`` gives the reason a policy is
    left out by a caller (e.g. ``score``), raised as the error.

    >>> check_sigma(2), check_sigma("median")
    (2.0, 'median')
    >>> check_sigma("median_init", ("sqrt_dim", "median"))
    Traceback (most recent call last):
    ...
    ValueError: sigma must be a positive number, 'sqrt_dim' or 'median', got 'median_init'
    """
    if isinstance(sigma, str) and sigma in policies:
        return sigma
    if isinstance(sigma, str) and refused and sigma in refused:
        raise ValueError(refused[sigma])
    if isinstance(sigma, str) or isinstance(sigma, bool) or not isinstance(sigma, (int, float)) \
            or not sigma > 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma must be {_choices(policies)}, got {sigma!r}")
    return float(sigma) if isinstance(sigma, int) else sigma


def check_t(t: Any, policies: Sequence[str] = T_POLICIES) -> Union[float, str]:
    """t: a positive number (as float) or one of ``policies`` (``"knee"``: chosen from the data).

    >>> check_t(2), check_t("knee")
    (2.0, 'knee')
    """
    if isinstance(t, str) and t in policies:
        return t
    if isinstance(t, (bool, str)) or not isinstance(t, (int, float)) or not t > 0 or not math.isfinite(t):
        knee = " or 'knee' (chosen from the data)" if "knee" in policies else ""
        raise ValueError(f"t must be a positive number{knee}, got {t!r}")
    return float(t)


@dataclass(frozen=True)
class MonitorConfig:
    """The monitor's settings, with their defaults, validated and normalised in ``__post_init__``.

    Their meaning is documented on ``DSEMonitorCore`` (the callbacks' signature). After
    validation ``layers`` and ``metrics`` are lists, ``sigma`` and ``t`` floats or policy
    names, ``device`` and ``dtype`` torch objects, and ``every_n_epochs`` is 1 when no
    cadence is given. A ``ValueError`` names the setting, what it got and what it takes.
    """

    layers: Union[str, Sequence[str]] = "penultimate"
    probe: Union[str, Dataset, DataLoader] = "val"
    num_samples: Optional[int] = 1000
    seed: int = 0
    every_n_epochs: Optional[int] = None
    every_n_train_steps: Optional[int] = None
    at_init: bool = True
    metrics: Union[str, Sequence[str]] = DEFAULT_METRICS
    sigma: Union[float, str] = 10.0
    t: Union[float, str] = 1.0
    t_max: int = T_MAX
    num_repetitions: int = 5
    n_clusters: Optional[int] = None
    x_size: Optional[int] = 64
    pooling: Pooling = "mean"
    batch_fn: Optional[BatchFn] = None
    forward_fn: Optional[ForwardFn] = None
    batch_size: Optional[int] = None
    cache_inputs: Union[bool, str] = "auto"
    probe_loader_kwargs: Optional[dict[str, Any]] = None
    reuse_validation: bool = True
    split_over_ranks: bool = True
    device: Union[str, torch.device, None] = None
    dtype: Union[str, torch.dtype, None] = "float32"
    prefix: str = "dse"
    log_spectrum: bool = True
    save_raw: bool = False
    solver: str = "auto"
    kernel: str = "gaussian"
    k: int = DEFAULT_K
    alpha: float = 0.0
    knn_k: int = 10
    t_values: Sequence[float] = (1, 2, 4, 8)

    def __post_init__(self) -> None:
        if self.every_n_epochs is not None and self.every_n_train_steps is not None:
            raise ValueError(
                f"pass every_n_epochs or every_n_train_steps, not both (got every_n_epochs={self.every_n_epochs!r}, "
                f"every_n_train_steps={self.every_n_train_steps!r}): with a step cadence the monitor does not also "
                "measure at epoch ends."
            )
        for f in fields(self):
            object.__setattr__(self, f.name, _CHECKS[f.name](getattr(self, f.name)))
        if self.every_n_train_steps is None and self.every_n_epochs is None:
            object.__setattr__(self, "every_n_epochs", 1)

    # ------------------------------------------------------------------ derived
    def references(self) -> set[str]:
        """The references the chosen metrics need (``"labels"``, ``"inputs"``).

        >>> sorted(MonitorConfig(metrics=["dse", "dsmi_y", "csmi_x"]).references())
        ['inputs', 'labels']
        """
        return {METRICS[m].reference for m in self.metrics if METRICS[m].reference is not None}

    def metrics_needing(self, reference: str) -> list[str]:
        return [m for m in self.metrics if METRICS[m].reference == reference]

    def settings(self) -> MetricSettings:
        """The settings of every metric, before :mod:`.policies` makes sigma and t numbers per layer."""
        return MetricSettings(
            sigma=self.sigma, t=self.t, seed=self.seed, dtype=self.dtype, solver=self.solver,
            num_repetitions=self.num_repetitions, kernel=self.kernel, k=self.k, alpha=self.alpha, knn_k=self.knn_k,
            t_values=self.t_values,
        )

    def key(self, layer: str, metric: str) -> str:
        """The logged key: ``<prefix>/<layer>/<metric>``."""
        return metric_key(self.prefix, layer, metric)

    def probe_name(self) -> str:
        return self.probe if isinstance(self.probe, str) else type(self.probe).__name__


def _check_layers(layers: Union[str, Sequence[str]]) -> list[str]:
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise ValueError(f"layers must be a module name or a list of distinct names, got {layers!r}")
    return names


def _check_metrics(metrics: Union[str, Sequence[str]]) -> list[str]:
    chosen = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in chosen if m not in METRICS and m not in METRIC_GROUPS]
    if not chosen or unknown or len(set(chosen)) != len(chosen):
        raise ValueError(f"metrics must be distinct names among {tuple(METRICS)} or a group "
                         f"{tuple(METRIC_GROUPS)}, got {metrics!r}")
    return expand_metrics(chosen)  # "health": rankme, alpha_req, knn_acc, cka_prev


def _check_t_values(t_values: Any) -> tuple[float, ...]:
    values = [t_values] if isinstance(t_values, (int, float)) else t_values
    try:
        ok = len(values) > 0 and all(not isinstance(t, bool) and t > 0 and math.isfinite(t) for t in values)
    except TypeError:
        ok = False
    if not ok or len(set(values)) != len(values):
        raise ValueError(f"t_values must be distinct positive diffusion times such as [1, 2, 4, 8], got {t_values!r}")
    return tuple(float(t) for t in values)


def _check_probe(probe: Any) -> Any:
    if isinstance(probe, str) and probe not in PROBES:
        raise ValueError(f"probe must be 'val', 'train', a Dataset or a DataLoader, got {probe!r}")
    return probe


def _check_callable(name: str, how: str) -> Callable[[Any], Any]:
    def check(fn: Any) -> Any:
        if fn is not None and not callable(fn):
            raise ValueError(f"{name} must be callable as {how}, got {fn!r}")
        return fn

    return check


def _check_cache(cache: Any) -> Union[bool, str]:
    if cache is True or cache is False or cache == "auto":
        return cache
    raise ValueError(f"cache_inputs must be True, False or 'auto' (keep the probe batches when they are "
                     f"deterministic and take at most 25% of the device's free memory, else of the available "
                     f"RAM), got {cache!r}")


#: What probe_loader_kwargs may set: how the probe is loaded, never which samples or in what order.
LOADER_ARGS = ("num_workers", "pin_memory", "persistent_workers", "prefetch_factor", "multiprocessing_context",
               "worker_init_fn", "collate_fn", "timeout", "pin_memory_device", "in_order")


def _check_loader_kwargs(kwargs: Any) -> Optional[dict[str, Any]]:
    if kwargs is None:
        return None
    if not isinstance(kwargs, Mapping) or not set(kwargs) <= set(LOADER_ARGS):
        raise ValueError(f"probe_loader_kwargs must be None or a dict of DataLoader arguments among {LOADER_ARGS} "
                         f"(the probe's samples, order and batch_size are the monitor's), got {kwargs!r}")
    workers = check_int(kwargs.get("num_workers", 0), "probe_loader_kwargs['num_workers']", 0)
    if kwargs.get("persistent_workers") and not workers:
        raise ValueError(f"probe_loader_kwargs={kwargs!r}: persistent_workers=True needs num_workers > 0")
    return dict(kwargs)


def _check_prefix(prefix: Any) -> str:
    if not isinstance(prefix, str) or not prefix or "/" in prefix:
        raise ValueError(f"prefix must be a non-empty string without '/', got {prefix!r}")
    return prefix


def _int(name: str, minimum: int, allow_none: bool = True) -> Callable[[Any], Any]:
    return lambda v: check_int(v, name, minimum, allow_none=allow_none)


#: One check per setting, in the order of the fields: each returns the normalised value or raises.
_CHECKS: dict[str, Callable[[Any], Any]] = {
    "layers": _check_layers,
    "probe": _check_probe,
    "num_samples": _int("num_samples", 2),
    "seed": _int("seed", 0, allow_none=False),
    "every_n_epochs": _int("every_n_epochs", 1),
    "every_n_train_steps": _int("every_n_train_steps", 1),
    "at_init": bool,
    "metrics": _check_metrics,
    "sigma": check_sigma,
    "t": check_t,
    "t_max": _int("t_max", 1, allow_none=False),
    "num_repetitions": _int("num_repetitions", 1, allow_none=False),
    "n_clusters": _int("n_clusters", 1),
    "x_size": _int("x_size", 1),
    "pooling": check_pooling,
    "batch_fn": _check_callable("batch_fn", "batch_fn(batch)"),
    "forward_fn": _check_callable("forward_fn", "forward_fn(module, batch)"),
    "batch_size": _int("batch_size", 1),
    "cache_inputs": _check_cache,
    "probe_loader_kwargs": _check_loader_kwargs,
    "reuse_validation": bool,
    "split_over_ranks": bool,
    "device": lambda d: torch.device(d) if d is not None else None,
    "dtype": parse_dtype,
    "prefix": _check_prefix,
    "log_spectrum": bool,
    "save_raw": bool,
    "solver": check_solver,
    "kernel": check_kernel,
    "k": _int("k", 1, allow_none=False),
    "alpha": check_alpha,
    "knn_k": _int("knn_k", 1, allow_none=False),
    "t_values": _check_t_values,
}
