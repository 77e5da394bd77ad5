"""The monitor's configuration: one typed, validated, immutable record of its arguments.

Every argument is checked here, when the callback is built, so that a typo fails
before a Trainer exists; the arguments' meaning is documented on
:class:`~dse_monitor.monitor.hooks.DSEMonitorCore`, where the signature is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch.utils.data import DataLoader, Dataset

from ..capture.pooling import Pooling, check_pooling
from ..capture.forward import ForwardFn
from ..functional.diffusion_time import T_MAX
from ..functional._checks import check_int
from ..functional.solver import check_solver
from ..registry import DEFAULT_METRICS, METRICS, MetricSettings

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
    device: Optional[torch.device]
    dtype: Optional[torch.dtype]
    prefix: str
    log_spectrum: bool
    save_raw: bool
    solver: str

    @classmethod
    def build(
        cls,
        layers: Union[str, Sequence[str]] = "penultimate",
        probe: Union[str, Dataset, DataLoader] = "val",
        num_samples: Optional[int] = 1000,
        seed: int = 0,
        every_n_epochs: Optional[int] = None,
        every_n_train_steps: Optional[int] = None,
        at_init: bool = True,
        metrics: Union[str, Sequence[str]] = DEFAULT_METRICS,
        sigma: Union[float, str] = 10.0,
        t: Union[float, str] = 1.0,
        t_max: int = T_MAX,
        num_repetitions: int = 5,
        n_clusters: Optional[int] = None,
        x_size: Optional[int] = 64,
        pooling: Pooling = "mean",
        batch_fn: Optional[BatchFn] = None,
        forward_fn: Optional[ForwardFn] = None,
        batch_size: Optional[int] = None,
        device: Union[str, torch.device, None] = None,
        dtype: Union[str, torch.dtype, None] = None,
        prefix: str = "dse",
        log_spectrum: bool = True,
        save_raw: bool = False,
        solver: str = "auto",
    ) -> "MonitorConfig":
        """Validate the arguments; a ``ValueError`` names the argument, what it got and what it takes.

        >>> MonitorConfig.build(metrics="dse", sigma=1).sigma
        1.0
        >>> MonitorConfig.build(metrics=["dse", "entropy"])
        Traceback (most recent call last):
        ...
        ValueError: metrics must be distinct names among ('dse', 'dsmi_y', 'dsmi_x', 'cse', 'csmi_y', 'csmi_x', 'dse_norm'), got ['dse', 'entropy']
        """
        if isinstance(probe, str) and probe not in PROBES:
            raise ValueError(f"probe must be 'val', 'train', a Dataset or a DataLoader, got {probe!r}")
        if not (isinstance(t, str) and t in T_POLICIES) and (
            isinstance(t, (bool, str)) or not isinstance(t, (int, float)) or not t > 0 or not math.isfinite(t)
        ):
            raise ValueError(f"t must be a positive number or 'knee' (chosen from the data), got {t!r}")
        if batch_fn is not None and not callable(batch_fn):
            raise ValueError(f"batch_fn must be callable, got {batch_fn!r}")
        if forward_fn is not None and not callable(forward_fn):
            raise ValueError(f"forward_fn must be callable as forward_fn(module, batch), got {forward_fn!r}")
        if every_n_epochs is not None and every_n_train_steps is not None:
            raise ValueError(
                f"pass every_n_epochs or every_n_train_steps, not both (got every_n_epochs={every_n_epochs!r}, "
                f"every_n_train_steps={every_n_train_steps!r}): with a step cadence the monitor does not also "
                "measure at epoch ends."
            )
        if every_n_train_steps is None:
            every_n_epochs = 1 if every_n_epochs is None else every_n_epochs
        if not isinstance(prefix, str) or not prefix or "/" in prefix:
            raise ValueError(f"prefix must be a non-empty string without '/', got {prefix!r}")
        return cls(
            layers=_check_layers(layers),
            probe=probe,
            num_samples=check_int(num_samples, "num_samples", 2, allow_none=True),
            seed=check_int(seed, "seed", 0),
            every_n_epochs=check_int(every_n_epochs, "every_n_epochs", 1, allow_none=True),
            every_n_train_steps=check_int(every_n_train_steps, "every_n_train_steps", 1, allow_none=True),
            at_init=bool(at_init),
            metrics=_check_metrics(metrics),
            sigma=_check_sigma(sigma),
            t=t if isinstance(t, str) else float(t),
            t_max=check_int(t_max, "t_max", 1),
            num_repetitions=check_int(num_repetitions, "num_repetitions", 1),
            n_clusters=check_int(n_clusters, "n_clusters", 1, allow_none=True),
            x_size=check_int(x_size, "x_size", 1, allow_none=True),
            pooling=check_pooling(pooling),
            batch_fn=batch_fn,
            forward_fn=forward_fn,
            batch_size=check_int(batch_size, "batch_size", 1, allow_none=True),
            device=torch.device(device) if device is not None else None,
            dtype=parse_dtype(dtype),
            prefix=prefix,
            log_spectrum=bool(log_spectrum),
            save_raw=bool(save_raw),
            solver=check_solver(solver),
        )

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
        return f"{self.prefix}/{layer}/{metric}"

    def probe_name(self) -> str:
        return self.probe if isinstance(self.probe, str) else type(self.probe).__name__
