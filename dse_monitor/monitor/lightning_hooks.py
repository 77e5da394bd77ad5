"""The Lightning hooks of the monitor: when to measure, validation reuse, and the fit's lifecycle.

``lightning.pytorch.Callback`` and ``pytorch_lightning.Callback`` are distinct classes,
so one callback class cannot serve both. These hooks import neither package; they use
only the trainer's public, duck-typed surface (``loggers``, ``strategy``,
``precision_plugin``, ``is_global_zero`` ...) and the probe set's one lookup of the
loop's data source. The thin classes in :mod:`dse_monitor.callback` and
:mod:`dse_monitor.pytorch_lightning` add their package's ``Callback`` base.
"""
from __future__ import annotations

from typing import Any

import torch

from .collect import isolated_rng
from .compute import ReferenceGroups
from .schedule import after_epoch, after_step, at_init
from .sequencing import MonitorParts
from .state import MonitorState


class LightningHooks(MonitorParts):
    """The callback hooks and the checkpoint state; mixed into :class:`~dse_monitor.monitor.callback_core.DSEMonitorCore`."""

    # ------------------------------------------------------------------ state
    def _reset(self) -> None:
        """Forget the stored state (probe, groups, history) and the per-run objects."""
        self._state = MonitorState()
        self._previous = {}  # cka_prev's reference: each layer's last features, in memory only
        self._groups = ReferenceGroups()
        self._reporter.reset()
        self._last_global_step = 0
        self.last_duration_s = None
        self.last_measurement = None
        self._sinks.reset()
        self._reuse.reset()
        self._release()

    def _release(self) -> None:
        """Drop the per-run objects: data source, loader, resolved layers (which reference the model)."""
        self._probe.release()
        self._reuse.stop()
        self._sinks.layout_written = False

    def state_dict(self) -> dict[str, Any]:
        self._state.label_groups, self._state.input_groups = self._groups.labels, self._groups.inputs
        return self._state.to_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = MonitorState.from_dict(state_dict)
        if state.indices != self._state.indices:
            self._probe.forget_loader()
        self._state = state
        self._previous = {}  # not checkpointed: cka_prev is not logged at the first measurement after a resume
        self._groups = ReferenceGroups(state.label_groups, state.input_groups)

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if str(getattr(stage, "value", stage)) != "fit":
            return
        if trainer.current_epoch == 0:
            # A new fit starts fresh; a resumed one gets its state from load_state_dict after this.
            self._reset()
        else:  # fit called again on a trainer that already trained: continue the curves
            self._release()

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        """Choose the probe subset and resolve the layers: configuration errors surface here, before training."""
        with isolated_rng(pl_module.device), torch.no_grad():
            self._prepare(trainer, pl_module)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # global_step > 0: resumed from a checkpoint taken inside the first epoch; the model is no
        # longer at its initialisation and step 0 is already in the restored history
        self._last_global_step = int(trainer.global_step)
        if self.config.at_init and trainer.current_epoch == 0 and trainer.global_step == 0 and 0 not in self.history:
            self.measure(trainer, pl_module, at_init(trainer))

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        position = after_step(trainer, self.config.every_n_train_steps, self._last_global_step)
        self._last_global_step = int(trainer.global_step)
        if position is not None:
            self.measure(trainer, pl_module, position)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        position = after_epoch(trainer, self.config.every_n_epochs)
        if position is not None:
            self.measure(trainer, pl_module, position)

    # Validation during fit: read the probe's rows there (ValidationReuse); never let it disturb validation.
    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._guard_reuse(self._reuse.start, trainer, pl_module, self._probe.layers, self._probe.source,
                          self._state.indices)

    def on_validation_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        self._guard_reuse(self._reuse.before_batch, batch, dataloader_idx)

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        self._guard_reuse(self._reuse.after_batch, dataloader_idx)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._guard_reuse(self._reuse.finish, trainer)

    def _guard_reuse(self, step: Any, *args: Any) -> None:
        try:
            step(*args)
        except Exception:  # an optimisation only: the probe runs its own pass instead
            self._reuse.stop()
            self._reuse.enabled = False

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        # Hooks never outlive a probe pass (a context manager removes them); removing again is a no-op
        # that guards against an interrupted pass. Then drop the loader and the references to the model.
        self._probe.remove_hooks()
        self._reuse.stop()
        if str(getattr(stage, "value", stage)) == "fit":
            self._release()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        # Lightning skips teardown when fit raises: drop the hooks and the references to the model here.
        self._probe.remove_hooks()
        self._reuse.stop()
        self._release()
