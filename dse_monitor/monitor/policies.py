"""Per-layer sigma and t: the configured policy turned into numbers, frozen where the policy says so.

sigma policies:

- a number: absolute, on raw distances (the paper's; default 10, for parity);
- ``"sqrt_dim"``: sqrt(D) of the layer;
- ``"median"``: the median pairwise distance, recomputed at every measurement (the
  curve is then not on one scale: each point has its own bandwidth);
- ``"median_init"``: the median pairwise distance at the layer's first measurement,
  frozen for the run and stored in the checkpoint (comparable over the run, adapted
  to the architecture).

A median of 0 (collapsed features) falls back to the rule of
:func:`~dse_monitor.functional.median_sigma` (median of the nonzero distances, else the
RMS norm, else sqrt(D)) and says so.

The kNN kernel (``kernel="knn"``) has no global sigma (each row's bandwidth is its distance
to its k-th neighbour): whatever the policy, sigma is then not resolved, frozen, logged nor
warned about, and the layer's settings carry NaN for it.

t: a number, or ``"knee"``: the knee of the curve DSE(t), t = 1..t_max, from one exact
eigen-solve at the layer's first measurement (:func:`~dse_monitor.functional.diffusion_time_knee`),
frozen and stored like ``median_init``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional

import torch

from ..functional import MedianSigma, diffusion_eigenvalues, diffusion_time_knee, median_sigma
from ..functional.kernel import MEDIAN_SAMPLE
from ..functional.scale import SCALE_SAMPLE
from ..registry import MetricSettings
from .config import MonitorConfig


@dataclass
class Frozen:
    """Values chosen once per layer and kept for the run (and across a resume)."""

    sigma: dict[str, float] = field(default_factory=dict)
    t: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class LayerScale:
    """What one measurement of one layer runs with.

    ``settings``: numeric sigma and t; ``median``: the median pairwise distance (both NaN for
    the kNN kernel, which has no global sigma);
    ``frozen_now``: ``{"sigma"|"t": value}`` chosen at this measurement (logged once);
    ``warnings``: fallbacks to say; ``info``: what was chosen.
    """

    settings: MetricSettings
    median: float
    frozen_now: dict[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    info: tuple[str, ...] = ()


def layer_scale(config: MonitorConfig, layer: str, z: torch.Tensor, frozen: Frozen) -> LayerScale:
    """Numeric sigma and t for ``layer`` now; freezes the first-measurement choices into ``frozen``.

    Example:
        >>> cfg = MonitorConfig(sigma="median_init", metrics="dse")
        >>> frozen = Frozen()
        >>> z = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
        >>> layer_scale(cfg, "penultimate", z, frozen).settings.sigma, frozen.sigma
        (5.0, {'penultimate': 5.0})
        >>> layer_scale(cfg, "penultimate", 10 * z, frozen).settings.sigma   # frozen: not 50
        5.0
        >>> knn = layer_scale(MonitorConfig(sigma="median_init", metrics="dse", kernel="knn"), "penultimate", z, Frozen())
        >>> knn.settings.sigma, knn.frozen_now, knn.info    # the kNN kernel has no global sigma
        (nan, {}, ())
    """
    warnings: list[str] = []
    info: list[str] = []
    now: dict[str, float] = {}
    if config.kernel != "gaussian":  # the kNN kernel's bandwidths are per row: no sigma, no median to take
        value, median = float("nan"), float("nan")
    else:
        value, median = _gaussian_sigma(config, layer, z, frozen, now, warnings, info)
    t = config.t
    if t == "knee":
        if layer not in frozen.t:
            lam = diffusion_eigenvalues(z, value, seed=config.seed, dtype=config.dtype, kernel=config.kernel,
                                        k=config.k, alpha=config.alpha)
            frozen.t[layer] = diffusion_time_knee(lam, t_max=config.t_max)
            now["t"] = float(frozen.t[layer])
            at = f"sigma = {value:.4g}" if config.kernel == "gaussian" else f"kernel = {config.kernel!r}"
            info.append(f"DSEMonitor: t for layer {layer!r} frozen at {frozen.t[layer]}, the knee of DSE(t) over "
                        f"t = 1..{config.t_max} at the first measurement ({at}).")
        t = frozen.t[layer]
    settings = replace(config.settings(), sigma=value, t=float(t))
    return LayerScale(settings, median, now, tuple(warnings), tuple(info))


def _gaussian_sigma(config: MonitorConfig, layer: str, z: torch.Tensor, frozen: Frozen, now: dict[str, float],
                    warnings: list[str], info: list[str]) -> tuple[float, float]:
    """The Gaussian kernel's sigma for ``layer`` now and the median pairwise distance (``sigma_ratio``'s)."""
    # "median" uses the functional core's sample (so it equals sigma="median" there); the rest a
    # smaller one: the diagnostics' cost stays under 1% of an exact DSE at N = 4,000
    points = MEDIAN_SAMPLE if config.sigma == "median" else SCALE_SAMPLE
    scale = median_sigma(z, max_points=points, seed=config.seed, dtype=config.dtype)
    sigma = config.sigma
    if sigma == "median_init":
        if layer not in frozen.sigma:
            frozen.sigma[layer] = now["sigma"] = scale.sigma
            (warnings if scale.fell_back else info).append(_frozen_note(layer, scale))
        value = frozen.sigma[layer]
    elif sigma == "median":
        value = scale.sigma
        if scale.fell_back:
            warnings.append(f"DSEMonitor: sigma='median' for layer {layer!r}: {scale.describe()}.")
    elif sigma == "sqrt_dim":
        value = math.sqrt(z.shape[1])
    else:
        value = float(sigma)
    return value, scale.median


def _frozen_note(layer: str, scale: MedianSigma) -> str:
    return (f"DSEMonitor: sigma='median_init' for layer {layer!r} frozen at {scale.sigma:.4g} for the run "
            f"({scale.describe()}).")


def frozen_to_dict(frozen: Frozen) -> dict[str, dict[str, float]]:
    return {"sigma": dict(frozen.sigma), "t": dict(frozen.t)}


def frozen_from_dict(state: Optional[dict]) -> Frozen:
    state = state or {}
    return Frozen({k: float(v) for k, v in state.get("sigma", {}).items()},
                  {k: int(v) for k, v in state.get("t", {}).items()})
