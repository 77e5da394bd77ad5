"""The DSE monitor for the ``pytorch_lightning`` package (``import pytorch_lightning as pl``).

Same arguments and behaviour as :class:`dse_monitor.DSEMonitor` (the docstring of
:class:`~dse_monitor.monitor.hooks.DSEMonitorCore`), with ``pytorch_lightning.Callback``
as base so that a ``pytorch_lightning.Trainer`` accepts it. Imports nothing of
``lightning``. Checkpoints are interchangeable: the state key is the same.
"""
from __future__ import annotations

from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import TensorBoardLogger

from .monitor.hooks import DSEMonitorCore, DSEMonitorWarning

__all__ = ["DSEMonitor", "DSEMonitorWarning"]


class DSEMonitor(DSEMonitorCore, Callback):
    __doc__ = DSEMonitorCore.__doc__
    _tensorboard_loggers = (TensorBoardLogger,)
