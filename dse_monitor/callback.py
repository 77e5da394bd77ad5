"""The Lightning callback: ``Trainer(callbacks=[DSEMonitor()])`` and the DSE curves appear in the logs.

This is the class for the ``lightning`` package (``import lightning.pytorch as pl``);
:mod:`dse_monitor.pytorch_lightning` holds the same callback for ``pytorch_lightning``.
Both are :class:`~dse_monitor.monitor.callback_core.DSEMonitorCore` (the arguments and the
docstring live there) plus their package's ``Callback`` base.
"""
from __future__ import annotations

from ._extras import import_distribution

import_distribution("lightning", "pip install lightning", "dse_monitor.DSEMonitor",
                    instead="with pytorch_lightning: from dse_monitor.pytorch_lightning import DSEMonitor")

from lightning.pytorch.callbacks import Callback  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402
from lightning.pytorch.utilities import rank_zero_info  # noqa: E402

from .monitor.callback_core import DSEMonitorCore, DSEMonitorWarning  # noqa: E402
from .registry import DEFAULT_METRICS, metric_names  # noqa: E402

__all__ = ["DEFAULT_METRICS", "DSEMonitor", "DSEMonitorWarning", "METRICS"]

METRICS = metric_names()


class DSEMonitor(DSEMonitorCore, Callback):
    __doc__ = DSEMonitorCore.__doc__
    _tensorboard_loggers = (TensorBoardLogger,)
    _rank_zero_info = staticmethod(rank_zero_info)  # info lines show where Lightning's own do
