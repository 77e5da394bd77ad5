"""Bad input and faults: clear errors at setup, warnings and NaN instead of dead runs."""
from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch
from dse_callback_models import LitClassifier, make_data, trainer_kwargs
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dse_monitor import DSEMonitor
from dse_monitor.monitor import DSEMonitorWarning
from dse_monitor.capture import LayerNotFoundError


def test_unknown_layer_is_a_configuration_error_naming_close_modules(tmp_path):
    model = LitClassifier()
    trainer = L.Trainer(callbacks=[DSEMonitor(layers="net.featurs.0", num_samples=32)], **trainer_kwargs(tmp_path))
    with pytest.raises(LayerNotFoundError, match=r"closest module names: 'net.features.0'"):
        trainer.fit(model)
    assert model.losses == []  # nothing trained


def test_missing_labels_with_dsmi_y_is_a_clear_error(tmp_path):
    unlabeled = TensorDataset(make_data(32).tensors[0])
    trainer = L.Trainer(callbacks=[DSEMonitor(probe=unlabeled, num_samples=None)], **trainer_kwargs(tmp_path))
    with pytest.raises(ValueError, match=r"\['dsmi_y'\] need labels.*no label key in the dicts"):
        trainer.fit(LitClassifier())
    # without label metrics, unlabeled probes are fine
    monitor = DSEMonitor(probe=unlabeled, num_samples=None, metrics=["dse", "dsmi_x"], n_clusters=3, x_size=4)
    L.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1, limit_val_batches=0)).fit(LitClassifier(n_train=32))
    assert sorted(monitor.history[1]) == ["dse/penultimate/dse", "dse/penultimate/dsmi_x", "dse/penultimate/sigma_ratio"]
    assert int(monitor.input_groups.max()) == 2


def test_probe_larger_than_split_is_clamped_with_a_warning(tmp_path):
    monitor = DSEMonitor(probe=DataLoader(make_data(40), batch_size=16), num_samples=1000, metrics="dse")
    trainer = L.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1, limit_val_batches=0))
    with pytest.warns(DSEMonitorWarning, match="num_samples=1000 is larger"):
        trainer.fit(LitClassifier(n_train=32))
    assert monitor.probe_indices == list(range(40))


class Diverging(LitClassifier):
    """A side branch (not in the loss) whose output turns NaN after the first epoch, and an empty layer."""

    def __init__(self):
        super().__init__(n_train=32)
        self.side = nn.Linear(4, 3)
        self.empty = nn.Identity()

    def forward(self, x):
        logits = super().forward(x)
        poison = float("nan") if self.current_epoch >= 1 else 0.0
        self.side(logits.detach() + poison)
        self.empty(logits[:, :0])  # zero features: the core raises on it
        return logits


def test_nan_features_log_nan_and_core_failures_skip_but_training_goes_on(tmp_path):
    monitor = DSEMonitor(layers=["side", "empty", "penultimate"], num_samples=32)
    trainer = L.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=2, limit_val_batches=0))
    with pytest.warns(DSEMonitorWarning) as record:
        trainer.fit(Diverging())
    messages = [str(w.message) for w in record]
    assert trainer.current_epoch == 2  # training went on
    assert any("layer 'side' has NaN/Inf features at epoch 2" in m for m in messages)
    assert any("layer 'empty' at epoch 0 failed" in m and "ValueError" in m for m in messages)
    assert sorted(monitor.history) == [0, 1, 2]
    side_2 = [v for k, v in monitor.history[2].items() if k.startswith("dse/side/")]
    side_1 = [v for k, v in monitor.history[1].items() if k.startswith("dse/side/")]
    assert side_2 and all(v != v for v in side_2)  # NaN
    assert side_1 and all(v == v for v in side_1)
    assert not any(k.startswith("dse/empty/") for step in monitor.history.values() for k in step)
    assert monitor.history[2]["dse/penultimate/dse"] == monitor.history[2]["dse/penultimate/dse"]  # not NaN


