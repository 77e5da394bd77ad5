"""The diffusion time t from the data: DSE(t) from one spectrum, and its knee.

Once the eigenvalues of the diffusion operator are known, DSE at any t is a sum over
them (the entropy of ``|lambda|^t``, normalised), so the whole curve t = 1..t_max
costs N * t_max operations next to the N^3 solve. PHATE picks its diffusion time at
the knee of the analogous von Neumann entropy curve; :func:`knee_of_curve` uses the
same rule (a two-segment least-squares fit), written here for torch.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from ._checks import as_tensor
from .spectrum import shannon_bits

#: Default largest t tried by :func:`diffusion_time_knee` (PHATE's default too).
T_MAX = 100


def _check_spectrum(eigenvalues: Any) -> torch.Tensor:
    lam = as_tensor(eigenvalues, "eigenvalues")
    if lam.ndim == 0 or lam.shape[-1] == 0:
        raise ValueError(f"eigenvalues must be a non-empty spectrum [..., N], got shape {tuple(lam.shape)}")
    if not lam.is_floating_point():
        lam = lam.double()
    if not bool(torch.isfinite(lam).all()):
        raise ValueError("eigenvalues contain NaN or Inf: the eigen-solve failed; recompute the spectrum")
    return lam


def entropy_curve(eigenvalues: Any, ts: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """DSE(t) in bits for every ``t`` in ``ts``, from one spectrum.

        a_i(t) = |lambda_i|^t / sum_j |lambda_j|^t,   DSE(t) = -sum_i (a_i + eps) log2 (a_i + eps)

    exactly as :func:`~dse_monitor.functional.entropy_of_spectrum` computes it (with
    the reference's ``eps``), so ``entropy_curve(diffusion_eigenvalues(z, s), ts)[k]``
    equals ``diffusion_spectral_entropy(z, s, ts[k])`` to rounding (~1e-13 bits). Works
    along the last dimension: a spectrum [..., N] gives [..., len(ts)]. One eigenvalue
    (one point) gives 0, as DSE defines it.

    Example:
        >>> lam = torch.tensor([1.0, 0.5, 0.5, 0.0], dtype=torch.float64)
        >>> entropy_curve(lam, [1, 2]).round(decimals=4)
        tensor([1.5000, 1.2516], dtype=torch.float64)
    """
    lam = _check_spectrum(eigenvalues).abs()
    t = torch.as_tensor(ts, dtype=lam.dtype, device=lam.device)
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"ts must be a non-empty list of diffusion times, got shape {tuple(t.shape)}")
    if not bool((torch.isfinite(t) & (t > 0)).all()):
        raise ValueError(f"every t must be a positive finite number, got {t.tolist()}")
    if lam.shape[-1] == 1:
        return torch.zeros((*lam.shape[:-1], t.numel()), dtype=lam.dtype, device=lam.device)
    powered = lam.unsqueeze(-2) ** t.unsqueeze(-1)  # [..., T, N]
    return shannon_bits(powered / powered.sum(dim=-1, keepdim=True))


def _line_fit_error(x: np.ndarray, y: np.ndarray) -> float:
    """Sum of absolute residuals of the least-squares line through (x, y)."""
    xc = x - x.mean()
    slope = float((xc * (y - y.mean())).sum() / (xc * xc).sum())
    return float(np.abs(y - (y.mean() + slope * xc)).sum())


def knee_of_curve(ts: Sequence[int] | torch.Tensor, values: Sequence[float] | torch.Tensor) -> int:
    """The knee of a curve sampled at increasing integer ``ts``: the best two-line break.

    For each interior point b, fit one least-squares line to the points up to b and
    another to the points from b on (both include b); the knee is the ``ts[b]`` whose two
    fits leave the smallest sum of absolute residuals (PHATE's rule for its diffusion
    time). The result does not change under affine rescaling of either axis. It is an
    interior point, so ``ts[0] < knee < ts[-1]``, except for a flat curve (no knee:
    every t gives the same value), which gives ``ts[0]``.

    Example:
        >>> ts = list(range(1, 21))
        >>> knee_of_curve(ts, [max(10 - t, 5) for t in ts])   # falls until t = 5, then flat
        5
    """
    x = torch.as_tensor(ts).detach().cpu()
    y = torch.as_tensor(values).detach().cpu().double()
    if x.ndim != 1 or y.shape != x.shape:
        raise ValueError(f"ts and values must be 1-D and of one length, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.numel() < 3:
        raise ValueError(f"a knee needs at least 3 points of the curve, got {x.numel()}")
    if x.is_floating_point() and not bool((x == x.round()).all()):
        raise ValueError(f"ts must be integer diffusion times, got {x.tolist()}")
    x = x.long()
    if not bool((x[1:] > x[:-1]).all()) or int(x[0]) < 1:
        raise ValueError(f"ts must be strictly increasing positive integers, got {x.tolist()}")
    if not bool(torch.isfinite(y).all()):
        raise ValueError("values contain NaN or Inf")
    yv = y.numpy()
    if float(yv.max() - yv.min()) <= 1e-12 * max(1.0, float(np.abs(yv).max())):
        return int(x[0])
    xv = x.double().numpy()
    errors = [_line_fit_error(xv[: b + 1], yv[: b + 1]) + _line_fit_error(xv[b:], yv[b:])
              for b in range(1, len(xv) - 1)]
    return int(x[1 + int(np.argmin(errors))])


def diffusion_time_knee(eigenvalues: Any, t_max: int = T_MAX) -> int:
    """The diffusion time at the knee of DSE(t), t = 1..t_max, from one spectrum.

    :func:`entropy_curve` over ``1..t_max`` and its :func:`knee_of_curve`: an integer in
    [1, t_max] (in [2, t_max - 1] unless the curve is flat, which gives 1). Meant for
    ``t="knee"``: choose it at a layer's first measurement and freeze it.

    Example:
        >>> from dse_monitor.functional import diffusion_eigenvalues
        >>> lam = diffusion_eigenvalues(torch.linspace(0, 30, 200).unsqueeze(1), sigma=1.0)
        >>> t = diffusion_time_knee(lam, t_max=50)
        >>> isinstance(t, int) and 1 <= t <= 50
        True
    """
    if isinstance(t_max, bool) or not isinstance(t_max, int) or t_max < 3:
        raise ValueError(f"t_max must be an integer >= 3 (a knee needs 3 points of DSE(t)), got {t_max!r}")
    ts = list(range(1, t_max + 1))
    curve = entropy_curve(eigenvalues, ts)
    if curve.ndim != 1:
        raise ValueError(f"diffusion_time_knee takes one spectrum [N], got shape {tuple(curve.shape[:-1])} of them")
    return knee_of_curve(ts, curve)


def log_spectrum(eigenvalues: Any, floor: float = 1e-16) -> torch.Tensor:
    """``log10 max(|lambda|, floor)``: the spectrum on the axis where its structure shows.

    The diffusion spectrum lies in [0, 1] with most eigenvalues near 0, so a histogram
    on a linear axis is one spike at 0. In log10: 0 is lambda = 1 (one per connected
    component: the stationary mode); -1 is lambda = 0.1, which diffusion time t weighs
    as 10^-t; values at or near ``log10(floor) = -16`` are zero modes in float64
    rounding (the solver resolves ~N * 1e-16). A bulk near 0 means many slow modes
    (spread features: DSE near log2 N), a bulk near the floor a low-rank operator
    (features within sigma of each other: DSE near 0).

    Example:
        >>> log_spectrum(torch.tensor([1.0, 0.1, 1e-3, 0.0, -1e-20], dtype=torch.float64))
        tensor([  0.,  -1.,  -3., -16., -16.], dtype=torch.float64)
    """
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not (math.isfinite(floor) and floor > 0):
        raise ValueError(f"floor must be a positive finite number, got {floor!r}")
    return _check_spectrum(eigenvalues).abs().clamp_min(floor).log10()
