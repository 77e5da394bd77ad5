"""The logic of :class:`~dse_monitor.DSEMonitor`, shared by both Lightning distributions.

``lightning.pytorch.Callback`` and ``pytorch_lightning.Callback`` are distinct classes,
so one callback class cannot serve both. :class:`DSEMonitorCore` holds every hook and
imports neither package; it only uses the trainer's public duck-typed surface
(``loggers``, ``strategy``, ``precision_plugin``, ``is_global_zero`` ...). The thin
classes in :mod:`dse_monitor.callback` and :mod:`dse_monitor.pytorch_lightning` add the
package's ``Callback`` base and its TensorBoardLogger type.

One measurement (``step`` = completed training epochs, 0 = before the first step):

1. every rank runs its contiguous share of the fixed probe indices through the model
   (eval mode, ``torch.no_grad()``, the trainer's precision, random streams forked and
   restored), reading the layers with forward hooks that are always removed;
2. the pooled features [N, D] float32 are gathered in probe order (``all_gather``);
3. rank 0 computes the metrics with :mod:`dse_monitor.functional` and broadcasts them;
4. rank 0 logs ``<prefix>/<layer>/<metric>`` to every logger at ``step``; every rank
   puts them in ``trainer.callback_metrics`` and the history.
"""
from __future__ import annotations

import csv
import json
import math
import os
import random
import time
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .capture.hooks import FeatureCapture, eval_mode
from .capture.layers import Layer, LayerNotFoundError, resolve_layer
from .capture.pooling import Pooling, check_pooling
from .capture.probe import (
    choose_indices,
    first_dataloader,
    probe_loader,
    resize_inputs,
    source_dataset,
    to_device,
    unpack_batch,
)
from .functional import (
    classic_shannon_entropy,
    classic_shannon_mutual_information,
    diffusion_eigenvalues,
    diffusion_spectral_entropy,
    diffusion_spectral_mutual_information,
    entropy_of_spectrum,
    reference_groups,
)
from .functional.solver import check_solver, choose_solver
from .tensorboard import TITLES, write_layout, write_spectrum

METRICS = tuple(TITLES)  # ("dse", "dsmi_y", "dsmi_x", "cse", "csmi_y", "csmi_x")
DEFAULT_METRICS = ("dse", "dsmi_y", "dsmi_x")
LABEL_METRICS = ("dsmi_y", "csmi_y")
INPUT_METRICS = ("dsmi_x", "csmi_x")
#: Clusters of Y and X when the number of classes is unknown (the paper's default).
FALLBACK_CLUSTERS = 10

BatchFn = Callable[[Any], Any]


class DSEMonitorWarning(UserWarning):
    """Warnings of the monitor (NaN features, skipped epochs, clamped probe)."""


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _parse_dtype(dtype: Union[str, torch.dtype, None]) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    parsed = getattr(torch, str(dtype).replace("torch.", ""), None)
    if not isinstance(parsed, torch.dtype) or not parsed.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype such as 'float32' or 'float64', got {dtype!r}")
    return parsed


@contextmanager
def isolated_rng(device: torch.device | None = None) -> Iterator[None]:
    """Fork torch (CPU and the given CUDA device), numpy and Python ``random`` streams; restore on exit.

    >>> _ = torch.manual_seed(0); a = torch.rand(1)
    >>> _ = torch.manual_seed(0)
    >>> with isolated_rng():
    ...     _ = torch.rand(5), np.random.rand(), random.random()
    >>> bool(torch.rand(1) == a)
    True
    """
    py_state = random.getstate()
    np_state = np.random.get_state()
    devices = [device] if device is not None and device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


