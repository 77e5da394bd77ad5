"""The monitor's configuration: one typed, validated, immutable record of its arguments.

Every argument is checked here, when the callback is built, so that a typo fails
before a Trainer exists; the arguments' meaning is documented on
:class:`~dse_monitor.monitor.hooks.DSEMonitorCore`, where the signature is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
from torch.utils.data import DataLoader, Dataset

from ..capture.pooling import Pooling, check_pooling
from ..capture.forward import ForwardFn
from ..functional._checks import check_int
from ..functional.solver import check_solver
from ..registry import METRICS, MetricSettings, metric_key

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


def _check_sigma(sigma: Any) -> Union[float, str]:
    if isinstance(sigma, str) and sigma in SIGMA_POLICIES:
        return sigma
    if isinstance(sigma, str) or isinstance(sigma, bool) or not isinstance(sigma, (int, float)) \
            or not sigma > 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma must be a positive number, 'sqrt_dim', 'median' or 'median_init', got {sigma!r}")
    return float(sigma) if isinstance(sigma, int) else sigma


def _check_layers(layers: Union[str, Sequence[str]]) -> list[str]:
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise ValueError(f"layers must be a module name or a list of distinct names, got {layers!r}")
    return names


def _check_metrics(metrics: Union[str, Sequence[str]]) -> list[str]:
    chosen = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in chosen if m not in METRICS]
    if not chosen or unknown or len(set(chosen)) != len(chosen):
        raise ValueError(f"metrics must be distinct names among {tuple(METRICS)}, got {metrics!r}")
    return chosen


@dataclass(frozen=True)
class MonitorConfig:
    """The validated arguments of one monitor (see ``DSEMonitorCore`` for their meaning)."""

    layers: list[str]
    probe: Union[str, Dataset, DataLoader]
    num_samples: Optional[int]
    seed: int
    every_n_epochs: Optional[int]
    every_n_train_steps: Optional[int]
    at_init: bool
    metrics: list[str]
    sigma: Union[float, str]
    t: Union[float, str]
    t_max: int
    num_repetitions: int
    n_clusters: Optional[int]
    x_size: Optional[int]
    pooling: Pooling
    batch_fn: Optional[BatchFn]
    forward_fn: Optional[ForwardFn]
    batch_size: Optional[int]
    cache_inputs: Union[bool, str]
    probe_loader_kwargs: Optional[dict[str, Any]]
    reuse_validation: bool
    device: Optional[torch.device]
    dtype: Optional[torch.dtype]
    prefix: str
    log_spectrum: bool
    save_raw: bool
    solver: str

    @classmethod
    def build(cls, arguments: Mapping[str, Any]) -> "MonitorConfig":
        """Validate every argument of the monitor, given by name (the defaults live with the
        signature, on ``DSEMonitorCore``); a ``ValueError`` names the argument, what it got
        and what it takes.

        >>> from dse_monitor.monitor import DSEMonitorCore
        >>> DSEMonitorCore(metrics="dse", sigma=1).config.sigma
        1.0
        >>> DSEMonitorCore(metrics=["dse", "entropy"])
        Traceback (most recent call last):
        ...
        ValueError: metrics must be distinct names among ('dse', 'dsmi_y', 'dsmi_x', 'cse', 'csmi_y', 'csmi_x', 'dse_norm'), got ['dse', 'entropy']
        """
        given, names = set(arguments), set(_CHECKS)
        if given != names:
            raise TypeError(f"MonitorConfig.build takes every argument of the monitor by name; missing "
                            f"{sorted(names - given)}, unknown {sorted(given - names)}")
        a = dict(arguments)
        if a["every_n_epochs"] is not None and a["every_n_train_steps"] is not None:
            raise ValueError(
                f"pass every_n_epochs or every_n_train_steps, not both (got every_n_epochs={a['every_n_epochs']!r}, "
                f"every_n_train_steps={a['every_n_train_steps']!r}): with a step cadence the monitor does not also "
                "measure at epoch ends."
            )
        if a["every_n_train_steps"] is None and a["every_n_epochs"] is None:
            a["every_n_epochs"] = 1
        return cls(**{name: check(a[name]) for name, check in _CHECKS.items()})

    # ------------------------------------------------------------------ derived
    def references(self) -> set[str]:
        """The references the chosen metrics need (``"labels"``, ``"inputs"``)."""
        return {METRICS[m].reference for m in self.metrics if METRICS[m].reference is not None}

    def metrics_needing(self, reference: str) -> list[str]:
        return [m for m in self.metrics if METRICS[m].reference == reference]

    def settings(self) -> MetricSettings:
        """The settings of every metric, before :mod:`.policies` makes sigma and t numbers per layer."""
        return MetricSettings(
            sigma=self.sigma, t=self.t, seed=self.seed, dtype=self.dtype, solver=self.solver,
            num_repetitions=self.num_repetitions,
        )

    def key(self, layer: str, metric: str) -> str:
        """The logged key: ``<prefix>/<layer>/<metric>``."""
        return metric_key(self.prefix, layer, metric)

    def probe_name(self) -> str:
        return self.probe if isinstance(self.probe, str) else type(self.probe).__name__


def _check_probe(probe: Any) -> Any:
    if isinstance(probe, str) and probe not in PROBES:
        raise ValueError(f"probe must be 'val', 'train', a Dataset or a DataLoader, got {probe!r}")
    return probe


def _check_t(t: Any) -> Union[float, str]:
    if isinstance(t, str) and t in T_POLICIES:
        return t
    if isinstance(t, (bool, str)) or not isinstance(t, (int, float)) or not t > 0 or not math.isfinite(t):
        raise ValueError(f"t must be a positive number or 'knee' (chosen from the data), got {t!r}")
    return float(t)


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


#: One check per argument, in the order of the fields: each returns the normalised value or raises.
_CHECKS: dict[str, Callable[[Any], Any]] = {
    "layers": _check_layers,
    "probe": _check_probe,
    "num_samples": _int("num_samples", 2),
    "seed": _int("seed", 0, allow_none=False),
    "every_n_epochs": _int("every_n_epochs", 1),
    "every_n_train_steps": _int("every_n_train_steps", 1),
    "at_init": bool,
    "metrics": _check_metrics,
    "sigma": _check_sigma,
    "t": _check_t,
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
    "device": lambda d: torch.device(d) if d is not None else None,
    "dtype": parse_dtype,
    "prefix": _check_prefix,
    "log_spectrum": bool,
    "save_raw": bool,
    "solver": check_solver,
}
