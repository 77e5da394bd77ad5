"""dse-monitor: diffusion spectral entropy and mutual information of neural representations.

The functional core is re-exported here; the Lightning callback
:class:`~dse_monitor.callback.DSEMonitor` is imported on first use, so that the
math alone does not pay for importing Lightning.
"""
from .functional import *  # noqa: F401,F403
from .functional import __all__ as _functional_all
from .loss import DSELoss

__version__ = "0.1.0"
__all__ = [*_functional_all, "DSELoss", "DSEMonitor"]


def __getattr__(name: str):
    if name == "DSEMonitor":
        from .callback import DSEMonitor  # the lightning.pytorch callback

        return DSEMonitor
    raise AttributeError(f"module 'dse_monitor' has no attribute {name!r}")
