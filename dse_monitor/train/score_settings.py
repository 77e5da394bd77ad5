"""The settings of ``dse-monitor score``: what makes two rows of ``scores.csv`` comparable (the split and
the monitor's settings, validated as the monitor validates them, with the policies that apply to a
model measured once), the columns each row holds and the strings recorded in it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from ..monitor import MonitorConfig
from ..monitor.config import check_sigma, check_t
from ..registry import logged_names

__all__ = ["MEDIAN_INIT_REFUSED", "SPLITS", "ScoreSettings"]

SPLITS = ("val", "train", "test")
#: score measures each model once: the monitor's policy for a run's later measurements does not apply.
MEDIAN_INIT_REFUSED = (
    "sigma='median_init' freezes the median bandwidth of a run's first measurement for its later "
    "ones; score measures each model once, so it would be 'median' (each model's own median) "
    "or the first model's median imposed on all (a ranking that depends on the order). Use "
    "'median', 'sqrt_dim' (the paper's choice here) or a number shared by every model."
)


@dataclass(frozen=True)
class ScoreSettings:
    """Everything that makes two rows comparable: the split and the monitor's settings (its validation,
    with sigma a number, ``"sqrt_dim"`` or ``"median"`` and t a number); recorded in every row.

    >>> ScoreSettings.of(sigma=10).record()["sigma"], ScoreSettings.of().record()["n_clusters"]
    ('10.0', 'classes')
    """

    split: str
    config: MonitorConfig

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be 'val', 'train' or 'test', got {self.split!r}")
        check_sigma(self.config.sigma, ("sqrt_dim", "median"), refused={"median_init": MEDIAN_INIT_REFUSED})
        check_t(self.config.t, policies=())

    @classmethod
    def of(cls, split: str = "val", *, sigma: Union[float, str] = "sqrt_dim", dtype: str = "float64",
           **settings: Any) -> "ScoreSettings":
        """The settings of ``score``: the penultimate layer, its defaults (sqrt(D), float64), the rest as given."""
        return cls(split, MonitorConfig(layers="penultimate", sigma=sigma, dtype=dtype, **settings))

    @property
    def columns(self) -> list[str]:
        """The names each model's row holds: every logged name of every metric (``alpha_req_r2``, ``dse_t<t>``)."""
        settings = self.config.settings()
        # each name once: alpha_req also logs alpha_req_r2, which may be asked for itself
        return list(dict.fromkeys(name for metric in self.config.metrics for name in logged_names(metric, settings)))

    def record(self) -> dict[str, str]:
        """The settings as the strings written to (and compared in) ``scores.csv``."""
        c = self.config
        return {
            "split": self.split,
            "num_samples": "all" if c.num_samples is None else str(c.num_samples),
            "seed": str(c.seed),
            "sigma": c.sigma if isinstance(c.sigma, str) else repr(float(c.sigma)),
            "t": repr(float(c.t)),
            "n_clusters": "classes" if c.n_clusters is None else str(c.n_clusters),
            "x_size": "none" if c.x_size is None else str(c.x_size),
            "metrics": "+".join(c.metrics),
            "dtype": str(c.dtype).replace("torch.", ""),
            "num_repetitions": str(c.num_repetitions),
        }
