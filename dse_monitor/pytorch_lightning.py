"""The DSE monitor for the ``pytorch_lightning`` package (``import pytorch_lightning as pl``).

Same arguments and behaviour as :class:`dse_monitor.DSEMonitor` (see its docstring),
with ``pytorch_lightning.Callback`` as base so that a ``pytorch_lightning.Trainer``
accepts it. Checkpoints are interchangeable: the state key is the same.
"""
from __future__ import annotations

from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import TensorBoardLogger

from ._monitor_core import DSEMonitorCore
from .callback import DOC

__all__ = ["DSEMonitor"]


class DSEMonitor(DSEMonitorCore, Callback):
    __doc__ = DOC
    _tensorboard_loggers = (TensorBoardLogger,)
