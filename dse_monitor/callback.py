"""The Lightning callback: ``Trainer(callbacks=[DSEMonitor()])`` and the DSE curves appear in the logs.

This is the class for the ``lightning`` package (``import lightning.pytorch as pl``);
:mod:`dse_monitor.pytorch_lightning` holds the same callback for ``pytorch_lightning``.
Both are :class:`~dse_monitor.monitor.hooks.DSEMonitorCore` (the arguments and the
docstring live there) plus their package's ``Callback`` base.
"""
from __future__ import annotations

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

from .monitor.hooks import DSEMonitorCore, DSEMonitorWarning
from .registry import DEFAULT_METRICS, metric_names

__all__ = ["DEFAULT_METRICS", "DSEMonitor", "DSEMonitorWarning", "METRICS"]

METRICS = metric_names()


class DSEMonitor(DSEMonitorCore, Callback):
    __doc__ = DSEMonitorCore.__doc__
    _tensorboard_loggers = (TensorBoardLogger,)