class BreaksInEval(LitClassifier):
    def forward(self, x):
        if not self.training and self.current_epoch >= 1:
            raise RuntimeError("forward broke in eval mode")
        return super().forward(x)


def test_a_failing_probe_pass_is_skipped_with_hooks_removed_and_modes_restored(tmp_path, count_hooks):
    model = BreaksInEval(n_train=32)
    monitor = DSEMonitor(num_samples=32, layers=["net.pool", "penultimate"], metrics="dse")
    trainer = L.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=3, limit_val_batches=0))
    with pytest.warns(DSEMonitorWarning, match=r"probe pass at epoch 2 failed on rank 0 \(RuntimeError: forward broke"):
        trainer.fit(model)
    assert trainer.current_epoch == 3 and len(model.losses) == 3  # training went on
    assert sorted(monitor.history) == [0, 1]
    assert count_hooks(model) == 0
    assert all(m.training for m in model.modules())
    assert torch.is_grad_enabled()


class Unused(LitClassifier):
    def __init__(self):
        super().__init__(n_train=32)
        self.unused = nn.Linear(4, 4)  # registered, never called in forward


def test_a_layer_that_forward_never_calls_is_a_configuration_error_before_training(tmp_path):
    model = Unused()
    monitor = DSEMonitor(layers="unused", num_samples=32, at_init=False)
    trainer = L.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1, limit_val_batches=0))
    with pytest.raises(LayerNotFoundError, match=r"\['unused'\] did not run in the forward pass"):
        trainer.fit(model)
    assert model.losses == []  # found at setup, not after an epoch of training


def test_labels_that_cannot_be_grouped_skip_dsmi_y_and_training_goes_on(tmp_path):
    x, y = make_data(32).tensors
    labels = y.float()
    labels[3] = float("nan")  # e.g. a regression target with a missing value
    monitor = DSEMonitor(probe=TensorDataset(x, labels), num_samples=None, metrics=["dse", "dsmi_y"])
    trainer = L.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1, limit_val_batches=0))
    with pytest.warns(DSEMonitorWarning, match="grouping the probe labels for DSMI.*NaN"):
        trainer.fit(LitClassifier(n_train=32))
    assert trainer.current_epoch == 1
    assert sorted(monitor.history) == [0, 1] and all(sorted(v) == ["dse/penultimate/dse", "dse/penultimate/sigma_ratio"] for v in monitor.history.values())


class FailsInSecondEpoch(LitClassifier):
    def training_step(self, batch, batch_idx):
        if self.current_epoch == 1:
            raise RuntimeError("user bug in training_step")
        return super().training_step(batch, batch_idx)


def test_when_fit_raises_the_monitor_lets_go_of_the_model(tmp_path, count_hooks):
    model = FailsInSecondEpoch(n_train=32)
    monitor = DSEMonitor(num_samples=32, metrics="dse")
    trainer = L.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=2, limit_val_batches=0))
    with pytest.raises(RuntimeError, match="user bug"):
        trainer.fit(model)
    assert sorted(monitor.history) == [0, 1] and count_hooks(model) == 0
    # Lightning calls on_exception, not teardown: the monitor must still drop its layers, loader and source
    assert monitor._layers == [] and monitor._loader is None and monitor._source is None


class NoValSplit(LitClassifier):
    val_dataloader = None


class EmptyValSplit(LitClassifier):
    def val_dataloader(self):
        return []  # e.g. a datamodule built without a validation split


@pytest.mark.parametrize("model_class", [NoValSplit, EmptyValSplit])
def test_probe_val_without_a_val_split_says_what_to_pass_instead(tmp_path, model_class):
    trainer = L.Trainer(callbacks=[DSEMonitor(num_samples=16)], **trainer_kwargs(tmp_path, limit_val_batches=0))
    with pytest.raises(ValueError, match=r"DSEMonitor\(probe='val'\).*pass probe='train' or probe=<Dataset"):
        trainer.fit(model_class(n_train=32))
