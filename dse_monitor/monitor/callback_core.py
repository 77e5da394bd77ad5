"""The monitor's class: its arguments, its settings as attributes, and what it measured.

:class:`DSEMonitorCore` holds a validated :class:`~dse_monitor.monitor.config.MonitorConfig`
(the defaults live there) and sequences the other modules through two mixins: the
Lightning hooks (:mod:`.lightning_hooks`) and the measurement sequence
(:mod:`.sequencing`). It imports neither Lightning package; the thin classes in
:mod:`dse_monitor.callback` and :mod:`dse_monitor.pytorch_lightning` add their package's
``Callback`` base and its TensorBoardLogger type.
"""
from __future__ import annotations

from typing import Any, Callable, Generic, Optional, Sequence, TypeVar, Union

import torch
from torch.utils.data import DataLoader, Dataset

from ..capture.forward import ForwardFn
from ..capture.pooling import Pooling
from .config import BatchFn, MonitorConfig
from .lightning_hooks import LightningHooks
from .policies import frozen_to_dict
from .probe import ProbeSet
from .report import DSEMonitorWarning, Reporter
from .reuse import ValidationReuse
from .sequencing import MeasurementSequence
from .sinks import Sinks, raw_dir

__all__ = ["DSEMonitorCore", "DSEMonitorWarning"]

T = TypeVar("T")
_D = MonitorConfig  # the defaults: MonitorConfig.<name> is the default of <name>


