"""The probe's batches kept between passes (``cache_inputs``): where, whether, and when they move.

:mod:`dse_monitor.capture.cache` holds the tiers and the byte budgets; this module
applies them during a fit. Before the first pass the batches' size is estimated from
the preflight's peek batch and a tier is chosen (:func:`~dse_monitor.capture.cache.plan_cache`).
The device tier waits until training has run a step: at init the model's free memory
does not yet show what training will need, so batches that fit the host budget are
kept in pinned memory and moved to the device at the next pass when they fit there.
After the first full pass they are kept only when the split is deterministic (two
loads of the first batch are equal) and they hold no numpy arrays; every decision not
to keep them is said in one info line.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

from ..capture.cache import (BatchRecorder, CacheBudget, CachedBatches, describe_budget, holds_arrays, plan_cache,
                             same_batches)

_WHERE = {"device": "on the device", "pinned": "in pinned host memory", "host": "in host memory"}


def _ignore(message: str) -> None:
    pass


class KeptBatches:
    """This rank's kept probe batches and the decision about them (one per probe set)."""

    def __init__(self, cache_inputs: Any) -> None:
        self.cache_inputs = cache_inputs
        #: The shares of device memory and host RAM the kept batches may take (tests lower them).
        self.budget = CacheBudget()
        #: The kept batches, or None.
        self.cached: Optional[CachedBatches] = None
        self.sample_bytes = 0.0  # per sample, from the preflight's peek batch
        self.info: Callable[[str], None] = _ignore
        self.forget()

    def forget(self) -> None:
        """Drop the batches and decide again at the next pass (the indices changed, or the fit ended)."""
        self.cached, self.decided, self._promote_pending = None, False, False

    def recorder(self, trainer: Any, device: Any, indices: list[int]) -> Optional[BatchRecorder]:
        """A recorder in the cheapest tier that fits this rank's share, or None (kept, decided, or waiting)."""
        if self.cached is not None or self.decided or not self.cache_inputs:
            return None
        # before training has run, free device memory does not show what training needs
        on_device = device.type != "cuda" or trainer.global_step > 0
        estimate = int(self.sample_bytes * math.ceil(len(indices) / trainer.world_size))
        processes = int(getattr(trainer, "num_devices", 1) or 1)
        tier = plan_cache(estimate, device, self.budget, unlimited=self.cache_inputs is True,
                          device_allowed=on_device, host_processes=processes)
        if tier is None and on_device:
            self.decided = True
            self.info(f"DSEMonitor: the probe batches take about {estimate / 2**30:.2f} GiB per rank, over the "
                      f"cache budgets ({describe_budget(device, self.budget, processes)}); they are loaded at every "
                      f"measurement (cache_inputs=True keeps them in {'pinned ' * (device.type == 'cuda')}host "
                      f"memory: {estimate / 2**30:.2f} GiB).")
        self._promote_pending = tier is not None and tier.where == "pinned" and not on_device
        return None if tier is None else BatchRecorder(None, tier.limit_bytes, tier)

    def promote(self, trainer: Any, device: Any) -> None:
        """Once training has run: move batches kept in pinned memory to the device when they fit there."""
        if not (self._promote_pending and self.cached is not None and trainer.global_step > 0):
            return
        self._promote_pending = False
        tier = plan_cache(self.cached.nbytes, device, self.budget)
        if tier is not None and tier.where == "device":
            try:
                self.cached = self.cached.moved(tier)
                self.info("DSEMonitor: the kept probe batches moved to the device.")
            except Exception:  # e.g. out of device memory: they stay in pinned memory
                pass

    def give_up(self, recorder: BatchRecorder) -> None:
        """The pass ran out of device memory while the recorder filled it: drop it, load as without a cache."""
        recorder.drop()
        self.decided = True
        self.info("DSEMonitor: out of device memory while keeping the probe batches on the device; they are "
                  "dropped and loaded at every measurement.")

    def keep(self, recorder: BatchRecorder, loader: Any) -> bool:
        """After the first full pass: keep its batches when they fit and ``loader`` gives them again; True if kept."""
        self.decided = True
        try:
            self.cached = self._checked(recorder, loader)
        except Exception as err:  # the features of this pass stand; only the cache is given up
            self.info(f"DSEMonitor: the probe batches are not kept ({type(err).__name__}: {err}).")
        return self.cached is not None

    def _checked(self, recorder: BatchRecorder, loader: Any) -> Optional[CachedBatches]:
        if recorder.error is not None:
            self.info(f"DSEMonitor: keeping the probe batches failed ({type(recorder.error).__name__}: "
                      f"{recorder.error}); they are loaded at every measurement.")
            return None
        if recorder.batches is None:
            self.info(f"DSEMonitor: the probe batches take over {recorder.limit_bytes / 2**20:.0f} MiB, the cache "
                      "budget; they are loaded at every measurement (cache_inputs=True keeps them whatever "
                      "their size).")
            return None
        if self.cache_inputs == "auto" and any(holds_arrays(b) for b in recorder.batches):
            self.info("DSEMonitor: the probe batches hold numpy arrays, which the cache can neither compare nor "
                      "copy; they are loaded at every measurement (cache_inputs=True keeps them).")
            return None
        if self.cache_inputs == "auto" and recorder.batches and loader is not None:
            # A second load of the first batch must give the same tensors: random transforms on the
            # probe split would make each measurement see other inputs, and a cache would hide that.
            if not same_batches(next(iter(loader)), recorder.batches[0]):
                self.info("DSEMonitor: two loads of the first probe batch differ (random transforms on the "
                          "probe split?); the probe is loaded at every measurement (cache_inputs=True keeps "
                          "the first draw as a fixed probe).")
                return None
        cached = CachedBatches(recorder.batches, recorder.tier)
        self.info(f"DSEMonitor: keeping the probe batches {_WHERE[recorder.tier.where]} ({len(cached)} batch"
                  f"{'es' if len(cached) != 1 else ''}, {recorder.nbytes / 2**20:.1f} MiB) for the next "
                  "measurements.")
        return cached
