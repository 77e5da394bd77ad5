"""Keeping the probe's inputs: a probe past the old 256 MiB budget is read once, the values do not change."""
from __future__ import annotations

import logging

import lightning.pytorch as L
import pytest
import torch
from dse_callback_models import LitClassifier, trainer_kwargs
from dse_counting import CountingImages, PooledNet, ReadLog
from torch.utils.data import DataLoader

from dse_monitor import DSEMonitor
from dse_monitor.capture.cache import CacheBudget


class KeptDtype(L.Callback):
    """What the monitor keeps, seen at the end of the first epoch (listed after the monitor)."""

    def on_train_epoch_end(self, trainer, pl_module):
        cached = trainer.callbacks[0]._probe.kept.cached
        self.kept = None if cached is None else (cached.tier.where, cached.batches[0][0].dtype, cached.nbytes)


def _fit(tmp_path, probe, epochs=2, budget=None, **kw):
    L.seed_everything(0)
    monitor = DSEMonitor(probe=probe, num_samples=None, metrics=["dse", "dsmi_y"], sigma=1.0, **kw)
    if budget is not None:
        monitor._probe.kept.budget = budget
    log, kept = ReadLog(), KeptDtype()
    model = LitClassifier(net=PooledNet(), n_train=32, n_val=32, size=8)
    L.Trainer(callbacks=[monitor, log, kept], **trainer_kwargs(tmp_path, max_epochs=epochs)).fit(model)
    return monitor, log.per_point, kept.kept


def test_a_probe_past_256_mib_is_read_once_for_three_measurements_with_the_uncached_values(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="dse_monitor")
    probe = CountingImages.uint8(352, 512)  # 352 x 3 x 512 x 512 uint8 = 264 MiB, over the old auto budget
    size = probe.x.numel() + probe.y.numel() * 8
    assert size > 256 * 2**20
    monitor, reads, kept = _fit(tmp_path, probe)
    # the preflight's peek (8), the first pass (all), the second load of its first batch (64): then nothing
    assert reads == [8, 352 + 64, 0, 0]
    assert kept == ("host", torch.uint8, size)  # on the CPU the model's device is the host; the dtype is kept
    assert f"keeping the probe batches in host memory (6 batches, {size / 2**20:.1f} MiB)" in caplog.text
    uncached, reads, kept = _fit(tmp_path, probe, cache_inputs=False)
    assert reads == [8, 352, 352, 352] and kept is None
    assert sorted(monitor.history) == [0, 1, 2]
    for epoch, values in uncached.history.items():
        assert monitor.history[epoch] == pytest.approx(values, rel=1e-6, abs=1e-9)


def test_a_probe_over_the_budget_is_loaded_every_time_with_one_line(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="dse_monitor")
    probe = CountingImages.like(100)
    monitor, reads, kept = _fit(tmp_path, probe, budget=CacheBudget(host_share=1e-9))
    assert reads == [8, 100, 100, 100] and kept is None and len(monitor.history) == 3
    assert caplog.text.count("over the cache budgets (host: 0% of available RAM") == 1
    assert "cache_inputs=True keeps them in host memory: 0.00 GiB" in caplog.text
    # True keeps them whatever the budget
    _, reads, kept = _fit(tmp_path, probe, budget=CacheBudget(host_share=1e-9), cache_inputs=True)
    assert reads == [8, 100, 0, 0] and kept[0] == "host"


class WorkerLoaders(LitClassifier):
    def val_dataloader(self):
        loader = super().val_dataloader()
        return DataLoader(loader.dataset, batch_size=self.batch_size, num_workers=1, persistent_workers=True)


class ProbeLoader(L.Callback):
    def on_train_start(self, trainer, pl_module):
        loader = trainer.callbacks[0]._loader
        self.seen = (loader.num_workers, loader.persistent_workers)


def test_a_dataset_probe_is_loaded_with_the_trainers_workers_unless_told(tmp_path):
    for kwargs, expected in (({}, (1, True)), ({"probe_loader_kwargs": {"num_workers": 0}}, (0, False))):
        monitor = DSEMonitor(probe=CountingImages.like(40), metrics="dse", cache_inputs=False, **kwargs)
        seen = ProbeLoader()
        trainer = L.Trainer(callbacks=[monitor, seen], **trainer_kwargs(tmp_path, max_epochs=1))
        trainer.fit(WorkerLoaders(n_val=32))
        assert seen.seen == expected and len(monitor.history) == 2
    for bad, match in (({"shuffle": True}, "DataLoader arguments among"), ([("num_workers", 2)], "a dict"),
                       ({"num_workers": -1}, "num_workers'\\] must be an integer >= 0"),
                       ({"persistent_workers": True}, "persistent_workers=True needs num_workers > 0")):
        with pytest.raises(ValueError, match=match):
            DSEMonitor(probe_loader_kwargs=bad)
