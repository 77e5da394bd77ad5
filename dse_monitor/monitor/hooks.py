"""The Lightning hooks of the monitor: they only sequence the other modules.

``lightning.pytorch.Callback`` and ``pytorch_lightning.Callback`` are distinct classes,
so one callback class cannot serve both. :class:`DSEMonitorCore` holds every hook and
imports neither package; it uses only the trainer's public, duck-typed surface
(``loggers``, ``strategy``, ``precision_plugin``, ``is_global_zero`` ...) and the probe
set's one lookup of the loop's data source. The thin classes in
:mod:`dse_monitor.callback` and :mod:`dse_monitor.pytorch_lightning` add their package's
``Callback`` base and its TensorBoardLogger type.

One measurement, top to bottom::

    probe set (ProbeSet: this rank's share)  ->  collect (hooks, pooled features)
      -> gather (probe order)  ->  compute (rank 0: a Measurement)  ->  broadcast
      -> state.history  ->  sinks (callback_metrics; rank 0: loggers, TensorBoard, files)
"""
from __future__ import annotations

import time
from typing import Any, Optional, Sequence, Union

import torch
from torch.utils.data import DataLoader, Dataset

from ..capture.forward import ForwardFn
from ..capture.pooling import Pooling
from ..registry import DEFAULT_METRICS
from ..functional.diffusion_time import T_MAX
from .collect import isolated_rng
from .compute import Measurement, ReferenceGroups, compute_measurement, make_groups
from .config import BatchFn, MonitorConfig
from .policies import frozen_to_dict
from .probe import ProbeSet
from .report import DSEMonitorWarning, Reporter
from .reuse import ValidationReuse
from .schedule import Position, after_epoch, after_step, at_init
from .sinks import Sinks, raw_dir
from .state import MonitorState


