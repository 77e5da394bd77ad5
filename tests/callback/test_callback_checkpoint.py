"""state_dict / resume: probe indices, input clusters and history survive; curves continue exactly once."""
from __future__ import annotations

import csv

import lightning.pytorch as L
import pytest
import torch
from dse_callback_models import LitClassifier, TinyCNN, trainer_kwargs
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from dse_monitor import DSEMonitor


def _model():
    torch.manual_seed(3)
    net = TinyCNN()
    net.drop.p = 0.0  # Lightning does not restore random streams on resume: keep training deterministic
    return LitClassifier(net=net, n_train=64, shuffle=False)


def _monitor():
    return DSEMonitor(num_samples=40, seed=5)


def _fit(root, monitor, max_epochs, ckpt_path=None, extra=()):
    logger = CSVLogger(str(root), name="csv")
    ckpt = ModelCheckpoint(dirpath=str(root / "ckpt"), save_last=True)
    kw = trainer_kwargs(root, max_epochs=max_epochs, logger=logger, enable_checkpointing=True)
    trainer = L.Trainer(callbacks=[monitor, *extra, ckpt], **kw)
    trainer.fit(_model(), ckpt_path=ckpt_path)
    return trainer, logger


def _logged_steps(logger, key):
    with open(logger.log_dir + "/metrics.csv") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get(key)]


def test_resume_continues_the_curves_without_duplicates(tmp_path):
    straight = _monitor()
    _fit(tmp_path / "straight", straight, 3)

    first = _monitor()
    _fit(tmp_path / "resumed", first, 2)
    state = torch.load(tmp_path / "resumed" / "ckpt" / "last.ckpt", weights_only=False)["callbacks"][first.state_key]
    assert state["indices"] == first.probe_indices and sorted(state["history"]) == [0, 1, 2]
    assert torch.equal(state["input_groups"], first.input_groups)

    second = _monitor()
    _, logger = _fit(tmp_path / "resumed", second, 3, ckpt_path=str(tmp_path / "resumed" / "ckpt" / "last.ckpt"))
    assert second.probe_indices == straight.probe_indices
    assert torch.equal(second.input_groups, straight.input_groups)
    assert sorted(second.history) == [0, 1, 2, 3]
    # only the new epoch is logged again, at the trainer's step of its validation (2 batches an epoch)
    assert _logged_steps(logger, "dse/penultimate/dse") == [second.positions[3]["step"]] == [5]
    assert second.positions[3] == {"epoch": 3, "global_step": 6, "step": 5}
    for step in range(4):
        for key, value in straight.history[step].items():
            assert second.history[step][key] == pytest.approx(value, rel=1e-5, abs=1e-7), (step, key)


def test_two_monitors_keep_separate_state(tmp_path):
    a = DSEMonitor(num_samples=40, seed=1, metrics="dse")
    b = DSEMonitor(layers="net.pool", probe="train", num_samples=30, seed=2, prefix="train", metrics=["dse", "dsmi_y"])
    assert a.state_key != b.state_key
    _fit(tmp_path, a, 1, extra=[b])
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"]
    assert len(ckpt[a.state_key]["indices"]) == 40 and len(ckpt[b.state_key]["indices"]) == 30
    assert sorted(b.history[1]) == ["train/net.pool/dse", "train/net.pool/dsmi_y", "train/net.pool/sigma_ratio"]

    a2 = DSEMonitor(num_samples=40, seed=1, metrics="dse")
    b2 = DSEMonitor(layers="net.pool", probe="train", num_samples=30, seed=2, prefix="train", metrics=["dse", "dsmi_y"])
    a2.load_state_dict(ckpt[a2.state_key])
    b2.load_state_dict(ckpt[b2.state_key])
    assert a2.probe_indices == a.probe_indices and b2.probe_indices == b.probe_indices
    assert a2.history == a.history and b2.history == b.history


def test_fit_again_on_the_same_trainer_continues_and_the_model_is_released(tmp_path):
    monitor = DSEMonitor(num_samples=32, metrics="dse")
    model = LitClassifier(n_train=32)
    trainer = L.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1, limit_val_batches=0))
    trainer.fit(model)
    trainer.fit_loop.max_epochs = 2
    trainer.fit(model)
    assert sorted(monitor.history) == [0, 1, 2]
    # after fit the monitor holds no layer (module), loader or data source of its own
    # (Lightning itself binds callback.log to the model; that is not the monitor's doing)
    assert monitor._layers == [] and monitor._source is None and monitor._loader is None


def test_resume_inside_the_first_epoch_does_not_measure_at_init_again(tmp_path):
    first = _monitor()
    every_step = ModelCheckpoint(dirpath=str(tmp_path / "steps"), every_n_train_steps=1, save_top_k=-1)
    kw = trainer_kwargs(tmp_path, max_epochs=1, max_steps=1, limit_val_batches=0, enable_checkpointing=True)
    L.Trainer(callbacks=[first, every_step], **kw).fit(_model())
    (mid_epoch,) = (tmp_path / "steps").iterdir()  # saved after 1 of the 2 steps of epoch 0

    second = _monitor()
    logger = CSVLogger(str(tmp_path), name="csv")
    kw = trainer_kwargs(tmp_path, max_epochs=1, limit_val_batches=0, logger=logger)
    L.Trainer(callbacks=[second], **kw).fit(_model(), ckpt_path=str(mid_epoch))
    assert sorted(second.history) == [0, 1]
    assert second.history[0] == first.history[0]  # the init value, not a re-measure of the trained model
    assert _logged_steps(logger, "dse/penultimate/dse") == [1]


def test_resumed_run_writing_raw_files_to_the_same_folder_keeps_the_earlier_spectra(tmp_path):
    import numpy as np

    def fit(max_epochs, ckpt_path=None):
        monitor = DSEMonitor(num_samples=32, metrics="dse", save_raw=True)
        last = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
        kw = trainer_kwargs(tmp_path, max_epochs=max_epochs, limit_val_batches=0, enable_checkpointing=True)
        L.Trainer(callbacks=[monitor, last], **kw).fit(_model(), ckpt_path=ckpt_path)  # logger=False: one folder
        return monitor

    fit(1)
    monitor = fit(2, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    with np.load(tmp_path / "dse_monitor" / "spectra.npz") as spectra:
        assert sorted(spectra.files) == ["penultimate/step_0", "penultimate/step_1", "penultimate/step_2"]
    assert sorted(monitor.history) == [0, 1, 2]