class DSEMonitorCore:
    """Lightning-free logic of the DSE monitor; see :class:`dse_monitor.DSEMonitor` for the arguments."""

    #: Logger classes that get the TensorBoard extras (set by the thin classes).
    _tensorboard_loggers: tuple[type, ...] = ()

    def __init__(
        self,
        layers: Union[str, list[str]] = "penultimate",
        probe: Union[str, Dataset, DataLoader] = "val",
        num_samples: int | None = 1000,
        seed: int = 0,
        every_n_epochs: int = 1,
        at_init: bool = True,
        metrics: Union[str, Sequence[str]] = DEFAULT_METRICS,
        sigma: Union[float, str] = 10.0,
        t: float = 1.0,
        num_repetitions: int = 5,
        n_clusters: int | None = None,
        x_size: int | None = 64,
        pooling: Pooling = "mean",
        batch_fn: BatchFn | None = None,
        batch_size: int | None = None,
        device: Union[str, torch.device, None] = None,
        dtype: Union[str, torch.dtype, None] = None,
        prefix: str = "dse",
        log_spectrum: bool = True,
        save_raw: bool = False,
        solver: str = "auto",
    ) -> None:
        super().__init__()
        names = [layers] if isinstance(layers, str) else list(layers)
        if not names or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
            raise ValueError(f"layers must be a module name or a list of distinct names, got {layers!r}")
        if isinstance(probe, str) and probe not in ("val", "train"):
            raise ValueError(f"probe must be 'val', 'train', a Dataset or a DataLoader, got {probe!r}")
        if num_samples is not None:
            _check_int(num_samples, "num_samples", 2)
        chosen = [metrics] if isinstance(metrics, str) else list(metrics)
        unknown = [m for m in chosen if m not in METRICS]
        if not chosen or unknown or len(set(chosen)) != len(chosen):
            raise ValueError(f"metrics must be distinct names among {METRICS}, got {metrics!r}")
        if isinstance(sigma, str):
            if sigma not in ("sqrt_dim", "median"):
                raise ValueError(f"sigma must be a positive number, 'sqrt_dim' or 'median', got {sigma!r}")
        elif isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0 or not math.isfinite(sigma):
            raise ValueError(f"sigma must be a positive number, 'sqrt_dim' or 'median', got {sigma!r}")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0 or not math.isfinite(t):
            raise ValueError(f"t must be a positive number, got {t!r}")
        if n_clusters is not None:
            _check_int(n_clusters, "n_clusters", 1)
        if x_size is not None:
            _check_int(x_size, "x_size", 1)
        if batch_size is not None:
            _check_int(batch_size, "batch_size", 1)
        if batch_fn is not None and not callable(batch_fn):
            raise ValueError(f"batch_fn must be callable, got {batch_fn!r}")
        if not isinstance(prefix, str) or not prefix or "/" in prefix:
            raise ValueError(f"prefix must be a non-empty string without '/', got {prefix!r}")
        self.layers = names
        self.probe = probe
        self.num_samples = num_samples
        self.seed = _check_int(seed, "seed", 0)
        self.every_n_epochs = _check_int(every_n_epochs, "every_n_epochs", 1)
        self.at_init = bool(at_init)
        self.metrics = chosen
        self.sigma = sigma
        self.t = float(t)
        self.num_repetitions = _check_int(num_repetitions, "num_repetitions", 1)
        self.n_clusters = n_clusters
        self.x_size = x_size
        self.pooling = check_pooling(pooling)
        self.batch_fn: BatchFn = batch_fn or unpack_batch
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else None
        self.dtype = _parse_dtype(dtype)
        self.prefix = prefix
        self.log_spectrum = bool(log_spectrum)
        self.save_raw = bool(save_raw)
        self.solver = check_solver(solver)
        #: ``{step: {"<prefix>/<layer>/<metric>": value}}``, step = completed epochs.
        self.history: dict[int, dict[str, float]] = {}
        self._reset()

    # ------------------------------------------------------------------ state
    def _reset(self) -> None:
        """Forget the stored state (probe, groups, history) and the per-run objects."""
        self.history = {}
        self._indices: list[int] | None = None
        self._label_groups: torch.Tensor | None = None
        self._input_groups: torch.Tensor | None = None
        self._input_groups_failed = False
        self._label_groups_failed = False
        self._spectra: dict[str, np.ndarray] = {}
        self._memory_warned = False
        self.last_duration_s: float | None = None
        self._release()

    def _release(self) -> None:
        """Drop the per-run objects: data source, loader, resolved layers (which reference the model)."""
        self._source: Any = None
        self._layers: list[Layer] = []
        self._loader: DataLoader | None = None
        self._capture: FeatureCapture | None = None
        self._layout_written = False

    @property
    def state_key(self) -> str:
        probe = self.probe if isinstance(self.probe, str) else type(self.probe).__name__
        return self._generate_state_key(  # type: ignore[attr-defined]
            prefix=self.prefix, layers=self.layers, probe=probe, num_samples=self.num_samples, seed=self.seed
        )

    @property
    def probe_indices(self) -> list[int] | None:
        """The probe subset: indices into the probe split, in probe order."""
        return None if self._indices is None else list(self._indices)

    @property
    def input_groups(self) -> torch.Tensor | None:
        """Cluster ids of the probe inputs used for DSMI(Z;X), once computed."""
        return self._input_groups

    @property
    def label_groups(self) -> torch.Tensor | None:
        """Group ids of the probe labels used for DSMI(Z;Y), once read."""
        return self._label_groups

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "indices": self._indices,
            "label_groups": self._label_groups,
            "input_groups": self._input_groups,
            "history": {int(k): dict(v) for k, v in self.history.items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        indices = state_dict.get("indices")
        if indices != self._indices:
            self._loader = None
        self._indices = None if indices is None else [int(i) for i in indices]
        self._label_groups = state_dict.get("label_groups")
        self._input_groups = state_dict.get("input_groups")
        self.history = {int(k): dict(v) for k, v in state_dict.get("history", {}).items()}

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _warn(trainer: Any, message: str) -> None:
        if getattr(trainer, "is_global_zero", True):
            warnings.warn(message, DSEMonitorWarning, stacklevel=3)

    def _key(self, layer: str, metric: str) -> str:
        return f"{self.prefix}/{layer}/{metric}"

    def _resolve_source(self, trainer: Any) -> Any:
        if not isinstance(self.probe, str):
            return self.probe
        loop = trainer.fit_loop if self.probe == "train" else trainer.fit_loop.epoch_loop.val_loop
        source = getattr(loop, "_data_source", None)
        other = "train" if self.probe == "val" else "val"
        fix = f"pass probe={other!r} or probe=<Dataset or DataLoader>."
        if source is None or not source.is_defined():
            raise ValueError(
                f"DSEMonitor(probe={self.probe!r}) found no {self.probe} dataloader on the trainer, model or "
                f"datamodule; {fix}"
            )
        loaders = source.dataloader()
        try:
            if loaders is None:
                raise ValueError("it returned None")
            return first_dataloader(loaders)
        except ValueError as err:  # e.g. an empty list: a split the datamodule does not have
            raise ValueError(f"DSEMonitor(probe={self.probe!r}): the {self.probe} dataloader hook gave no loader "
                             f"({err}); {fix}") from err

    def _needs_labels(self) -> bool:
        return any(m in self.metrics for m in LABEL_METRICS)

    def _needs_inputs(self) -> bool:
        return any(m in self.metrics for m in INPUT_METRICS)

    def _forward(self, trainer: Any, pl_module: Any, x: Any) -> Any:
        precision = trainer.precision_plugin
        x = precision.convert_input(x)  # e.g. float64 inputs under precision="64-true"
        with precision.val_step_context():
            return pl_module(x)

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
        self._source = self._resolve_source(trainer)
        n_total = len(source_dataset(self._source))
        if n_total < 2:
            raise ValueError(f"DSEMonitor needs a probe split of at least 2 samples, got {n_total}.")
        if self._indices is None:
            if self.num_samples is not None and self.num_samples > n_total:
                self._warn(
                    trainer,
                    f"DSEMonitor: num_samples={self.num_samples} is larger than the probe split "
                    f"({self.probe if isinstance(self.probe, str) else type(self.probe).__name__}: "
                    f"{n_total} samples); probing all {n_total}.",
                )
            self._indices = choose_indices(n_total, self.num_samples, self.seed)
        elif max(self._indices) >= n_total:
            raise ValueError(
                f"DSEMonitor: the stored probe indices go up to {max(self._indices)} but the probe split has "
                f"{n_total} samples; the checkpoint belongs to another dataset."
            )
        self._loader = None
        peek = probe_loader(self._source, self._indices[: min(len(self._indices), 8)], batch_size=8)
        x, y = self.batch_fn(next(iter(peek)))
        if self._needs_labels():
            asked = [m for m in self.metrics if m in LABEL_METRICS]
            if y is None:
                raise ValueError(
                    f"DSEMonitor: metrics {asked} need labels, but the probe batches carry none (batch_fn returned "
                    "no labels). Use batches like (x, y) or {'x': ..., 'y': ...}, pass batch_fn, or drop those metrics."
                )
            try:
                torch.as_tensor(y)
            except Exception as err:
                raise ValueError(
                    f"DSEMonitor: metrics {asked} need labels as a tensor (one per sample); the probe batches carry "
                    f"a {type(y).__name__} ({err}). Pass batch_fn returning (inputs, label tensor)."
                ) from err
        x = to_device(x, pl_module.device)

        def run_forward() -> Any:
            with eval_mode(pl_module):
                return self._forward(trainer, pl_module, x)

        self._layers = [resolve_layer(pl_module, name, run_forward) for name in self.layers]
        # One pass over the peek batch: a layer that forward() never calls, or an activation the
        # pooling cannot handle, is a configuration error now rather than after the first epoch.
        with FeatureCapture(self._layers, self.pooling) as cap:
            run_forward()
            try:
                cap.take()
            except RuntimeError as err:
                raise LayerNotFoundError(f"DSEMonitor: {err}") from err

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # global_step > 0: resumed from a checkpoint taken inside the first epoch; the model is no
        # longer at its initialisation and step 0 is already in the restored history
        if self.at_init and trainer.current_epoch == 0 and trainer.global_step == 0 and 0 not in self.history:
            self.measure(trainer, pl_module, step=0)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        step = trainer.current_epoch + 1
        if step % self.every_n_epochs == 0:
            self.measure(trainer, pl_module, step=step)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        # Hooks never outlive a probe pass (a context manager removes them); removing again is a no-op
        # that guards against an interrupted pass. Then drop the loader and the references to the model.
        if self._capture is not None:
            self._capture.remove()
        if str(getattr(stage, "value", stage)) == "fit":
            self._release()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        # Lightning skips teardown when fit raises: drop the hooks and the references to the model here.
        if self._capture is not None:
            self._capture.remove()
        self._release()

    # ------------------------------------------------------------------ measurement
    def measure(self, trainer: Any, pl_module: Any, step: int) -> dict[str, float] | None:
        """Probe, compute and log at ``step``; returns the logged values (None when skipped).

        Must be called on every rank (it gathers and broadcasts).
        """
        start = time.perf_counter()
        with isolated_rng(pl_module.device), torch.no_grad():
            if not self._layers:  # called without on_fit_start (e.g. by hand)
                self._prepare(trainer, pl_module)
            try:
                local = self._probe_pass(trainer, pl_module)
            except Exception as err:  # e.g. out of memory, a batch the model rejects: never kill the run
                local = None
                warnings.warn(
                    f"DSEMonitor: the probe pass at epoch {step} failed on rank {trainer.global_rank} "
                    f"({type(err).__name__}: {err}); skipping this measurement.",
                    DSEMonitorWarning,
                    stacklevel=2,
                )
            # all ranks agree before gathering: one rank skipping alone would leave the others waiting
            ok = local is not None
            if trainer.world_size > 1:
                ok = trainer.strategy.reduce_boolean_decision(ok, all=True)
            if not ok:
                self.last_duration_s = time.perf_counter() - start
                return None
            feats, labels, inputs = self._gather(trainer, *local)
        payload = None
        if trainer.is_global_zero:
            try:
                payload = self._compute_all(trainer, feats, labels, inputs, step)
            except Exception as err:  # rank 0 must still reach the broadcast below
                self._warn(trainer, f"DSEMonitor: the measurement at epoch {step} failed "
                                    f"({type(err).__name__}: {err}); skipping it.")
                payload = ({}, {}, self._label_groups, self._input_groups, (False, False))
        if trainer.world_size > 1:
            payload = trainer.strategy.broadcast(payload, src=0)
        values, spectra, label_groups, input_groups, (labels_failed, inputs_failed) = payload
        if self._label_groups is None:
            self._label_groups = label_groups
        if self._input_groups is None:
            self._input_groups = input_groups
        self._label_groups_failed = self._label_groups_failed or labels_failed
        self._input_groups_failed = self._input_groups_failed or inputs_failed
        self.last_duration_s = time.perf_counter() - start
        if not values:
            return None
        self.history[step] = dict(values)
        self._log(trainer, values, spectra, step)
        return values

    def _probe_pass(
        self, trainer: Any, pl_module: Any
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
        """This rank's share: features [share, D] float32 per layer; labels and resized inputs when still needed.

        No collective calls here, so that a failure on one rank cannot leave the others waiting.
        """
        assert self._indices is not None
        n, world, rank = len(self._indices), trainer.world_size, trainer.global_rank
        share = math.ceil(n / world)
        if self._loader is None:
            mine = self._indices[rank * share : (rank + 1) * share]
            mine = mine + [self._indices[0]] * (share - len(mine))  # equal shapes for all_gather
            self._loader = probe_loader(self._source, mine, self.batch_size)
        want_inputs = self._needs_inputs() and self._input_groups is None and not self._input_groups_failed
        # labels: for DSMI(Z;Y), or to count the classes (the default n_clusters of X)
        want_labels = self._label_groups is None and (
            (self._needs_labels() and not self._label_groups_failed) or (want_inputs and self.n_clusters is None)
        )
        device = pl_module.device
        feats: dict[str, list[torch.Tensor]] = {layer.name: [] for layer in self._layers}
        ys: list[torch.Tensor] = []
        xs: list[torch.Tensor] = []
        self._capture = FeatureCapture(self._layers, self.pooling)
        with eval_mode(pl_module), self._capture as cap:
            for batch in self._loader:
                x, y = self.batch_fn(batch)
                x = to_device(x, device)
                self._forward(trainer, pl_module, x)
                for name, z in cap.take().items():
                    feats[name].append(z)
                if want_labels and y is not None:
                    ys.append(torch.as_tensor(y).to(device))
                if want_inputs:
                    xs.append(resize_inputs(x, self.x_size))
        out = {name: torch.cat(zs) for name, zs in feats.items()}
        return out, (torch.cat(ys) if ys else None), (torch.cat(xs) if want_inputs else None)

    def _gather(
        self, trainer: Any, feats: dict[str, torch.Tensor], labels: torch.Tensor | None, inputs: torch.Tensor | None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
        """The ranks' shares concatenated in probe order (rank 0's share first), cut to the N probe samples."""
        assert self._indices is not None
        n, world = len(self._indices), trainer.world_size

        def gather(t: torch.Tensor) -> torch.Tensor:
            if world > 1:
                t = trainer.strategy.all_gather(t.contiguous()).reshape(world * t.shape[0], *t.shape[1:])
            return t[:n]

        out = {name: gather(z) for name, z in feats.items()}
        return out, (gather(labels) if labels is not None else None), (gather(inputs) if inputs is not None else None)

    def _groups(self, trainer: Any, labels: torch.Tensor | None, inputs: torch.Tensor | None):
        label_groups, input_groups, labels_failed, failed = self._label_groups, self._input_groups, False, False
        if label_groups is None and labels is not None and self._needs_labels() and not self._label_groups_failed:
            try:
                label_groups = reference_groups(labels.cpu(), n_clusters=self.n_clusters or FALLBACK_CLUSTERS).cpu()
            except Exception as err:  # e.g. NaN labels: the other metrics still go on
                labels_failed = True
                self._warn(trainer, f"DSEMonitor: grouping the probe labels for DSMI(Z;Y) failed ({err}); "
                           "DSMI(Z;Y) and CSMI(Z;Y) will not be logged.")
        if input_groups is None and inputs is not None:
            if self.n_clusters is not None:
                k = self.n_clusters
            elif labels is not None or label_groups is not None:
                k = int(torch.unique(label_groups if label_groups is not None else labels.cpu(), dim=0).shape[0])
            else:
                k = FALLBACK_CLUSTERS
            try:
                input_groups = reference_groups(inputs.cpu(), n_clusters=k, seed=self.seed).cpu()
            except Exception as err:  # e.g. fewer samples than clusters
                failed = True
                self._warn(trainer, f"DSEMonitor: clustering the probe inputs for DSMI(Z;X) failed ({err}); "
                           "DSMI(Z;X) and CSMI(Z;X) will not be logged.")
        return label_groups, input_groups, (labels_failed, failed)

    def _compute_all(self, trainer, feats, labels, inputs, step):
        label_groups, input_groups, failed = self._groups(trainer, labels, inputs)
        values: dict[str, float] = {}
        spectra: dict[str, np.ndarray] = {}
        for layer in self._layers:
            z = feats[layer.name]
            if self.device is not None:
                z = z.to(self.device)
            metrics = [
                m for m in self.metrics
                if not (m in INPUT_METRICS and input_groups is None) and not (m in LABEL_METRICS and label_groups is None)
            ]
            if not bool(torch.isfinite(z).all()):
                self._warn(
                    trainer,
                    f"DSEMonitor: layer {layer.name!r} has NaN/Inf features at epoch {step}; "
                    "logging NaN for its metrics (diverged training?).",
                )
                values.update({self._key(layer.name, m): float("nan") for m in metrics})
                continue
            layer_values, spectrum, failures = self._compute_layer(z, metrics, label_groups, input_groups)
            if failures:  # never kill the run for a measurement; the other metrics still count
                reasons = "; ".join(dict.fromkeys(failures.values()))
                self._warn(
                    trainer,
                    f"DSEMonitor: computing {list(failures)} for layer {layer.name!r} at epoch {step} failed "
                    f"({reasons}); skipping {'it' if len(failures) == 1 else 'them'}.",
                )
            values.update({self._key(layer.name, m): v for m, v in layer_values.items()})
            if spectrum is not None:
                spectra[layer.name] = spectrum
        return values, spectra, label_groups, input_groups, failed

    def _compute_layer(
        self, z, metrics, label_groups, input_groups
    ) -> tuple[dict[str, float], np.ndarray | None, dict[str, str]]:
        """Each metric of one layer: values, the DSE spectrum (exact path), and failures by metric."""
        out: dict[str, float] = {}
        failures: dict[str, str] = {}
        spectrum = None
        groups = {"y": label_groups, "x": input_groups}
        for m in metrics:
            try:
                if m == "dse":
                    out[m], spectrum = self._entropy_and_spectrum(z)
                elif m == "cse":
                    out[m] = float(classic_shannon_entropy(z, dtype=self.dtype))
                elif m.startswith("dsmi_"):
                    out[m] = self._mutual_information(z, groups[m[-1]])
                else:  # csmi_y, csmi_x
                    out[m] = float(
                        classic_shannon_mutual_information(
                            z, groups=groups[m[-1]], num_repetitions=self.num_repetitions, seed=self.seed,
                            dtype=self.dtype,
                        )
                    )
            except Exception as err:  # noqa: BLE001 - reported by the caller, training goes on
                failures[m] = f"{type(err).__name__}: {err}"
        return out, spectrum, failures

    def _memory_fallback(self, err: MemoryError) -> None:
        """Warn once that the exact path does not fit and the streamed approximate one is used.

        The approximate solver handles t = 1 and 2 only; at other t the error is re-raised
        (the metric is then skipped) with the fix that applies to the monitor.
        """
        if self.t not in (1, 2):
            raise MemoryError(
                f"{err} The approximate solver supports only t = 1 and 2 (t={self.t:g}): "
                "lower num_samples instead."
            ) from err
        if not self._memory_warned:
            self._memory_warned = True
            warnings.warn(f"DSEMonitor: {err} Switching to the streamed approximate solver.",
                          DSEMonitorWarning, stacklevel=3)

    def _mutual_information(self, z: torch.Tensor, groups: torch.Tensor) -> float:
        common = dict(groups=groups, sigma=self.sigma, t=self.t, num_repetitions=self.num_repetitions,
                      seed=self.seed, dtype=self.dtype)
        try:
            return float(diffusion_spectral_mutual_information(z, solver=self.solver, **common))
        except MemoryError as err:  # raised before allocating: a group too large for an exact solve
            self._memory_fallback(err)
            return float(diffusion_spectral_mutual_information(z, solver="lanczos", streamed=True, **common))

    def _entropy_and_spectrum(self, z: torch.Tensor) -> tuple[float, np.ndarray | None]:
        """DSE of ``z`` and, on the exact path, its whole spectrum (for the histogram).

        ``solver="auto"`` takes the exact path up to ``AUTO_CROSSOVER`` points and the
        approximate one above. A probe too large for an exact solve in the free memory
        is not an error here: warn once and use the streamed approximate path.
        """
        common = dict(seed=self.seed, dtype=self.dtype)
        if choose_solver(min(z.shape[0], 10_000), self.t, self.solver) != "exact":  # 10,000: the core's max_n
            return float(diffusion_spectral_entropy(z, self.sigma, self.t, solver=self.solver, **common)), None
        try:
            lam = diffusion_eigenvalues(z, self.sigma, **common)  # raises MemoryError before allocating
        except MemoryError as err:
            self._memory_fallback(err)
            lanczos = diffusion_spectral_entropy(z, self.sigma, self.t, solver="lanczos", streamed=True, **common)
            return float(lanczos), None
        return float(entropy_of_spectrum(lam, self.t)) if lam.numel() > 1 else 0.0, lam.cpu().double().numpy()

    # ------------------------------------------------------------------ logging
    def _log(self, trainer: Any, values: dict[str, float], spectra: dict[str, np.ndarray], step: int) -> None:
        device = getattr(getattr(trainer, "strategy", None), "root_device", None)
        metrics = trainer.callback_metrics
        for key, value in values.items():
            metrics[key] = torch.tensor(value, device=device) if device is not None else torch.tensor(value)
        # trainer.log_dir broadcasts under DDP: every rank must ask for it, not only rank 0
        folder = self.raw_dir(trainer) if self.save_raw else None
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            logger.log_metrics(dict(values), step=step)
            if self._tensorboard_loggers and isinstance(logger, self._tensorboard_loggers):
                try:
                    self._write_tensorboard_extras(logger.experiment, spectra, step)
                except Exception as err:  # the extras are optional: never kill the run for them
                    self._warn(trainer, f"DSEMonitor: writing the TensorBoard layout/spectrum at epoch {step} "
                               f"failed ({type(err).__name__}: {err}).")
        self._layout_written = True
        if folder is not None:
            try:
                self._save_raw(folder, spectra, step)
            except Exception as err:  # e.g. a full disk or a file in the way
                self._warn(trainer, f"DSEMonitor: save_raw could not write to {folder} at epoch {step} "
                           f"({type(err).__name__}: {err}); training goes on.")

    def _write_tensorboard_extras(self, writer: Any, spectra: dict[str, np.ndarray], step: int) -> None:
        if not self._layout_written:
            write_layout(writer, self.prefix, self.layers, self.metrics)
        if self.log_spectrum:
            for name, lam in spectra.items():
                write_spectrum(writer, self._key(name, "spectrum"), lam, step)

    def raw_dir(self, trainer: Any) -> str:
        """Where ``save_raw=True`` writes: ``<trainer.log_dir>/<prefix>_monitor`` (call it on every rank)."""
        root = getattr(trainer, "log_dir", None) or trainer.default_root_dir
        return os.path.join(root, f"{self.prefix}_monitor")

    def _save_raw(self, folder: str, spectra: dict[str, np.ndarray], step: int) -> None:
        os.makedirs(folder, exist_ok=True)
        rows = [{"step": s, **self.history[s]} for s in sorted(self.history)]
        with open(os.path.join(folder, "history.json"), "w") as f:
            json.dump({"indices": self._indices, "history": rows}, f, indent=1)
        columns = ["step"] + sorted({k for r in rows for k in r if k != "step"})
        with open(os.path.join(folder, "history.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        path = os.path.join(folder, "spectra.npz")
        if not self._spectra and os.path.exists(path):
            # A run resumed into the same folder (e.g. logger=False): keep the spectra of the restored
            # history's earlier steps, which this process did not compute; drop anything else in the file.
            with np.load(path) as previous:
                self._spectra = {
                    key: previous[key] for key in previous.files
                    if int(key.rsplit("/step_", 1)[-1]) < step and int(key.rsplit("/step_", 1)[-1]) in self.history
                }
        for name, lam in spectra.items():
            self._spectra[f"{name}/step_{step}"] = lam
        if self._spectra:
            np.savez(path, **self._spectra)


# The callbacks' docstring, shared by both thin classes (each imports only its own distribution).
DOC = """Measure diffusion spectral entropy and mutual information of a layer during training.

    Every ``every_n_epochs`` epochs (and once before the first training step when
    ``at_init``) a fixed probe subset runs through the model in eval mode under
    ``torch.no_grad()``; forward hooks read the layers, pooled to features Z [N, D], and

    - ``dse``:    DSE(Z) = -sum_i a_i log2 a_i, a_i = |lambda_i|^t / sum_j |lambda_j|^t,
      lambda the eigenvalues of the diffusion operator of Z;
    - ``dsmi_y``: DSMI(Z;Y) = sum_y p(y) [mean_r DSE(Z_r) - DSE(Z | Y=y)], Y the labels;
    - ``dsmi_x``: DSMI(Z;X), X the probe inputs resized to ``x_size`` (nearest),
      flattened and spectrally clustered once into ``n_clusters`` groups;
    - ``cse``, ``csmi_y``, ``csmi_x``: the binning baselines.

    They are logged as ``<prefix>/<layer>/<metric>`` (e.g. ``dse/penultimate/dse``) to
    every logger with ``step`` = completed training epochs (0 = at init), and put in
    ``trainer.callback_metrics``. TensorBoard also gets the eigenvalue spectrum as a
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
        layers: module names from ``named_modules()``, or ``"penultimate"``: the input of
            the final classifier (timm ``get_classifier()``, torchvision ``fc`` /
            ``classifier`` / ``head``, else the last ``nn.Linear`` run in ``forward``).
        probe: ``"val"`` or ``"train"`` (the trainer's loaders) or a Dataset / DataLoader.
        num_samples: size of the probe subset (None: the whole split); clamped with a warning.
        seed: seed of the probe subset, the input clustering and the DSMI subsets.
        every_n_epochs: measure after every n-th training epoch.
        at_init: also measure before the first training step (logged at step 0).
        metrics: among ``"dse", "dsmi_y", "dsmi_x", "cse", "csmi_y", "csmi_x"``.
        sigma: kernel bandwidth: a number (on raw distances), ``"sqrt_dim"`` or ``"median"``.
        t: diffusion time.
        num_repetitions: random subsets per group in DSMI's unconditional term.
        n_clusters: groups for X (and continuous Y); default: the number of classes
            in the probe labels, else 10.
        x_size: side of the nearest-resized images for DSMI(Z;X) (None: no resize).
        pooling: ``"mean"`` (avg-pool maps, mean of tokens), ``"cls"`` (first token),
            ``"flatten"`` or a callable ``[B, ...] -> [B, D]``.
        batch_fn: callable ``batch -> (inputs, labels or None)``; default handles
            ``(x, y, ...)`` tuples/lists and dicts with the usual keys.
        batch_size: probe batch size (default: the source loader's, else 64).
        device: device of the metric computation (default: the features' device).
        dtype: dtype of the metric computation (default float64; ``"float32"`` is faster).
        prefix: first part of the logged keys; give two monitors different prefixes.
        log_spectrum: write eigenvalue histograms to TensorBoard.
        save_raw: write ``history.json``, ``history.csv`` and ``spectra.npz`` to
            ``<log_dir>/<prefix>_monitor``.
        solver: ``"auto"`` (exact eigen-solve up to ``AUTO_CROSSOVER`` = 4,096 probe
            points, the approximate Lanczos solver with guaranteed bounds above),
            ``"exact"`` or ``"lanczos"``. A probe too large for an exact solve in the free
            memory warns once and is measured with the streamed approximate solver. The
            spectrum histogram needs the exact path.

    Example:
        >>> monitor = DSEMonitor(layers="penultimate", num_samples=500, metrics=["dse", "dsmi_y"])
        >>> monitor.state_key
        "DSEMonitor{'prefix': 'dse', 'layers': ['penultimate'], 'probe': 'val', 'num_samples': 500, 'seed': 0}"
        >>> trainer = Trainer(callbacks=[monitor], max_epochs=10)  # doctest: +SKIP
        >>> trainer.fit(model, datamodule)                         # doctest: +SKIP
        >>> monitor.history[0]["dse/penultimate/dse"]              # doctest: +SKIP
        7.93...
    """