class DSEMonitorCore:
    """Measure diffusion spectral entropy and mutual information of a layer during training.

    Every ``every_n_epochs`` epochs or ``every_n_train_steps`` optimizer steps (and once
    before the first training step when ``at_init``) a fixed probe subset runs through the model in eval mode under
    ``torch.no_grad()``; forward hooks read the layers, pooled to features Z [N, D], and

    - ``dse``:    DSE(Z) = -sum_i a_i log2 a_i, a_i = |lambda_i|^t / sum_j |lambda_j|^t,
      lambda the eigenvalues of the diffusion operator of Z;
    - ``dsmi_y``: DSMI(Z;Y) = sum_y p(y) [mean_r DSE(Z_r) - DSE(Z | Y=y)], Y the labels;
    - ``dsmi_x``: DSMI(Z;X), X the probe inputs resized to ``x_size`` (nearest),
      flattened and spectrally clustered once into ``n_clusters`` groups;
    - ``cse``, ``csmi_y``, ``csmi_x``: the binning baselines.

    They are logged as ``<prefix>/<layer>/<metric>`` (e.g. ``dse/penultimate/dse``), with
    ``<prefix>/epoch`` (completed epochs), to every logger at the trainer's step: where
    Lightning logs the same epoch's validation metrics (at init: 0; with a step cadence:
    the step of that batch), so DSE and ``val_loss`` share the x-axis. They also go to
    ``trainer.callback_metrics`` and :attr:`history`. TensorBoard also gets the eigenvalue spectrum as a
    histogram (``dse/<layer>/spectrum``) and a custom-scalars layout. Training itself is
    untouched: every module's mode is restored, hooks are removed, random streams are
    forked and restored. Under DDP each rank probes its share and rank 0 computes. A
    failing probe pass warns and skips that measurement on every rank, a failing metric
    skips only itself, a failing file write only warns; training goes on. Configuration
    errors (unknown layer, a layer that ``forward`` never calls, missing labels) are
    raised at fit start.

    Measurements run in ``on_train_epoch_end``, after the epoch's validation. To watch a
    value with ``EarlyStopping`` / ``ModelCheckpoint``, list the monitor before them and
    let them check at train-epoch end (their default when validation runs once per
    epoch; ``check_on_train_epoch_end=True`` / ``save_on_train_epoch_end=True`` otherwise).

    Args:
        layers: module names from ``named_modules()``, glob patterns over them
            (``"backbone.layer*"``, ``"blocks.*"``), ``"penultimate"`` (the input of the
            final classifier: timm ``get_classifier()``, ``fc`` / ``classifier`` / ``head``
            / ``score`` / ``lm_head``, else the last ``nn.Linear`` run in ``forward``) or
            ``"blocks"`` (the stages / blocks of timm, torchvision and Hugging Face models).
            A compiled model (``torch.compile``) is probed through its eager original.
        probe: ``"val"`` or ``"train"`` (the trainer's loaders) or a Dataset / DataLoader.
        num_samples: size of the probe subset (None: the whole split); clamped with a warning.
        seed: seed of the probe subset, the input clustering and the DSMI subsets.
        every_n_epochs: measure after every n-th training epoch (default 1).
        every_n_train_steps: measure after every n-th optimizer step instead of at epoch
            ends (giving both is an error).
        at_init: also measure before the first training step (logged at step 0).
        metrics: among ``"dse", "dsmi_y", "dsmi_x", "cse", "csmi_y", "csmi_x"`` and
            ``"dse_norm"`` (DSE / log2 N) (:mod:`dse_monitor.registry`).
        sigma: kernel bandwidth: a number (absolute, on raw distances: the paper's; compare
            runs only at one sigma), ``"sqrt_dim"``, ``"median"`` (recomputed every
            measurement: the curve is then not on one scale) or ``"median_init"`` (the
            median pairwise distance at the layer's first measurement, frozen and stored).
            Every measurement also logs ``sigma_ratio`` = median distance / sigma and warns
            once when DSE sits at 0 or log2 N because of the scale.
        t: diffusion time, or ``"knee"``: the knee of DSE(t) over t = 1..``t_max`` at the
            layer's first measurement, frozen and stored.
        t_max: the largest t that ``t="knee"`` considers.
        num_repetitions: random subsets per group in DSMI's unconditional term.
        n_clusters: groups for X (and continuous Y); default: the number of classes
            in the probe labels, else 10.
        x_size: side of the nearest-resized images for DSMI(Z;X) (None: no resize).
        pooling: ``"mean"`` (avg-pool maps, mean of the real tokens of a sequence),
            ``"cls"`` (first real token), ``"last_token"`` (last real token: decoders),
            ``"flatten"`` or a callable ``[B, ...] -> [B, D]``.
        batch_fn: callable ``batch -> (inputs, labels)``, ``(inputs, labels, attention_mask)``
            or a :class:`~dse_monitor.capture.ProbeBatch`; by default ``(x, y, ...)``
            tuples/lists, dicts with the usual image keys, and dict / ``BatchEncoding``
            batches whose keys ``forward`` accepts (called as ``model(**batch)``, labels
            dropped, ``attention_mask`` used for pooling).
        forward_fn: callable ``(module, batch) -> Any`` that runs the forward pass
            itself (it gets the raw batch on the device); default: as described above.
        batch_size: probe batch size (default: the source loader's, else 64).
        cache_inputs: keep this rank's probe batches after the first pass, so that later
            measurements skip loading them: ``"auto"`` when two loads of the first batch
            are equal (deterministic transforms) and they fit, on the model's CUDA device
            within 25% of its free memory (once training has run), else in pinned host
            memory within 25% of the available RAM (split among the host's processes;
            on the CPU: host memory); ``True`` whatever their size (with random
            transforms: the first draw is the fixed probe), ``False`` never. Each pass
            gets copies; the dtype is kept (:mod:`dse_monitor.capture.cache`).
        probe_loader_kwargs: DataLoader arguments of the probe's loader (``num_workers``,
            ``pin_memory``, ``persistent_workers``, ...); default: a DataLoader probe
            lends its own, a Dataset probe takes those of the trainer's validation (else
            training) loader.
        reuse_validation: with ``probe="val"``, read the layers during the epoch's
            validation pass (same weights, same samples in order) instead of running the
            probe again; checked once per fit against the probe's own pass and used only
            where it is the same computation (:mod:`dse_monitor.monitor.reuse`).
        device: device of the metric computation (default: the features' device).
        dtype: dtype of the diffusion metrics' computation: ``"float32"`` (default: within
            1.5e-6 bits of float64 on the benchmark cases, 1.2-4x faster; see
            ``benchmarks/RESULTS.md``), ``"float64"`` (the reference's precision) or None (the
            functional API's default, float64). The binning baselines always bin in float64.
        prefix: first part of the logged keys; give two monitors different prefixes.
        log_spectrum: write eigenvalue histograms to TensorBoard.
        save_raw: write ``history.json``, ``history.csv`` and ``spectra.npz`` to
            ``<log_dir>/<prefix>_monitor``.
        solver: ``"auto"`` (exact eigen-solve up to the crossover measured at first use,
            the approximate Lanczos solver with guaranteed bounds above), ``"exact"`` or
            ``"lanczos"``. A probe too large for an exact solve in the free memory warns
            once and is measured with the streamed approximate solver. The spectrum
            histogram needs the exact path.

    Example:
        >>> from dse_monitor import DSEMonitor   # or: from dse_monitor.pytorch_lightning import DSEMonitor
        >>> monitor = DSEMonitor(layers="penultimate", num_samples=500, metrics=["dse", "dsmi_y"])
        >>> monitor.state_key
        "DSEMonitor{'prefix': 'dse', 'layers': ['penultimate'], 'probe': 'val', 'num_samples': 500, 'seed': 0}"
        >>> trainer = Trainer(callbacks=[monitor], max_epochs=10)  # doctest: +SKIP
        >>> trainer.fit(model, datamodule)                         # doctest: +SKIP
        >>> monitor.history[0]["dse/penultimate/dse"]              # doctest: +SKIP
        7.93...
    """

    #: Logger classes that get the TensorBoard extras (set by the thin classes).
    _tensorboard_loggers: tuple[type, ...] = ()

    def __init__(
        self,
        layers: Union[str, list[str]] = "penultimate",
        probe: Union[str, Dataset, DataLoader] = "val",
        num_samples: Optional[int] = 1000,
        seed: int = 0,
        every_n_epochs: Optional[int] = None,
        every_n_train_steps: Optional[int] = None,
        at_init: bool = True,
        metrics: Union[str, Sequence[str]] = DEFAULT_METRICS,
        sigma: Union[float, str] = 10.0,
        t: Union[float, str] = 1.0,
        t_max: int = T_MAX,
        num_repetitions: int = 5,
        n_clusters: Optional[int] = None,
        x_size: Optional[int] = 64,
        pooling: Pooling = "mean",
        batch_fn: Optional[BatchFn] = None,
        forward_fn: Optional[ForwardFn] = None,
        batch_size: Optional[int] = None,
        cache_inputs: Union[bool, str] = "auto",
        probe_loader_kwargs: Optional[dict[str, Any]] = None,
        reuse_validation: bool = True,
        device: Union[str, torch.device, None] = None,
        dtype: Union[str, torch.dtype, None] = "float32",
        prefix: str = "dse",
        log_spectrum: bool = True,
        save_raw: bool = False,
        solver: str = "auto",
    ) -> None:
        arguments = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        super().__init__()
        self.config = MonitorConfig.build(arguments)
        self._probe = ProbeSet(self.config)
        self._reporter = Reporter()
        self._sinks = Sinks(self.config, self._tensorboard_loggers)
        self._reuse = ValidationReuse(self.config)
        self._reset()

    def __getattr__(self, name: str) -> Any:
        # The configuration reads as attributes (monitor.sigma, monitor.layers, ...).
        config = self.__dict__.get("config")
        if config is not None and name in MonitorConfig.__dataclass_fields__:
            return getattr(config, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ------------------------------------------------------------------ state
    def _reset(self) -> None:
        """Forget the stored state (probe, groups, history) and the per-run objects."""
        self._state = MonitorState()
        self._groups = ReferenceGroups()
        self._reporter.reset()
        self._last_global_step = 0
        self.last_duration_s: Optional[float] = None
        self._sinks.reset()
        self._reuse.reset()
        self._release()

    def _release(self) -> None:
        """Drop the per-run objects: data source, loader, resolved layers (which reference the model)."""
        self._probe.release()
        self._reuse.stop()
        self._sinks.layout_written = False

    # Read by tests and users: what the monitor holds after fit (nothing that references the model).
    _layers = property(lambda self: self._probe.layers)
    _source = property(lambda self: self._probe.source)
    _loader = property(lambda self: self._probe.loader)

    @property
    def history(self) -> dict[int, dict[str, float]]:
        """``{key: {"<prefix>/<layer>/<metric>": value}}``; key = completed epochs, or the global
        step with ``every_n_train_steps`` (0: at init). :attr:`positions` says where each sits."""
        return self._state.history

    @history.setter
    def history(self, history: dict[int, dict[str, float]]) -> None:
        self._state.history = history

    @property
    def positions(self) -> dict[int, dict[str, Optional[int]]]:
        """``{key: {"epoch": completed epochs, "global_step": ..., "step": the loggers' step}}``."""
        return self._state.positions

    @property
    def state_key(self) -> str:
        cfg = self.config
        return self._generate_state_key(  # type: ignore[attr-defined]
            prefix=cfg.prefix, layers=cfg.layers, probe=cfg.probe_name(), num_samples=cfg.num_samples, seed=cfg.seed
        )

    @property
    def frozen(self) -> dict[str, dict[str, float]]:
        """Per-layer values chosen at the first measurement: ``{"sigma": {...}, "t": {...}}``."""
        return frozen_to_dict(self._state.frozen)

    @property
    def probe_indices(self) -> Optional[list[int]]:
        """The probe subset: indices into the probe split, in probe order."""
        return None if self._state.indices is None else list(self._state.indices)

    @property
    def input_groups(self) -> Optional[torch.Tensor]:
        """Cluster ids of the probe inputs used for DSMI(Z;X), once computed."""
        return self._groups.inputs

    @property
    def label_groups(self) -> Optional[torch.Tensor]:
        """Group ids of the probe labels used for DSMI(Z;Y), once read."""
        return self._groups.labels

    def state_dict(self) -> dict[str, Any]:
        self._state.label_groups, self._state.input_groups = self._groups.labels, self._groups.inputs
        return self._state.to_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = MonitorState.from_dict(state_dict)
        if state.indices != self._state.indices:
            self._probe.forget_loader()
        self._state = state
        self._groups = ReferenceGroups(state.label_groups, state.input_groups)

    def raw_dir(self, trainer: Any) -> str:
        """Where ``save_raw=True`` writes: ``<trainer.log_dir>/<prefix>_monitor`` (call it on every rank)."""
        return raw_dir(trainer, self.config.prefix)

    def _warn(self, trainer: Any, message: str) -> None:
        self._reporter.warn(trainer, message)

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

    def _prepare(self, trainer: Any, pl_module: Any) -> None:
        self._probe.prepare(trainer, pl_module, self._state, lambda m: self._warn(trainer, m),
                            lambda m: self._reporter.info(trainer, m))

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

    # ------------------------------------------------------------------ measurement
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
        payload = None
        if trainer.is_global_zero:
            try:
                groups = make_groups(self.config, self._groups, features.labels, features.inputs,
                                     features.why_no_inputs)
                measurement = compute_measurement(self.config, features.features, groups, step, self._state.frozen)
                payload = (measurement, groups, self._state.frozen)
            except Exception as err:  # rank 0 must still reach the broadcast below
                self._warn(trainer, f"DSEMonitor: the measurement at epoch {step} failed "
                                    f"({type(err).__name__}: {err}); skipping it.")
                payload = (Measurement(step), self._groups, self._state.frozen)
        if trainer.world_size > 1:
            payload = trainer.strategy.broadcast(payload, src=0)
        measurement, groups, self._state.frozen = payload
        self._reporter.measurement(trainer, measurement)
        self._groups = ReferenceGroups(groups.labels, groups.inputs, groups.labels_failed, groups.inputs_failed)
        self.last_duration_s = time.perf_counter() - start
        if not measurement.values:
            return None
        self.history[step] = dict(measurement.values)
        self.positions[step] = {"epoch": position.epoch, "global_step": position.global_step, "step": position.step}
        self._sinks.write(trainer, measurement, position, self._state, self._probe.layer_names,
                          lambda m: self._warn(trainer, m))
        return measurement.values
