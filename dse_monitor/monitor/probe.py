"""The probe set: where it comes from, which samples, each rank's share, and the preflight.

This is the only module that reads the trainer's loaders (``fit_loop._data_source``,
Lightning's record of the train/val dataloader hooks; there is no public accessor that
gives the loader without iterating it). Everything else gets a Dataset or DataLoader.

The probe is a fixed, seeded subset of the split (:func:`~dse_monitor.capture.probe.choose_indices`),
stored in the checkpoint; under DDP rank r probes the r-th contiguous share, padded
with the first index to equal shapes for ``all_gather``, and the gathered features are
cut back to the N probe samples in probe order.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Optional

import torch
from torch.utils.data import DataLoader

from ..capture.cache import CACHE_LIMIT_BYTES, BatchRecorder, CachedBatches, holds_arrays, same_batches
from ..capture.hooks import FeatureCapture
from ..capture.layer_sets import describe_layers
from ..capture.layers import Layer
from ..capture.probe import choose_indices, first_dataloader, map_tensors, probe_loader, source_dataset
from .collect import ProbeFeatures, collect_features, preflight
from .report import DSEMonitorWarning
from .config import MonitorConfig
from .state import MonitorState

Warn = Callable[[str], None]


def resolve_source(trainer: Any, probe: Any) -> Any:
    """The probe's Dataset or DataLoader: given, or the trainer's ``"val"`` / ``"train"`` loader."""
    if not isinstance(probe, str):
        return probe
    loop = trainer.fit_loop if probe == "train" else trainer.fit_loop.epoch_loop.val_loop
    source = getattr(loop, "_data_source", None)
    other = "train" if probe == "val" else "val"
    fix = f"pass probe={other!r} or probe=<Dataset or DataLoader>."
    if source is None or not source.is_defined():
        raise ValueError(
            f"DSEMonitor(probe={probe!r}) found no {probe} dataloader on the trainer, model or datamodule; {fix}"
        )
    loaders = source.dataloader()
    try:
        if loaders is None:
            raise ValueError("it returned None")
        return first_dataloader(loaders)
    except ValueError as err:  # e.g. an empty list: a split the datamodule does not have
        raise ValueError(f"DSEMonitor(probe={probe!r}): the {probe} dataloader hook gave no loader "
                         f"({err}); {fix}") from err


#: Samples the probe runs itself at every validation reuse, to check that validation still computes its features.
SPOT_ROWS = 16


def _ignore(message: str) -> None:
    pass


class ProbeSet:
    """The probe of one fit: source, indices (in the state), resolved layers, this rank's loader."""

    def __init__(self, config: MonitorConfig) -> None:
        self.config = config
        self.source: Any = None
        self.layers: list[Layer] = []
        self.loader: Optional[DataLoader] = None
        #: This rank's batches kept in memory after the first pass (``cache_inputs``), or None.
        self.cached: Optional[CachedBatches] = None
        self._cache_decided = False
        self._info: Warn = _ignore  # set by prepare(); module level so that ddp_spawn can pickle it
        self.capture: Optional[FeatureCapture] = None

    @property
    def layer_names(self) -> list[str]:
        """The resolved layers' names, as they appear in the logged keys."""
        return [layer.name for layer in self.layers]

    def release(self) -> None:
        """Drop the per-run objects (they reference the data and the model)."""
        self.source, self.layers, self.capture, self._info = None, [], None, _ignore
        self.forget_loader()

    def forget_loader(self) -> None:
        """Drop this rank's loader and kept batches (the indices changed, or the fit ended)."""
        self.loader, self.cached, self._cache_decided = None, None, False

    def remove_hooks(self) -> None:
        """Hooks never outlive a probe pass (a context manager removes them); this is a no-op
        that guards against an interrupted one."""
        if self.capture is not None:
            self.capture.remove()

    # ------------------------------------------------------------------ one pass
    def run(self, trainer: Any, pl_module: Any, indices: list[int], step: int, *, want_labels: bool,
            want_inputs: bool) -> Optional[ProbeFeatures]:
        """This rank's features, gathered in probe order; None on every rank when any rank failed.

        A failing pass (out of memory, a batch the model rejects) warns on its rank and
        skips the measurement everywhere: all ranks agree before gathering, so that one
        rank skipping alone cannot leave the others waiting.
        """
        try:
            batches: Any = self.cached if self.cached is not None else self.shard_loader(trainer, indices)
            recorder = None
            if self.cached is None and not self._cache_decided and self.config.cache_inputs:
                limit = None if self.config.cache_inputs is True else CACHE_LIMIT_BYTES
                batches = recorder = BatchRecorder(batches, limit)
            self.capture = FeatureCapture(self.layers, self.config.pooling)
            local = collect_features(trainer, pl_module, batches, self.layers, self.config, self.capture,
                                     want_labels=want_labels, want_inputs=want_inputs)
            if recorder is not None:
                self._keep(recorder)
        except Exception as err:  # never kill the run for a measurement
            local = None
            warnings.warn(
                f"DSEMonitor: the probe pass at epoch {step} failed on rank {trainer.global_rank} "
                f"({type(err).__name__}: {err}); skipping this measurement.",
                DSEMonitorWarning,
                stacklevel=4,
            )
        ok = local is not None
        if trainer.world_size > 1:
            ok = trainer.strategy.reduce_boolean_decision(ok, all=True)
        return self.gather(trainer, local, len(indices)) if ok else None

    def first_batch(self, trainer: Any, pl_module: Any, indices: list[int]) -> Optional[ProbeFeatures]:
        """This rank's features of its first ``SPOT_ROWS`` probe samples (the checks of :mod:`.reuse`),
        or None on failure (e.g. a batch whose tensors do not all lead with the sample dimension)."""
        try:
            if self.cached is not None:
                batch = next(iter(CachedBatches(self.cached.batches[:1])))
            else:
                batch = next(iter(self.shard_loader(trainer, indices)))
            batches = [map_tensors(batch, lambda t: t[:SPOT_ROWS] if t.ndim else t)]
            return collect_features(trainer, pl_module, batches, self.layers, self.config,
                                    FeatureCapture(self.layers, self.config.pooling), want_labels=False, want_inputs=False)
        except Exception:
            return None

    def _keep(self, recorder: BatchRecorder) -> None:
        """After the first full pass: keep its batches when they fit and the split is deterministic."""
        self._cache_decided = True
        try:
            self.cached = self._checked_cache(recorder)
        except Exception as err:  # the features of this pass stand; only the cache is given up
            self._info(f"DSEMonitor: the probe batches are not kept ({type(err).__name__}: {err}).")

    def _checked_cache(self, recorder: BatchRecorder) -> Optional[CachedBatches]:
        mib = recorder.nbytes / 2**20
        if recorder.batches is None:
            self._info(f"DSEMonitor: the probe batches take over {CACHE_LIMIT_BYTES / 2**20:.0f} MiB; they are "
                       "loaded at every measurement (cache_inputs=True keeps them whatever their size).")
            return None
        if self.config.cache_inputs == "auto" and any(holds_arrays(b) for b in recorder.batches):
            self._info("DSEMonitor: the probe batches hold numpy arrays, which the cache can neither compare nor "
                       "copy; they are loaded at every measurement (cache_inputs=True keeps them).")
            return None
        if self.config.cache_inputs == "auto" and recorder.batches and self.loader is not None:
            # A second load of the first batch must give the same tensors: random transforms on the
            # probe split would make each measurement see other inputs, and a cache would hide that.
            if not same_batches(next(iter(self.loader)), recorder.batches[0]):
                self._info("DSEMonitor: two loads of the first probe batch differ (random transforms on the "
                           "probe split?); the probe is loaded at every measurement (cache_inputs=True keeps "
                           "the first draw as a fixed probe).")
                return None
        cached = CachedBatches(recorder.batches)
        self._info(f"DSEMonitor: keeping the probe batches in memory ({len(cached)} batch"
                   f"{'es' if len(cached) != 1 else ''}, {mib:.1f} MiB) for the next measurements.")
        return cached

    # ------------------------------------------------------------------ preflight
    def prepare(self, trainer: Any, pl_module: Any, state: MonitorState, warn: Warn, info: Warn) -> None:
        """Choose (or check the stored) indices, resolve the layers and run one peek batch.

        Configuration errors surface here, at fit start: no probe split, labels missing
        for ``dsmi_y``, an unknown layer, a layer that ``forward`` never calls. The
        resolved layers (globs, ``"blocks"``) are listed in one ``info`` line.
        """
        cfg = self.config
        self._info = info
        self.source = resolve_source(trainer, cfg.probe)
        n_total = len(source_dataset(self.source))
        if n_total < 2:
            raise ValueError(f"DSEMonitor needs a probe split of at least 2 samples, got {n_total}.")
        if state.indices is None:
            if cfg.num_samples is not None and cfg.num_samples > n_total:
                warn(f"DSEMonitor: num_samples={cfg.num_samples} is larger than the probe split "
                     f"({cfg.probe_name()}: {n_total} samples); probing all {n_total}.")
            state.indices = choose_indices(n_total, cfg.num_samples, cfg.seed)
        elif max(state.indices) >= n_total:
            raise ValueError(
                f"DSEMonitor: the stored probe indices go up to {max(state.indices)} but the probe split has "
                f"{n_total} samples; the checkpoint belongs to another dataset."
            )
        self.forget_loader()
        peek = probe_loader(self.source, state.indices[: min(len(state.indices), 8)], batch_size=8)
        self.layers = preflight(trainer, pl_module, next(iter(peek)), cfg)
        if len(self.layers) > 1 or any(layer.name != name for layer, name in zip(self.layers, cfg.layers)):
            info(describe_layers(self.layers))

    # ------------------------------------------------------------------ shards
    def shard_loader(self, trainer: Any, indices: list[int]) -> DataLoader:
        """This rank's loader (built once per fit): its contiguous share, padded to the common length."""
        if self.loader is None:
            world, rank = trainer.world_size, trainer.global_rank
            share = math.ceil(len(indices) / world)
            mine = indices[rank * share : (rank + 1) * share]
            mine = mine + [indices[0]] * (share - len(mine))  # equal shapes for all_gather
            self.loader = probe_loader(self.source, mine, self.config.batch_size)
        return self.loader

    @staticmethod
    def gather(trainer: Any, local: ProbeFeatures, n: int) -> ProbeFeatures:
        """The ranks' shares concatenated in probe order (rank 0's first), cut to the N probe samples."""
        world = trainer.world_size

        def gather(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            if t is None:
                return None
            if world > 1:
                t = trainer.strategy.all_gather(t.contiguous()).reshape(world * t.shape[0], *t.shape[1:])
            return t[:n]

        return ProbeFeatures({name: gather(z) for name, z in local.features.items()},
                             gather(local.labels), gather(local.inputs), local.why_no_inputs,
                             gather(local.bad_inputs))
