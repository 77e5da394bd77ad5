"""The measurement sequence of the callback: probe pass, gather, compute on rank zero, broadcast, sinks.

One measurement, top to bottom::

    probe set (ProbeSet: this rank's share)  ->  collect (hooks, pooled features)
      -> gather (probe order)  ->  compute (rank 0: measure_features -> a Measurement)
      -> broadcast  ->  state.history  ->  sinks (callback_metrics; rank 0: loggers, TensorBoard, files)

The probe pass and the compute step are those of the Trainer-free
:func:`~dse_monitor.monitor.standalone.measure`; this class adds what a training run needs
around them (validation reuse, the ranks' shares and the gather, state, sinks).
"""
from __future__ import annotations

import time
from typing import Any, Optional, Union

import torch

from .collect import isolated_rng
from ..functional.choices import adopt_choices, calibrate_auto, measured_choices
from .collect import ProbeFeatures
from .compute import Measurement, ReferenceGroups, compute_measurement, make_groups, merge_measurements
from .config import MonitorConfig
from .probe import ProbeSet
from .report import Reporter
from .reuse import ValidationReuse
from .row_sharding import lanczos_for_auto, rank_group, shards_dse
from .schedule import Position
from .shares import Share
from .sinks import Sinks
from .standalone import measure_features
from .state import MonitorState


class MonitorParts:
    """What :class:`~dse_monitor.monitor.callback_core.DSEMonitorCore` holds, declared for its mixins."""

    config: MonitorConfig
    history: dict[int, dict[str, float]]
    positions: dict[int, dict[str, Optional[int]]]
    last_duration_s: Optional[float]
    #: The last measurement (values, spectra, notes, which rank computed what); None before the first.
    last_measurement: Optional[Measurement]
    _probe: ProbeSet
    _state: MonitorState
    _groups: ReferenceGroups
    _reporter: Reporter
    _reuse: ValidationReuse
    _sinks: Sinks
    _last_global_step: int
    _previous: dict[str, torch.Tensor]


