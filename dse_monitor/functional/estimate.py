"""What an approximate DSE solve returns (:class:`EntropyEstimate`), and the solver's default sizes.

Kept apart from :mod:`.lanczos` so that the solvers for other operators (:mod:`.indefinite`)
share them without importing the Lanczos driver that routes to them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

#: Defaults of :func:`approximate_entropy` that the cost model of ``solver="auto"`` uses.
DEFAULT_BLOCK = 32
DEFAULT_MAX_RANK = 256
DEFAULT_STEPS = 20
#: From this many points the N x k bookkeeping keeps the caller's threads too: each of its
#: products is then large enough that OpenMP's barriers cost little.
BOOKKEEPING_THREADS_N = 4096


@dataclass(frozen=True)
class EntropyEstimate:
    """A DSE value with its standard error and guaranteed bounds (bits).

    ``lower <= exact DSE <= upper`` always holds (for the operator as evaluated);
    ``std_error`` is the Monte-Carlo standard error of ``value``. For the exact solver
    ``lower == value == upper`` and ``std_error == 0``.
    """

    value: float
    std_error: float
    lower: float
    upper: float
    solver: str
    rank: int = 0  # deflated eigenpairs k
    n_probes: int = 0
    lanczos_steps: int = 0
    storage: str = "exact"  # "exact", "dense-float64", "dense-float32", "streamed-float64", ...
    seconds: float = 0.0
    info: dict = field(default_factory=dict, compare=False)

    @property
    def width(self) -> float:
        """``upper - lower`` in bits."""
        return self.upper - self.lower

    def __float__(self) -> float:
        return self.value
