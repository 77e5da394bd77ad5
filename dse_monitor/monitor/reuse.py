"""Reading the probe's features from the validation pass that has just run.

With ``probe="val"`` the probe is a subset of the validation split, and at an epoch end
Lightning has just run every validation sample through the model with the weights
the monitor is about to measure. Running the probe again repeats that forward pass
(on the embedded default, most of a measurement). :class:`ValidationReuse` instead
hooks the layers during that validation pass and keeps the rows of the probe samples.

It is used only where it is the same computation, and says nothing otherwise (the
monitor then runs its own pass, as always):

- single process (under DDP the validation split is spread over ranks), a fit (not
  the sanity check), an epoch cadence, no ``forward_fn``, no compiled piece (hooks in
  a compiled graph would not fire and would make dynamo recompile it);
- the first validation loader iterates a dataset like the probe's (same type and
  length; after the check, the very dataset object that was checked) in order
  (``SequentialSampler``), so row k of the pass is sample k; every probe sample seen,
  each layer read once per batch with one row per sample;
- no optimizer step between that validation and the measurement (same global step);
- verified: the first time, the monitor also runs its own pass and compares every
  row; at every later reuse it runs its own pass over the first probe batch and
  compares those rows. Validation that differs from the probe pass (EMA weights swapped
  in for validation, from the start or after a warm-up; test-time augmentation; a
  transform in ``on_after_batch_transfer``) turns reuse off for the fit, with one info line.

The hooks never raise into validation: an activation the pooling cannot read gives up
the pass, and the probe runs its own.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from ..capture.compiled import has_compiled
from ..capture.forward import split_batch
from ..capture.hooks import FeatureCapture
from ..capture.layers import Layer
from ..capture.probe import first_dataloader, map_tensors, source_dataset, tensor_leaves
from .collect import ProbeFeatures
from .config import MonitorConfig

#: Largest relative (Frobenius) difference between validation's and the probe pass's features
#: that still counts as the same computation (batch composition can change float rounding).
REUSE_TOLERANCE = 1e-4


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b||_F / ||b||_F`` in float64 (inf when the shapes differ)."""
    if a.shape != b.shape:
        return float("inf")
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b).clamp_min(1e-300))


def _worst_difference(reused: ProbeFeatures, own: Optional[ProbeFeatures]) -> float:
    """The largest :func:`relative_difference` over the layers between the probe's own rows (the
    first ``len`` of them, or all) and validation's same rows; inf when the layers differ or ``own`` is None."""
    if own is None or not own.features or set(own.features) != set(reused.features):
        return float("inf")
    return max(relative_difference(reused.features[n][: z.shape[0]], z) for n, z in own.features.items())


class _QuietCapture(FeatureCapture):
    """Hooks that never raise into the user's validation step: an error marks the pass broken."""

    broken = False

    def _quiet(self, hook: Callable) -> Callable:
        def quiet(*args: Any) -> None:
            try:
                hook(*args)
            except Exception:
                self.broken = True

        return quiet

    def _output_hook(self, layer: Layer) -> Callable:
        return self._quiet(super()._output_hook(layer))

    def _input_hook(self, name: str) -> Callable:
        return self._quiet(super()._input_hook(name))


def _samples(batch: Any) -> Optional[int]:
    """Samples in a split batch: its labels', else its first input tensor's length."""
    if batch.labels is not None:
        return len(batch.labels)
    leaves = tensor_leaves((batch.args, batch.kwargs))
    return int(leaves[0].shape[0]) if leaves and leaves[0].ndim else None