class _Setting(Generic[T]):
    """A read-only attribute of the monitor that reads its config: ``monitor.sigma`` is ``monitor.config.sigma``."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, monitor: Any, owner: Optional[type] = None) -> T:
        if monitor is None:
            return self  # type: ignore[return-value]
        return getattr(monitor.config, self.name)

    def __set__(self, monitor: Any, value: Any) -> None:
        raise AttributeError(f"{type(monitor).__name__}.{self.name} is read-only: build a new monitor with "
                             f"{self.name}={value!r}")


class DSEMonitorCore(LightningHooks, MeasurementSequence):
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

    Every argument reads back as a read-only attribute, validated and normalised
    (``monitor.sigma``, ``monitor.layers``); ``monitor.config`` is the
    :class:`~dse_monitor.monitor.config.MonitorConfig` that holds them and their defaults.
    :func:`dse_monitor.measure` takes the same settings and measures without a Trainer.

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
            ``"dse_norm"`` (DSE / log2 N) (:mod:`dse_monitor.registry`); the health metrics
            ``"rankme"``, ``"alpha_req"`` (with ``alpha_req_r2``), ``"knn_acc"``, ``"cka_prev"``
            (linear CKA with the previous measurement, kept in memory only), ``"dse_t"``,
            ``"spectral_gap"``; ``"health"`` selects the first four.
        sigma: kernel bandwidth: a number (absolute, on raw distances: the paper's; compare
            runs only at one sigma), ``"sqrt_dim"``, ``"median"`` (recomputed every
            measurement: the curve is then not on one scale) or ``"median_init"`` (the
            median pairwise distance at the layer's first measurement, frozen and stored).
            Every measurement also logs ``sigma_ratio`` = median distance / sigma and warns
            once when DSE sits at 0 or log2 N because of the scale (a numeric sigma's collapsed
            start at init is an info line, warned only if DSE does not rise: :mod:`.report`).
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
        split_over_ranks: under DDP, each rank computes its share of the metrics (whole
            layers' metrics, dealt by cost; :mod:`dse_monitor.monitor.shares`) and the parts
            are merged on every rank; False: rank 0 computes all and broadcasts.
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
        kernel: ``"gaussian"`` (bandwidth ``sigma``, the paper's) or ``"knn"``: the
            adaptive-bandwidth kNN kernel with ``k`` neighbours (manylatents'; sigma,
            ``sigma_ratio`` and the scale warning do not apply to it).
        k: neighbours of the kNN kernel (default 15; every DSMI group needs more).
        alpha: density normalisation in [0, 1] (0: none, the paper's). The paper's
            settings: gaussian, alpha 0, sigma 10, t 1; manylatents' defaults: knn,
            k 15, alpha 1, t 3.
        knn_k: neighbours of ``knn_acc`` (leave-one-out kNN accuracy on the probe labels).
        t_values: diffusion times of ``dse_t``, logged as ``dse_t<t>`` (from DSE's spectrum).

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
    #: Where info lines go on rank 0 (the thin classes set their distribution's ``rank_zero_info``).
    _rank_zero_info: Optional[Callable[[str], None]] = None

    # Every argument reads back, validated and normalised (MonitorConfig), as a read-only attribute.
    layers: _Setting[list[str]] = _Setting()
    probe: _Setting[Union[str, Dataset, DataLoader]] = _Setting()
    num_samples: _Setting[Optional[int]] = _Setting()
    seed: _Setting[int] = _Setting()
    every_n_epochs: _Setting[Optional[int]] = _Setting()
    every_n_train_steps: _Setting[Optional[int]] = _Setting()
    at_init: _Setting[bool] = _Setting()
    metrics: _Setting[list[str]] = _Setting()
    sigma: _Setting[Union[float, str]] = _Setting()
    t: _Setting[Union[float, str]] = _Setting()
    t_max: _Setting[int] = _Setting()
    num_repetitions: _Setting[int] = _Setting()
    n_clusters: _Setting[Optional[int]] = _Setting()
    x_size: _Setting[Optional[int]] = _Setting()
    pooling: _Setting[Pooling] = _Setting()
    batch_fn: _Setting[Optional[BatchFn]] = _Setting()
    forward_fn: _Setting[Optional[ForwardFn]] = _Setting()
    batch_size: _Setting[Optional[int]] = _Setting()
    cache_inputs: _Setting[Union[bool, str]] = _Setting()
    probe_loader_kwargs: _Setting[Optional[dict[str, Any]]] = _Setting()
    reuse_validation: _Setting[bool] = _Setting()
    split_over_ranks: _Setting[bool] = _Setting()
    device: _Setting[Optional[torch.device]] = _Setting()
    dtype: _Setting[Optional[torch.dtype]] = _Setting()
    prefix: _Setting[str] = _Setting()
    log_spectrum: _Setting[bool] = _Setting()
    save_raw: _Setting[bool] = _Setting()
    solver: _Setting[str] = _Setting()
    kernel: _Setting[str] = _Setting()
    k: _Setting[int] = _Setting()
    alpha: _Setting[float] = _Setting()
    knn_k: _Setting[int] = _Setting()
    t_values: _Setting[tuple[float, ...]] = _Setting()

    def __init__(
        self,
        layers: Union[str, list[str]] = _D.layers,
        probe: Union[str, Dataset, DataLoader] = _D.probe,
        num_samples: Optional[int] = _D.num_samples,
        seed: int = _D.seed,
        every_n_epochs: Optional[int] = _D.every_n_epochs,
        every_n_train_steps: Optional[int] = _D.every_n_train_steps,
        at_init: bool = _D.at_init,
        metrics: Union[str, Sequence[str]] = _D.metrics,
        sigma: Union[float, str] = _D.sigma,
        t: Union[float, str] = _D.t,
        t_max: int = _D.t_max,
        num_repetitions: int = _D.num_repetitions,
        n_clusters: Optional[int] = _D.n_clusters,
        x_size: Optional[int] = _D.x_size,
        pooling: Pooling = _D.pooling,
        batch_fn: Optional[BatchFn] = _D.batch_fn,
        forward_fn: Optional[ForwardFn] = _D.forward_fn,
        batch_size: Optional[int] = _D.batch_size,
        cache_inputs: Union[bool, str] = _D.cache_inputs,
        probe_loader_kwargs: Optional[dict[str, Any]] = _D.probe_loader_kwargs,
        reuse_validation: bool = _D.reuse_validation,
        split_over_ranks: bool = _D.split_over_ranks,
        device: Union[str, torch.device, None] = _D.device,
        dtype: Union[str, torch.dtype, None] = _D.dtype,
        prefix: str = _D.prefix,
        log_spectrum: bool = _D.log_spectrum,
        save_raw: bool = _D.save_raw,
        solver: str = _D.solver,
        kernel: str = _D.kernel,
        k: int = _D.k,
        alpha: float = _D.alpha,
        knn_k: int = _D.knn_k,
        t_values: Sequence[float] = _D.t_values,
    ) -> None:
        super().__init__()
        self.config = MonitorConfig(
            layers=layers, probe=probe, num_samples=num_samples, seed=seed, every_n_epochs=every_n_epochs,
            every_n_train_steps=every_n_train_steps, at_init=at_init, metrics=metrics, sigma=sigma, t=t,
            t_max=t_max, num_repetitions=num_repetitions, n_clusters=n_clusters, x_size=x_size, pooling=pooling,
            batch_fn=batch_fn, forward_fn=forward_fn, batch_size=batch_size, cache_inputs=cache_inputs,
            probe_loader_kwargs=probe_loader_kwargs,
            reuse_validation=reuse_validation, split_over_ranks=split_over_ranks, device=device, dtype=dtype, prefix=prefix,
            log_spectrum=log_spectrum, save_raw=save_raw, solver=solver, kernel=kernel, k=k, alpha=alpha,
            knn_k=knn_k, t_values=t_values,
        )
        self._probe = ProbeSet(self.config)
        self._reporter = Reporter(type(self)._rank_zero_info, self.config.sigma)
        self._sinks = Sinks(self.config, self._tensorboard_loggers, self._reporter.unsent)
        self._reuse = ValidationReuse(self.config)
        self._reset()

    # ------------------------------------------------------------------ what it measured
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

    def raw_dir(self, trainer: Any) -> str:
        """Where ``save_raw=True`` writes: ``<trainer.log_dir>/<prefix>_monitor`` (call it on every rank)."""
        return raw_dir(trainer, self.config.prefix)