class MeasurementSequence(MonitorParts):
    """:meth:`measure` and its preflight; mixed into :class:`~dse_monitor.monitor.callback_core.DSEMonitorCore`."""

    def _prepare(self, trainer: Any, pl_module: Any) -> None:
        self._probe.prepare(trainer, pl_module, self._state, lambda m: self._warn(trainer, m),
                            lambda m: self._reporter.info(trainer, m))

    def _warn(self, trainer: Any, message: str) -> None:
        self._reporter.warn(trainer, message)

    def measure(self, trainer: Any, pl_module: Any, position: Union[int, Position]) -> Optional[dict[str, float]]:
        """Probe, compute and log; returns the logged values (None when skipped).

        ``position``: where the measurement goes (an int: that history key, logged at that
        step). Must be called on every rank (it gathers and broadcasts).
        """
        if not isinstance(position, Position):
            position = Position(int(position), int(position), int(trainer.global_step), int(position))
        step = position.key
        start = time.perf_counter()
        with isolated_rng(pl_module.device), torch.no_grad():
            if not self._probe.layers:  # called without on_fit_start (e.g. by hand)
                self._prepare(trainer, pl_module)
            want_labels, want_inputs = self._groups.still_needed(self.config)
            info = lambda m: self._reporter.info(trainer, m)  # noqa: E731
            reused = None if want_labels or want_inputs else self._reuse.take(trainer, position.global_step, info)
            if reused is not None and self._reuse.verified and self._reuse.spot_check(
                    trainer, reused, self._probe.spot_features(trainer, pl_module), info):
                features = reused
            else:
                features = self._probe.run(trainer, pl_module, self._state.indices, step,
                                           want_labels=want_labels, want_inputs=want_inputs)
                if reused is not None and features is not None and not self._reuse.verified:
                    self._reuse.verify(trainer, reused, features, info)
        if features is None:
            self.last_duration_s = time.perf_counter() - start
            return None
        if trainer.world_size > 1 and self.config.split_over_ranks:
            measurement = self._compute_split(trainer, features, step)
        else:
            measurement = self._compute_on_rank_zero(trainer, features, step)
        self._reporter.measurement(trainer, measurement)
        self.last_measurement = measurement
        groups = measurement.groups
        self._groups = ReferenceGroups(groups.labels, groups.inputs, groups.labels_failed, groups.inputs_failed)
        self.last_duration_s = time.perf_counter() - start
        if not measurement.values:
            return None
        self.history[step] = dict(measurement.values)
        self.positions[step] = {"epoch": position.epoch, "global_step": position.global_step, "step": position.step}
        self._sinks.write(trainer, measurement, position, self._state, self._probe.layer_names,
                          lambda m: self._warn(trainer, m))
        return measurement.values

    def _compute_on_rank_zero(self, trainer: Any, features: ProbeFeatures, step: int) -> Measurement:
        """Rank 0 computes every metric; the result (and the groups, the frozen scales) is broadcast."""
        payload = None
        if trainer.is_global_zero:
            try:
                measurement = measure_features(self.config, features, self._groups, step, self._state.frozen,
                                               previous=self._previous)
                payload = (measurement, self._state.frozen)
            except Exception as err:  # rank 0 must still reach the broadcast below
                self._warn(trainer, f"DSEMonitor: the measurement at epoch {step} failed "
                                    f"({type(err).__name__}: {err}); skipping it.")
                payload = (Measurement(step, groups=self._groups), self._state.frozen)
        if trainer.world_size > 1:
            payload = trainer.strategy.broadcast(payload, src=0)
        measurement, self._state.frozen = payload
        return measurement

    def _compute_split(self, trainer: Any, features: ProbeFeatures, step: int) -> Measurement:
        """Every rank computes its share (:mod:`.shares`); the parts go to every rank and are merged there.

        The reference groups (the input clustering) are completed once, on rank 0, and broadcast
        first. A rank whose share fails sends an empty part that says so; the others' values are kept.
        """
        groups = None
        if trainer.is_global_zero:
            try:
                groups = make_groups(self.config, self._groups, features.labels, features.inputs,
                                     features.why_no_inputs)
            except Exception as err:  # noqa: BLE001 - the metrics of a missing grouping are then given up
                known = self._groups
                groups = ReferenceGroups(known.labels, known.inputs, known.labels is None, known.inputs is None,
                                         [f"DSEMonitor: the reference groups failed ({type(err).__name__}: {err})."])
            # solver="auto" must take the same path on every rank: rank 0's crossover, measured first;
            # and rank 0 alone decides whether DSE's kernel rows are split (every rank must agree)
            zs = list(features.features.values())
            split_rows = False
            try:
                if zs:
                    calibrate_auto(max(int(z.shape[0]) for z in zs), self.config.solver,
                                   self.config.dtype or torch.float64)
                split_rows = shards_dse(self.config, len(self._state.indices)) and \
                    lanczos_for_auto(self.config, features)
            except Exception:  # noqa: BLE001 - then no split kernel; each rank measures its own crossover
                pass
            decided = (groups, measured_choices(), split_rows)
        groups, choices, split_rows = trainer.strategy.broadcast(decided if trainer.is_global_zero else None, src=0)
        adopt_choices([choices, measured_choices()])
        share = Share(int(trainer.global_rank), int(trainer.world_size))
        ranks = rank_group(trainer)
        frozen = self._state.frozen
        try:
            part = compute_measurement(self.config, features.features, groups, step, frozen,
                                       bad_inputs=features.bad_inputs, previous=self._previous, share=share,
                                       row_group=ranks if split_rows else None, subset_group=ranks)
        except Exception as err:  # noqa: BLE001 - this rank's values are lost, the others' are logged
            part = Measurement(step, groups=groups, notes=[
                f"DSEMonitor: rank {share.rank}'s share of the measurement at epoch {step} failed "
                f"({type(err).__name__}: {err}); its metrics are not logged at this epoch."])
        part.groups = None  # every rank has them
        try:
            parts = [trainer.strategy.broadcast((part, frozen, measured_choices()) if src == share.rank else None,
                                                src=src) for src in range(share.world)]
        except Exception as err:  # noqa: BLE001 - e.g. the strategy's collective timeout: a rank is gone
            return Measurement(step, groups=groups, notes=[
                f"DSEMonitor: the ranks could not exchange their shares of the measurement at epoch {step} "
                f"({type(err).__name__}: {str(err)[:200]}); skipping it."])
        adopt_choices([c for _, _, c in parts])  # the next measurement solves alike on every rank
        measurement = merge_measurements(self.config, [p for p, _, _ in parts], list(features.features),
                                         frozen, [f for _, f, _ in parts], self._previous)
        measurement.groups = groups
        return measurement
