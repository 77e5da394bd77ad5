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
from typing import Any, Callable, Iterator, Optional

import torch
from torch.utils.data import DataLoader

from ..capture.cache import batch_nbytes
from ..capture.hooks import FeatureCapture
from ..capture.layer_sets import describe_layers
from ..capture.layers import Layer
from ..capture.probe import (choose_indices, first_dataloader, map_tensors, probe_loader, source_dataset,
                             tensor_leaves)
from .collect import ProbeFeatures, collect_features, preflight
from .report import DSEMonitorWarning
from .config import MonitorConfig
from .kept import KeptBatches
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
        #: This rank's batches kept after the first pass (``cache_inputs``).
        self.kept = KeptBatches(config.cache_inputs)
        #: The first samples of this rank's last own pass (on the model's device) and their probe positions.
        self.spot: Optional[tuple[Any, torch.Tensor]] = None
        self.capture: Optional[FeatureCapture] = None

    @property
    def layer_names(self) -> list[str]:
        """The resolved layers' names, as they appear in the logged keys."""
        return [layer.name for layer in self.layers]

    def release(self) -> None:
        """Drop the per-run objects (they reference the data and the model)."""
        self.source, self.layers, self.capture = None, [], None
        self.kept.info = _ignore  # module level, so that ddp_spawn can pickle it
        self.forget_loader()

    def forget_loader(self) -> None:
        """Drop this rank's loader and kept batches (the indices changed, or the fit ended)."""
        self.loader, self.spot = None, None
        self.kept.forget()

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
            local: Optional[ProbeFeatures] = self._own_pass(trainer, pl_module, indices, want_labels, want_inputs)
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

    def _own_pass(self, trainer: Any, pl_module: Any, indices: list[int], want_labels: bool,
                  want_inputs: bool) -> ProbeFeatures:
        kept = self.kept
        kept.promote(trainer, pl_module.device)
        batches: Any = kept.cached if kept.cached is not None else self.shard_loader(trainer, indices)
        recorder = kept.recorder(trainer, pl_module.device, indices)
        if recorder is not None:
            recorder.loader, batches = batches, recorder
        try:
            local = self._collect(trainer, pl_module, batches, indices, want_labels, want_inputs)
        except torch.cuda.OutOfMemoryError:
            if recorder is None or recorder.tier.where != "device":
                raise
            kept.give_up(recorder)  # the kept batches took the room: load as without a cache
            recorder = None
            local = self._collect(trainer, pl_module, self.shard_loader(trainer, indices), indices,
                                  want_labels, want_inputs)
        if recorder is not None and kept.keep(recorder, self.loader):
            self.loader = None  # not read again: let its workers go
        return local

    def _collect(self, trainer: Any, pl_module: Any, batches: Any, indices: list[int], want_labels: bool,
                 want_inputs: bool) -> ProbeFeatures:
        self.capture = FeatureCapture(self.layers, self.config.pooling)
        return collect_features(trainer, pl_module, self._keeping_spot(batches, trainer, pl_module, len(indices)),
                                self.layers, self.config, self.capture, want_labels=want_labels,
                                want_inputs=want_inputs)

    def _keeping_spot(self, batches: Any, trainer: Any, pl_module: Any, n: int) -> Iterator[Any]:
        """Yield ``batches``, keeping a device copy of the first ``SPOT_ROWS`` samples (before the model
        runs them: it may write into its inputs) and their probe positions, for the checks of :mod:`.reuse`."""
        for i, batch in enumerate(batches):
            if i == 0:
                spot = map_tensors(batch, lambda t: t[:SPOT_ROWS].to(pl_module.device, copy=True) if t.ndim else t)
                first = trainer.global_rank * math.ceil(n / trainer.world_size)
                rows = min([SPOT_ROWS, n - first] + [len(t) for t in tensor_leaves(spot) if t.ndim])
                self.spot = (spot, torch.arange(first, first + max(rows, 0)))
            yield batch

    def spot_features(self, trainer: Any, pl_module: Any) -> Optional[tuple[ProbeFeatures, torch.Tensor]]:
        """The features of the samples kept by the last own pass (at most ``SPOT_ROWS``, run again now) and
        their probe positions; no loader is started. None when none are kept or the pass fails."""
        if self.spot is None:
            return None
        try:
            spot, positions = self.spot
            batch = map_tensors(spot, lambda t: t.clone())
            features = collect_features(trainer, pl_module, [batch], self.layers, self.config,
                                        FeatureCapture(self.layers, self.config.pooling),
                                        want_labels=False, want_inputs=False)
            return ProbeFeatures({n: z[: len(positions)] for n, z in features.features.items()}), positions
        except Exception:
            return None

    # ------------------------------------------------------------------ preflight
    def prepare(self, trainer: Any, pl_module: Any, state: MonitorState, warn: Warn, info: Warn) -> None:
        """Choose (or check the stored) indices, resolve the layers and run one peek batch.

        Configuration errors surface here, at fit start: no probe split, labels missing
        for ``dsmi_y``, an unknown layer, a layer that ``forward`` never calls. The
        resolved layers (globs, ``"blocks"``) are listed in one ``info`` line.
        """
        cfg = self.config
        self.kept.info = info
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
        raw = next(iter(peek))
        self.kept.sample_bytes = batch_nbytes(raw) / min(len(state.indices), 8)  # sizes the cache before the pass
        self.layers = preflight(trainer, pl_module, raw, cfg)
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
            self.loader = probe_loader(self.source, mine, self.config.batch_size, self._loader_kwargs(trainer))
        return self.loader

    def _loader_kwargs(self, trainer: Any) -> dict[str, Any]:
        """``probe_loader_kwargs``; else, for a Dataset probe, the workers of the trainer's val (else train) loader."""
        if self.config.probe_loader_kwargs is not None:
            return self.config.probe_loader_kwargs
        if isinstance(self.source, DataLoader):
            return {}  # it lends its own
        for loaders in (getattr(trainer, "val_dataloaders", None), getattr(trainer, "train_dataloader", None)):
            try:
                loader = first_dataloader(loaders)
            except Exception:
                continue
            if isinstance(loader, DataLoader):
                kwargs: dict[str, Any] = dict(num_workers=loader.num_workers, pin_memory=loader.pin_memory)
                if loader.num_workers > 0:
                    kwargs.update(persistent_workers=loader.persistent_workers,
                                  multiprocessing_context=loader.multiprocessing_context)
                return kwargs
        return {}

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
