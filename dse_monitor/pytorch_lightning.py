"""The DSE monitor for the ``pytorch_lightning`` package (``import pytorch_lightning as pl``).

Same arguments and behaviour as :class:`dse_monitor.DSEMonitor` (the docstring of
:class:`~dse_monitor.monitor.callback_core.DSEMonitorCore`), with ``pytorch_lightning.Callback``
as base so that a ``pytorch_lightning.Trainer`` accepts it. Imports nothing of
``lightning``. Checkpoints are interchangeable: the state key is the same.
"""
from __future__ import annotations

from ._extras import import_distribution

import_distribution("pytorch_lightning", "pip install pytorch-lightning", "dse_monitor.pytorch_lightning.DSEMonitor",
                    instead="with lightning: from dse_monitor import DSEMonitor")

from pytorch_lightning.callbacks import Callback  # noqa: E402
from pytorch_lightning.loggers import TensorBoardLogger  # noqa: E402
from pytorch_lightning.utilities import rank_zero_info  # noqa: E402

from .monitor.callback_core import DSEMonitorCore, DSEMonitorWarning  # noqa: E402

__all__ = ["DSEMonitor", "DSEMonitorWarning"]


class DSEMonitor(DSEMonitorCore, Callback):
    __doc__ = DSEMonitorCore.__doc__
    _tensorboard_loggers = (TensorBoardLogger,)
    _rank_zero_info = staticmethod(rank_zero_info)  # info lines show where Lightning's own do
