"""The monitor, split by concern; :class:`DSEMonitorCore` sequences the rest.

===================  ====================================================================
module               its one job
===================  ====================================================================
``config``           the settings and their defaults, validated once into a typed :class:`MonitorConfig`
``probe``            the probe set: source lookup, indices, per-rank shards, preflight, gather
``collect``          one probe pass: the model runs, hooks read the layers (rng forked)
``compute``          pure: features + reference groups -> a :class:`Measurement`
``standalone``       the Trainer-free measurement: probe pass + compute (:func:`measure`)
``sinks``            callback_metrics, loggers, TensorBoard extras (``tensorboard``), raw files
``state``            the versioned checkpoint state
``report``           warnings and info lines, each said as often as it should be
``callback_core``    :class:`DSEMonitorCore`: arguments, settings as attributes, read-outs
``lightning_hooks``  the Lightning hooks, shared by both distributions' thin classes
``sequencing``       one measurement of the callback: probe, gather, compute, broadcast, sinks
===================  ====================================================================
"""
from .compute import Measurement, ReferenceGroups, compute_measurement, make_groups
from .callback_core import DSEMonitorCore
from .config import MonitorConfig
from .standalone import measure
from .report import DSEMonitorWarning
from .state import STATE_VERSION, MonitorState

__all__ = [
    "DSEMonitorCore",
    "DSEMonitorWarning",
    "Measurement",
    "MonitorConfig",
    "MonitorState",
    "ReferenceGroups",
    "STATE_VERSION",
    "compute_measurement",
    "make_groups",
    "measure",
]
