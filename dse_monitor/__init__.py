"""dse-monitor: diffusion spectral entropy and mutual information of neural representations.

The functional core is re-exported here; the Lightning callback lives in
:mod:`dse_monitor.callback`.
"""
from .functional import *  # noqa: F401,F403
from .functional import __all__ as _functional_all

from .callback import DSEMonitor  # noqa: E402  (the lightning.pytorch callback)

__version__ = "0.1.0"
__all__ = [*_functional_all, "DSEMonitor"]
