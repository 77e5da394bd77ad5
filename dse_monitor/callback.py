"""The Lightning callback: ``Trainer(callbacks=[DSEMonitor()])`` and the DSE curves appear in the logs.

This is the class for the ``lightning`` package (``import lightning.pytorch as pl``);
:mod:`dse_monitor.pytorch_lightning` holds the same callback for ``pytorch_lightning``.
The logic lives in :class:`dse_monitor._monitor_core.DSEMonitorCore`.
"""
from __future__ import annotations

from ._extras import import_distribution

import_distribution("lightning", "pip install lightning", "dse_monitor.DSEMonitor",
                    instead="with pytorch_lightning: from dse_monitor.pytorch_lightning import DSEMonitor")

from lightning.pytorch.callbacks import Callback  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402

from ._monitor_core import DEFAULT_METRICS, DOC, METRICS, DSEMonitorCore, DSEMonitorWarning  # noqa: E402

__all__ = ["DEFAULT_METRICS", "DSEMonitor", "DSEMonitorWarning", "METRICS"]


class DSEMonitor(DSEMonitorCore, Callback):
    __doc__ = DOC
    _tensorboard_loggers = (TensorBoardLogger,)
