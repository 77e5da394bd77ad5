"""Input conversion and validation shared by the functional core.

Every public function accepts torch tensors (any device) or numpy arrays and fails
early, with a message that names the problem and the fix, instead of returning NaN.
"""
from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch

# The reference package adds numpy's float64 machine epsilon to every probability.
EPS = float(np.finfo(np.float64).eps)


def as_tensor(x: Any, name: str) -> torch.Tensor:
    """Return ``x`` as a torch tensor, sharing memory with numpy input when possible."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    try:
        return torch.as_tensor(np.asarray(x))
    except Exception as err:  # pragma: no cover - message only
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}") from err


def compute_dtype(z: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    """float64 unless the caller asks for another floating dtype."""
    if dtype is None:
        return torch.float64
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64 (what the eigen-solvers support), got {dtype}")
    return dtype


def check_features(z: Any, name: str = "z", dtype: torch.dtype | None = None) -> torch.Tensor:
    """Validate a feature matrix [N, D] and cast it to the compute dtype.

    Raises ``ValueError`` for a wrong number of dimensions, an empty set, zero
    features, or NaN/Inf rows.
    """
    t = as_tensor(z, name)
    if t.ndim != 2:
        hint = " Reshape it with z.reshape(len(z), -1) (one row per sample)." if t.ndim > 0 else ""
        raise ValueError(f"{name} must have shape [N, D] (one row per sample); got shape {tuple(t.shape)}.{hint}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}): at least one sample is needed.")
    if t.shape[1] == 0:
        raise ValueError(f"{name} has no features (shape {tuple(t.shape)}): D must be at least 1.")
    t = t.to(compute_dtype(t, dtype))
    # A sum is finite only if every entry is: one cheap reduction on the common path,
    # the row-by-row check only to name the bad rows (or rule out an overflowing sum).
    if bool(torch.isfinite(t.sum())):
        return t
    finite = torch.isfinite(t).all(dim=1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten()
        shown = ", ".join(str(int(i)) for i in bad[:5])
        more = "" if bad.numel() <= 5 else f" and {bad.numel() - 5} more"
        raise ValueError(
            f"{name} has {bad.numel()} row(s) with NaN or Inf (rows {shown}{more}); "
            "drop or repair them before computing entropies (diverged training?)."
        )
    return t


def check_int(value: Any, name: str, minimum: int = 1, *, allow_none: bool = False) -> int | None:
    """``value`` if it is an integer >= ``minimum`` (or None when allowed), else a ``ValueError`` naming it.

    >>> check_int(3, "k"), check_int(None, "k", allow_none=True)
    (3, None)
    >>> check_int(True, "k")
    Traceback (most recent call last):
    ...
    ValueError: k must be a positive integer, got True
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        extra = " or None" if allow_none else ""
        raise ValueError(f"{name} must be {kind}{extra}, got {value!r}")
    return value


def check_positive(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def check_max_n(max_n: int | None) -> int | None:
    return check_int(max_n, "max_n", 1, allow_none=True)


def subsample_indices(n: int, k: int, seed: int) -> list[int]:
    """Indices of a seeded sample of ``k`` out of ``n``, drawn as the reference package draws.

    ``random.Random(seed).sample(range(n), k)``: the same draw as the reference's
    ``random.seed(seed); random.sample(range(n), k)``, without touching global state.

    >>> subsample_indices(10, 3, seed=0)
    [6, 9, 0]
    """
    return random.Random(seed).sample(range(n), k)


def prepare_features(z: Any, *, dtype: torch.dtype | None, max_n: int | None, seed: int) -> torch.Tensor:
    """Validated features in the compute dtype, subsampled (the reference's seeded draw) above ``max_n`` rows."""
    x = check_features(z, dtype=dtype)
    max_n = check_max_n(max_n)
    if max_n is not None and x.shape[0] > max_n:
        return x[subsample_indices(x.shape[0], max_n, seed)]
    return x


class NotApplicable(ValueError):
    """The metric is undefined for these features (the message says why); nothing should be logged."""
