"""Keyword flags kept for one release after their replacement: each use warns, naming the new call."""
from __future__ import annotations

import warnings


def warn_deprecated(old: str, new: str) -> None:
    """A ``DeprecationWarning`` at the caller of the public function that calls this.

    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_deprecated("f(flag=True)", "f_details(...)")
    >>> print(caught[0].category.__name__, caught[0].message)
    DeprecationWarning f(flag=True) is deprecated and will be removed in the next release; use f_details(...) instead.
    """
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release; use {new} instead.",
        DeprecationWarning,
        stacklevel=3,
    )
