"""The probe pass made cheap: kept batches and the validation pass read in its place, never a changed value."""
from __future__ import annotations

import copy
import logging

import lightning.pytorch as L
import pytest
import torch
from dse_callback_models import LitClassifier, make_data, trainer_kwargs
from dse_counting import CountedValidation, CountingImages, ReadLog
from torch.utils.data import DataLoader, Dataset

from dse_monitor import DSEMonitor, diffusion_spectral_entropy, diffusion_spectral_mutual_information

SIGMA = 1.0


class EvalForwards(L.Callback):
    """Counts the net's eval-mode forward batches outside validation (the monitor's own passes)
    per epoch end, and keeps a copy of the net there (listed after the monitor)."""

    def __init__(self) -> None:
        self.calls, self.counted, self.nets = 0, [], {}

    def on_fit_start(self, trainer, pl_module):
        def count(module, args):
            if not module.training and not trainer.validating:
                self.calls += 1

        pl_module.net.register_forward_pre_hook(count)

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            self.counted.append(self.calls)  # the preflight and the measurement at init

    def on_train_epoch_end(self, trainer, pl_module):
        self.counted.append(self.calls)
        self.nets[trainer.current_epoch + 1] = copy.deepcopy(pl_module.net).eval()

    @property
    def per_epoch(self) -> list[int]:
        """The monitor's own probe batches at each epoch end."""
        return [b - a for a, b in zip(self.counted, self.counted[1:])]


def _expected(net, x, y):
    seen = {}
    handle = net.fc.register_forward_pre_hook(lambda m, args: seen.update(z=args[0]))
    with torch.no_grad():
        net(x)
    handle.remove()
    # the monitor computes in float32 by default
    return {"dse": float(diffusion_spectral_entropy(seen["z"], SIGMA, dtype=torch.float32)),
            "dsmi_y": float(diffusion_spectral_mutual_information(seen["z"], y, sigma=SIGMA, dtype=torch.float32))}


def _fit(tmp_path, make_model, epochs=3, **monitor_kwargs):
    L.seed_everything(0)
    model = make_model()
    monitor = DSEMonitor(metrics=["dse", "dsmi_y"], sigma=SIGMA, **monitor_kwargs)
    counter = EvalForwards()
    L.Trainer(callbacks=[monitor, counter], **trainer_kwargs(tmp_path, max_epochs=epochs)).fit(model)
    return monitor, counter


def _check_values(monitor, counter, data):
    idx = monitor.probe_indices
    x, y = data.tensors[0][idx], data.tensors[1][idx]
    for epoch, net in counter.nets.items():
        for metric, value in _expected(net, x, y).items():
            assert monitor.history[epoch][f"dse/penultimate/{metric}"] == pytest.approx(value, rel=1e-5, abs=1e-6)


def test_later_epochs_read_the_validation_pass_and_log_the_probe_values(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="dse_monitor")
    model = lambda: LitClassifier(n_val=64, batch_size=16)  # probe: 40 of the 64 validation samples, 3 batches
    monitor, counter = _fit(tmp_path, model, num_samples=40)
    # the probe runs itself at epoch 1, where validation is checked in full; later epochs read validation
    # and run only the first 16 probe samples (one batch of the 16-sample loader), to check it again
    assert counter.per_epoch == [3, 1, 1]
    assert "the validation pass gives the probe's features (checked once)" in caplog.text
    assert sorted(monitor.history) == [0, 1, 2, 3]
    _check_values(monitor, counter, make_data(64, 16, seed=2))

    without, counted = _fit(tmp_path, model, num_samples=40, reuse_validation=False)
    assert counted.per_epoch == [3, 3, 3]
    for epoch in (2, 3):
        for key, value in monitor.history[epoch].items():
            assert without.history[epoch][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


class FlippedValidation(LitClassifier):
    """Validation on mirrored images (test-time augmentation): not the probe's computation."""

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self(x.flip(-1)), y))


def test_a_validation_that_computes_something_else_is_never_read(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="dse_monitor")
    monitor, counter = _fit(tmp_path, lambda: FlippedValidation(n_val=64, batch_size=16), num_samples=40)
    assert "computes other features than the probe pass" in caplog.text
    assert counter.per_epoch == [3, 3, 3]
    _check_values(monitor, counter, make_data(64, 16, seed=2))


class FlipsAfterWarmup(LitClassifier):
    """Validation that changes after two epochs (like EMA weights swapped in after a warm-up)."""

    def validation_step(self, batch, batch_idx):
        x, y = batch
        x = x.flip(-1) if self.current_epoch >= 2 else x
        self.log("val_loss", torch.nn.functional.cross_entropy(self(x), y))


def test_a_validation_that_changes_later_is_caught_at_the_next_measurement(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="dse_monitor")
    monitor, counter = _fit(tmp_path, lambda: FlipsAfterWarmup(n_val=64, batch_size=16), epochs=4, num_samples=40)
    assert "no longer gives the probe's features" in caplog.text
    assert counter.per_epoch == [3, 1, 1 + 3, 3]  # checked, reused, caught (then its own pass), own pass
    _check_values(monitor, counter, make_data(64, 16, seed=2))


