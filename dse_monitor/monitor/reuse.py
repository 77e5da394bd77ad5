"""Reading the probe's features from the validation pass that has just run.

With ``probe="val"`` the probe is a subset of the validation split, and at an epoch end
Lightning has just run every validation sample through the model with the weights
the monitor is about to measure. Running the probe again repeats that forward pass
(on the embedded default, most of a measurement). :class:`ValidationReuse` instead
hooks the layers during that validation pass and keeps the rows of the probe samples.

It is used only where it is the same computation, and says nothing otherwise (the
monitor then runs its own pass, as always):

- a fit (not the sanity check), an epoch cadence, no ``forward_fn``, no compiled piece
  (hooks in a compiled graph would not fire and would make dynamo recompile it);
- the first validation loader iterates a dataset like the probe's (same type and
  length; after the check, the very dataset object that was checked) in a known order:
  ``SequentialSampler`` (one process), or under DDP the ``DistributedSampler`` with
  ``shuffle=False`` that Lightning puts in, so the sampler's indices say which sample
  each row is; each rank hooks its own shard and the rows are gathered into probe
  order (a sample that the sampler's padding repeats is taken once, from the lowest
  rank); every probe sample seen on some rank, each layer read once per batch with one
  row per sample. Another sampler (shuffled, custom) or a pass that misses probe
  samples (``limit_val_batches``) leaves the probe to its own pass, with one info line;
- no optimizer step between that validation and the measurement (same global step);
- verified: the first time, the monitor also runs its own pass and compares every
  row; at every later reuse it runs again the first samples that its last own pass
  kept (at most 16 a rank, on the device: no loader is started) and compares those
  rows; all ranks agree on every decision. Validation that differs from the probe pass (EMA weights swapped
  in for validation, from the start or after a warm-up; test-time augmentation; a
  transform in ``on_after_batch_transfer``) turns reuse off for the fit, with one info line.

The hooks never raise into validation: an activation the pooling cannot read gives up
the pass, and the probe runs its own.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch.utils.data import BatchSampler, DataLoader

from ..capture.compiled import has_compiled
from ..capture.forward import split_batch
from ..capture.hooks import FeatureCapture
from ..capture.layers import Layer
from ..capture.probe import first_dataloader, map_tensors, source_dataset, tensor_leaves
from .collect import ProbeFeatures
from .config import MonitorConfig
from .reuse_ranks import agree, gather_rows, visit_order

#: Largest relative (Frobenius) difference between validation's and the probe pass's features
#: that still counts as the same computation (batch composition can change float rounding).
REUSE_TOLERANCE = 1e-4


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b||_F / ||b||_F`` in float64 (inf when the shapes differ)."""
    if a.shape != b.shape:
        return float("inf")
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b).clamp_min(1e-300))