class ValidationReuse:
    """Captures the probe's rows during fit-time validation; see the module docstring."""

    def __init__(self, config: MonitorConfig) -> None:
        self.config = config
        self.enabled = bool(config.reuse_validation)
        self.verified = False
        self._capture: Optional[FeatureCapture] = None
        self._result: Optional[tuple[int, ProbeFeatures, Any]] = None
        self._module: Any = None
        self._dataset: Any = None  # the validation dataset of this pass
        self._checked_dataset: Any = None  # the one the check passed on
        self._taken_dataset: Any = None

    def reset(self) -> None:
        """A new fit: verify again."""
        self.stop()
        self.enabled, self.verified, self._result = bool(self.config.reuse_validation), False, None
        self._checked_dataset = self._taken_dataset = None

    # ------------------------------------------------------------------ the validation pass
    def start(self, trainer: Any, pl_module: Any, layers: list, source: Any, indices: Optional[list[int]]) -> None:
        """At validation start: hook the layers when this validation pass can stand for the probe pass."""
        self.stop()
        self._result = None
        if not (self.enabled and layers and indices and self._eligible(trainer, pl_module, source)):
            return
        n_total = len(source_dataset(source))
        self._slot = torch.full((n_total,), -1, dtype=torch.long)
        self._slot[torch.as_tensor(indices)] = torch.arange(len(indices))
        self._n, self._seen, self._rows, self._n_total = len(indices), 0, {}, n_total
        self._filled = torch.zeros(len(indices), dtype=torch.bool)
        self._module, self._expected = pl_module, None
        self._capture = _QuietCapture(layers, self.config.pooling)
        self._capture.register()

    def _eligible(self, trainer: Any, pl_module: Any, source: Any) -> bool:
        cfg = self.config
        if cfg.probe != "val" or cfg.forward_fn is not None or cfg.every_n_epochs is None:
            return False
        if trainer.world_size != 1 or getattr(trainer, "sanity_checking", False):
            return False
        if str(getattr(trainer.state.fn, "value", trainer.state.fn)) != "fit" or has_compiled(pl_module):
            return False
        if (trainer.current_epoch + 1) % cfg.every_n_epochs != 0:
            return False
        try:
            loader = first_dataloader(trainer.val_dataloaders)
        except Exception:
            return False
        if not (isinstance(loader, DataLoader) and isinstance(loader.sampler, SequentialSampler)
                and type(loader.batch_sampler) is BatchSampler and loader.batch_sampler.sampler is loader.sampler):
            return False  # a custom batch sampler (length bucketing) may reorder a sequential sampler
        self._dataset, probe_set = loader.dataset, source_dataset(source)
        if self.verified:  # a reloaded (new) dataset object is checked again, never assumed equal
            return self._dataset is self._checked_dataset
        return self._dataset is probe_set or (type(self._dataset) is type(probe_set)
                                              and len(self._dataset) == len(probe_set))

    def before_batch(self, batch: Any, dataloader_idx: int) -> None:
        if self._capture is None:
            return
        try:
            if dataloader_idx != 0:
                self._capture.attention_mask, self._expected = None, None
                return
            # containers copied: a batch_fn that pops keys must not change validation's batch
            probe_batch = split_batch(map_tensors(batch, lambda t: t), self._module, self.config.batch_fn)
            self._capture.attention_mask, self._expected = probe_batch.attention_mask, _samples(probe_batch)
        except Exception:
            self.stop()

    def after_batch(self, dataloader_idx: int) -> None:
        """Keep the probe rows of this batch; any surprise gives up for this pass."""
        if self._capture is None:
            return
        try:
            features = self._capture.take()
        except RuntimeError:  # a layer did not run (another loader's model path, a skipped step)
            features = None
        if dataloader_idx != 0:
            return
        sizes = {z.shape[0] for z in features.values()} if features else set()
        if len(sizes) != 1 or self._capture.broken or self._expected is None or sizes != {self._expected}:
            self.stop()  # a pooling error, or rows that are not one per sample of this batch
            return
        (size,) = sizes
        slots = self._slot[self._seen : self._seen + size]
        if len(slots) != size:  # more rows than the dataset: a layer ran more than once per sample
            self.stop()
            return
        self._seen += size
        keep = slots >= 0
        if keep.any():
            where = keep.nonzero().squeeze(1)
            for name, z in features.items():
                rows = self._rows.get(name)
                if rows is None:
                    rows = self._rows[name] = torch.zeros(self._n, *z.shape[1:], dtype=z.dtype, device=z.device)
                rows[slots[where].to(rows.device)] = z[where.to(z.device)]
            self._filled[slots[where]] = True

    def finish(self, trainer: Any) -> None:
        """At validation end: remove the hooks; keep the features if every probe sample was seen."""
        complete = self._capture is not None and bool(self._filled.all()) and self._seen == self._n_total
        rows, dataset = (self._rows if complete else None), self._dataset
        self.stop()
        if rows is not None:
            self._result = (int(trainer.global_step), ProbeFeatures(rows), dataset)

    def stop(self) -> None:
        """Remove the hooks (safe to call twice) and drop this pass's rows."""
        if self._capture is not None:
            self._capture.remove()
        self._capture, self._module, self._rows, self._dataset = None, None, {}, None

    # ------------------------------------------------------------------ the measurement
    def take(self, global_step: int) -> Optional[ProbeFeatures]:
        """This step's features from validation (copied out of inference mode), or None."""
        result, self._result = self._result, None
        if result is None or result[0] != global_step or not self.enabled:
            return None
        self._taken_dataset = result[2]
        return ProbeFeatures({name: z.clone() for name, z in result[1].features.items()})

    def spot_check(self, reused: ProbeFeatures, first: Optional[ProbeFeatures], info: Callable[[str], None]) -> bool:
        """After the full check: do the probe's own rows of its first samples still match? Else reuse ends."""
        worst = _worst_difference(reused, first)
        if worst <= REUSE_TOLERANCE:
            return True
        self.enabled = False
        info(f"DSEMonitor: the validation pass no longer gives the probe's features (first batch: relative "
             f"difference {worst:.2g}; EMA weights swapped in after a warm-up?); the probe runs its own pass "
             "from now on.")
        return False

    def verify(self, reused: ProbeFeatures, own: ProbeFeatures, info: Callable[[str], None]) -> None:
        """Compare validation's features with the probe pass's once; reuse from now on only if equal."""
        worst = _worst_difference(reused, own)
        if worst <= REUSE_TOLERANCE:
            self.verified, self._checked_dataset = True, self._taken_dataset
            info("DSEMonitor: the validation pass gives the probe's features (checked once); later "
                 "epoch-end measurements read them there instead of running the probe again.")
        else:
            self.enabled = False
            info(f"DSEMonitor: the validation pass computes other features than the probe pass (relative "
                 f"difference {worst:.2g}: EMA weights, test-time augmentation, on_after_batch_transfer?); "
                 "the probe keeps its own pass.")