@pytest.mark.parametrize("cache, at_init", [(False, 40), ("auto", 40 + 16)])  # auto: a second load of batch 1
def test_with_reuse_the_monitor_reads_the_probe_only_until_the_verifying_pass(tmp_path, cache, at_init):
    L.seed_everything(0)
    monitor = DSEMonitor(metrics=["dse", "dsmi_y"], sigma=SIGMA, num_samples=40, cache_inputs=cache)
    reads, counter = ReadLog(), EvalForwards()
    trainer = L.Trainer(callbacks=[monitor, reads, counter], **trainer_kwargs(tmp_path, max_epochs=3))
    trainer.fit(CountedValidation(CountingImages.like(64), batch_size=16))
    # the preflight's peek; own passes at init and at epoch 1 (the verifying one, from the kept batches
    # with "auto"); then validation's rows, checked on 16 samples kept on the device: no load at all
    assert reads.per_point == [8, at_init, 0 if cache else 40, 0, 0]
    assert counter.per_epoch == [3, 1, 1]
    _check_values(monitor, counter, make_data(64, 16, seed=2))


def test_partial_validation_and_shuffled_validation_leave_the_probe_to_its_own_pass(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="dse_monitor")
    partial = L.Trainer(callbacks=[monitor := DSEMonitor(metrics=["dse"], sigma=SIGMA), counter := EvalForwards()],
                        **trainer_kwargs(tmp_path, max_epochs=3, limit_val_batches=1))
    partial.fit(LitClassifier(n_val=64, batch_size=16))
    assert counter.per_epoch == [4, 4, 4] and len(monitor.history) == 4
    assert caplog.text.count("the validation pass did not visit every probe sample") == 1

    class ShuffledVal(LitClassifier):
        def val_dataloader(self):
            return DataLoader(make_data(self.n_val, self.size, seed=2), batch_size=self.batch_size, shuffle=True)

    monitor, counter = _fit(tmp_path, lambda: ShuffledVal(n_val=64, batch_size=16))
    assert counter.per_epoch == [4, 4, 4]
    assert caplog.text.count("visits its samples in an order the monitor cannot follow (RandomSampler") == 1
    _check_values(monitor, counter, make_data(64, 16, seed=2))


class NoisyImages(Dataset):
    """A split with a random transform: every load of a sample differs."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return x + 0.1 * torch.randn_like(x), y


def test_probe_batches_are_kept_only_when_two_loads_agree(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="dse_monitor")
    data = make_data(64, 16, seed=2)
    monitor, _ = _fit(tmp_path, LitClassifier, epochs=1, probe=data, num_samples=40)
    assert monitor._probe.kept.cached is None  # released after fit
    assert "keeping the probe batches in host memory (1 batch" in caplog.text  # 40 samples, one batch of 64
    caplog.clear()
    noisy, _ = _fit(tmp_path, LitClassifier, epochs=1, probe=NoisyImages(data), num_samples=40)
    assert "two loads of the first probe batch differ" in caplog.text and len(noisy.history) == 2
    caplog.clear()  # asked for: the first draw is kept as the fixed probe
    kept, _ = _fit(tmp_path, LitClassifier, epochs=1, probe=NoisyImages(data), num_samples=40, cache_inputs=True)
    assert "keeping the probe batches in host memory (1 batch" in caplog.text and len(kept.history) == 2
    assert "two loads" not in caplog.text
    with pytest.raises(ValueError, match="cache_inputs must be True, False or 'auto'"):
        DSEMonitor(cache_inputs="yes")


_IN_VALIDATION = [False]


class MarksValidation(L.Callback):
    def on_validation_epoch_start(self, trainer, pl_module):
        _IN_VALIDATION[0] = True

    def on_validation_epoch_end(self, trainer, pl_module):
        _IN_VALIDATION[0] = False


def _pool_outside_validation_only(z):
    # a user pooling that fails on what validation gives it (e.g. a sequence length it cannot read)
    if _IN_VALIDATION[0]:
        raise RuntimeError("pooling cannot read this activation")
    return z.flatten(1)


def test_a_hook_error_during_validation_never_reaches_the_validation_step(tmp_path):
    L.seed_everything(0)
    monitor = DSEMonitor(metrics=["dse", "dsmi_y"], sigma=SIGMA, num_samples=40, pooling=_pool_outside_validation_only)
    counter = EvalForwards()
    trainer = L.Trainer(callbacks=[MarksValidation(), monitor, counter], **trainer_kwargs(tmp_path, max_epochs=3))
    trainer.fit(LitClassifier(n_val=64, batch_size=16))
    assert sorted(monitor.history) == [0, 1, 2, 3] and counter.per_epoch == [3, 3, 3]
    _check_values(monitor, counter, make_data(64, 16, seed=2))
