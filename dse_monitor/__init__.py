"""dse-monitor: diffusion spectral entropy and mutual information of neural representations.

The functional core is re-exported here. :func:`measure` (one measurement without a
Trainer), the Lightning callback :class:`~dse_monitor.callback.DSEMonitor` (for the
``lightning`` package) and :class:`DSEMonitorWarning` are imported on first use, so that
the math alone needs neither Lightning nor the monitor; ``dse_monitor.pytorch_lightning.DSEMonitor`` is the
same callback for the ``pytorch_lightning`` package.
"""
from .functional import *  # noqa: F401,F403
from .functional import __all__ as _functional_all
from .loss import DSELoss

__version__ = "0.1.0"
# DSEMonitor, score and report are left out of __all__ so that `from dse_monitor import *` works without Lightning.
__all__ = [*_functional_all, "DSELoss", "DSEMonitorWarning", "measure"]


def __getattr__(name: str):
    if name == "DSEMonitor":
        from .callback import DSEMonitor  # the lightning.pytorch callback; names `pip install lightning` if absent

        return DSEMonitor
    if name == "score":
        from .train.score import score  # the cross-model study (needs the [train] extra)

        return score
    if name == "report":
        from .train.report import report  # the HTML page of a run (needs the [train] extra)

        return report
    if name == "measure":
        from .monitor.standalone import measure  # the Trainer-free measurement (no Lightning needed)

        return measure
    if name == "DSEMonitorWarning":
        from .monitor.report import DSEMonitorWarning  # no Lightning needed

        return DSEMonitorWarning
    raise AttributeError(f"module 'dse_monitor' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, "DSEMonitor", "report", "score"})