def _worst_difference(reused: ProbeFeatures, own: Optional[ProbeFeatures],
                      positions: Optional[torch.Tensor] = None) -> float:
    """The largest :func:`relative_difference` over the layers between the probe's own rows (those at
    ``positions``, or all) and validation's same rows; inf when the layers differ or ``own`` is None."""
    if own is None or not own.features or set(own.features) != set(reused.features):
        return float("inf")
    pick = (lambda z: z) if positions is None else (lambda z: z[positions.to(z.device)])  # noqa: E731
    return max(relative_difference(pick(reused.features[n]), z) for n, z in own.features.items())


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
        self._result: Optional[tuple[int, dict[str, torch.Tensor], torch.Tensor, Any]] = None
        self._module: Any = None
        self._dataset: Any = None  # the validation dataset of this pass
        self._checked_dataset: Any = None  # the one the check passed on
        self._taken_dataset: Any = None
        self._why: Optional[str] = None  # why this pass could not stand for the probe's, said once
        self._said: set[str] = set()

    def reset(self) -> None:
        """A new fit: verify again."""
        self.stop()
        self.enabled, self.verified, self._result = bool(self.config.reuse_validation), False, None
        self._checked_dataset = self._taken_dataset = self._why = None
        self._said = set()

    # ------------------------------------------------------------------ the validation pass
    def start(self, trainer: Any, pl_module: Any, layers: list, source: Any, indices: Optional[list[int]]) -> None:
        """At validation start: hook the layers when this validation pass can stand for the probe pass."""
        self.stop()
        self._result = None
        order = self._eligible(trainer, pl_module, source) if self.enabled and layers and indices else None
        if order is None:
            return
        slot = torch.full((len(source_dataset(source)),), -1, dtype=torch.long)
        slot[torch.as_tensor(indices)] = torch.arange(len(indices))
        self._visits = slot[torch.as_tensor(order, dtype=torch.long)]  # probe position of each row, or -1
        self._n, self._seen, self._rows = len(indices), 0, {}
        self._filled = torch.zeros(len(indices), dtype=torch.bool)
        self._module, self._expected = pl_module, None
        self._capture = _QuietCapture(layers, self.config.pooling)
        self._capture.register()

    def _applies(self) -> bool:
        """The configuration allows reuse (the same on every rank)."""
        cfg = self.config
        return bool(cfg.reuse_validation) and cfg.probe == "val" and cfg.forward_fn is None \
            and cfg.every_n_epochs is not None

    def _eligible(self, trainer: Any, pl_module: Any, source: Any) -> Optional[list[int]]:
        """The dataset indices this rank's validation visits, when the pass can stand for the probe's."""
        cfg = self.config
        if not self._applies() or getattr(trainer, "sanity_checking", False):
            return None
        if str(getattr(trainer.state.fn, "value", trainer.state.fn)) != "fit" or has_compiled(pl_module):
            return None
        if (trainer.current_epoch + 1) % cfg.every_n_epochs != 0:
            return None
        try:
            loader = first_dataloader(trainer.val_dataloaders)
        except Exception:
            return None
        if not isinstance(loader, DataLoader):
            return None
        order = visit_order(loader.sampler, trainer)
        if order is None or type(loader.batch_sampler) is not BatchSampler \
                or loader.batch_sampler.sampler is not loader.sampler:  # a custom batch sampler may reorder
            self._why = (f"DSEMonitor: the validation loader visits its samples in an order the monitor cannot "
                         f"follow ({type(loader.sampler).__name__}, {type(loader.batch_sampler).__name__}; it reads "
                         "validation in sequential order, shuffle=False); the probe runs its own pass.")
            return None
        self._dataset, probe_set = loader.dataset, source_dataset(source)
        if self.verified:  # a reloaded (new) dataset object is checked again, never assumed equal
            return order if self._dataset is self._checked_dataset else None
        same = self._dataset is probe_set or (type(self._dataset) is type(probe_set)
                                              and len(self._dataset) == len(probe_set))
        return order if same else None

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
        slots = self._visits[self._seen : self._seen + size]
        if len(slots) != size:  # more rows than the sampler's indices: a layer ran more than once per sample
            self.stop()
            return
        self._seen += size
        where = (slots >= 0).nonzero().squeeze(1)
        for name, z in features.items():  # every layer allocated on every rank: equal shapes for the gather
            rows = self._rows.get(name)
            if rows is None:
                rows = self._rows[name] = torch.zeros(self._n, *z.shape[1:], dtype=z.dtype, device=z.device)
            rows[slots[where].to(rows.device)] = z[where.to(z.device)]
        self._filled[slots[where]] = True

    def finish(self, trainer: Any) -> None:
        """At validation end: remove the hooks; keep the rows if this rank visited all its samples."""
        hooked = self._capture is not None
        complete = hooked and self._seen == len(self._visits) and bool(self._rows)
        if complete:
            self._result = (int(trainer.global_step), self._rows, self._filled, self._dataset)
        elif hooked:
            self._why = ("DSEMonitor: the validation pass did not visit every probe sample (limit_val_batches?); "
                         "the probe runs its own pass.")
        self.stop()

    def stop(self) -> None:
        """Remove the hooks (safe to call twice) and drop this pass's rows."""
        if self._capture is not None:
            self._capture.remove()
        self._capture, self._module, self._rows, self._dataset = None, None, {}, None

    # ------------------------------------------------------------------ the measurement
    def _say(self, info: Callable[[str], None], message: Optional[str]) -> None:
        if message is not None and message not in self._said:
            self._said.add(message)
            info(message)

    def take(self, trainer: Any, global_step: int, info: Callable[[str], None]) -> Optional[ProbeFeatures]:
        """This step's features from validation, in probe order on every rank, or None on every rank.
        Must be called on every rank (under DDP it agrees and gathers)."""
        result, self._result = self._result, None
        if not self._applies():
            return None
        why, self._why = self._why, None
        ok = result is not None and result[0] == global_step and self.enabled
        agreed = agree(trainer, ok)
        if ok and not agreed and why is None:
            why = ("DSEMonitor: the validation pass did not visit every probe sample on some rank; the probe runs "
                   "its own pass.")
        self._say(info, why)
        if not agreed:
            return None
        features = gather_rows(trainer, result[1], result[2])
        if features is None:
            self._say(info, "DSEMonitor: the validation pass did not visit every probe sample (limit_val_batches?); "
                            "the probe runs its own pass.")
            return None
        self._taken_dataset = result[3]
        return features

    def spot_check(self, trainer: Any, reused: ProbeFeatures, spot: Optional[tuple[ProbeFeatures, torch.Tensor]],
                   info: Callable[[str], None]) -> bool:
        """After the full check: do the probe's kept samples still give validation's rows (on every rank)? Else
        reuse ends. ``spot``: their features, just computed, and their probe positions."""
        worst = float("inf") if spot is None else _worst_difference(reused, spot[0], spot[1])
        if agree(trainer, worst <= REUSE_TOLERANCE):
            return True
        self.enabled = False
        info(f"DSEMonitor: the validation pass no longer gives the probe's features (first samples: relative "
             f"difference {worst:.2g}; EMA weights swapped in after a warm-up?); the probe runs its own pass "
             "from now on.")
        return False

    def verify(self, trainer: Any, reused: ProbeFeatures, own: ProbeFeatures, info: Callable[[str], None]) -> None:
        """Compare validation's features with the probe pass's once; reuse from now on only if equal."""
        worst = _worst_difference(reused, own)
        if agree(trainer, worst <= REUSE_TOLERANCE):
            self.verified, self._checked_dataset = True, self._taken_dataset
            info("DSEMonitor: the validation pass gives the probe's features (checked once); later "
                 "epoch-end measurements read them there instead of running the probe again.")
        else:
            self.enabled = False
            info(f"DSEMonitor: the validation pass computes other features than the probe pass (relative "
                 f"difference {worst:.2g}: EMA weights, test-time augmentation, on_after_batch_transfer?); "
                 "the probe keeps its own pass.")
