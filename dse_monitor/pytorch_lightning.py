"""The DSE monitor for the ``pytorch_lightning`` package (``import pytorch_lightning as pl``).

Same arguments and behaviour as :class:`dse_monitor.DSEMonitor` (see its docstring),
with ``pytorch_lightning.Callback`` as base so that a ``pytorch_lightning.Trainer``
accepts it. Checkpoints are interchangeable: the state key is the same.
"""
from __future__ import annotations

from ._extras import import_distribution

import_distribution("pytorch_lightning", "pip install pytorch-lightning", "dse_monitor.pytorch_lightning.DSEMonitor",
                    instead="with lightning: from dse_monitor import DSEMonitor")

from pytorch_lightning.callbacks import Callback  # noqa: E402
from pytorch_lightning.loggers import TensorBoardLogger  # noqa: E402

from ._monitor_core import DOC, DSEMonitorCore  # noqa: E402

__all__ = ["DSEMonitor"]


class DSEMonitor(DSEMonitorCore, Callback):
    __doc__ = DOC
    _tensorboard_loggers = (TensorBoardLogger,)
