"""Cadence (at init, every n epochs, every n optimizer steps) and the trainer's x-axis."""
from __future__ import annotations

import csv
import json

import lightning.pytorch as L
import pytest
from dse_callback_models import LitClassifier, trainer_kwargs
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dse_monitor import DSEMonitor


def _rows(logger):
    with open(logger.log_dir + "/metrics.csv") as f:
        return list(csv.DictReader(f))


def _steps(rows, key):
    return [int(r["step"]) for r in rows if r.get(key)]


def test_values_share_the_x_axis_of_val_loss(tmp_path):
    csv_logger = CSVLogger(str(tmp_path), name="csv")
    tb_logger = TensorBoardLogger(str(tmp_path), name="tb")
    monitor = DSEMonitor(num_samples=32, metrics="dse")
    # 96 samples / 32 = 3 batches an epoch
    L.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=3, logger=[csv_logger, tb_logger])).fit(
        LitClassifier())
    rows = _rows(csv_logger)
    val_steps = _steps(rows, "val_loss")
    assert val_steps == [2, 5, 8]
    assert _steps(rows, "dse/penultimate/dse") == [0] + val_steps  # at init: step 0
    assert [float(r["dse/epoch"]) for r in rows if r.get("dse/epoch")] == [0, 1, 2, 3]
    assert monitor.positions == {0: {"epoch": 0, "global_step": 0, "step": 0},
                                 1: {"epoch": 1, "global_step": 3, "step": 2},
                                 2: {"epoch": 2, "global_step": 6, "step": 5},
                                 3: {"epoch": 3, "global_step": 9, "step": 8}}
    events = EventAccumulator(tb_logger.log_dir, size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("dse/penultimate/dse")] == [0, 2, 5, 8]
    assert [e.step for e in events.Scalars("val_loss")] == [2, 5, 8]
    assert [e.step for e in events.Histograms("dse/penultimate/spectrum")] == [0, 2, 5, 8]


def test_every_n_train_steps_measures_at_optimizer_steps_not_epoch_ends(tmp_path):
    logger = CSVLogger(str(tmp_path), name="csv")
    monitor = DSEMonitor(num_samples=32, metrics="dse", every_n_train_steps=2, save_raw=True)
    kw = trainer_kwargs(tmp_path, max_epochs=2, logger=logger, limit_val_batches=0)
    L.Trainer(callbacks=[monitor], **kw).fit(LitClassifier())  # 3 steps an epoch: 6 steps
    assert sorted(monitor.history) == [0, 2, 4, 6]  # keyed by global step
    assert [monitor.positions[k]["epoch"] for k in (0, 2, 4, 6)] == [0, 0, 1, 1]
    rows = _rows(logger)
    # at the step Lightning logs the batch that made the n-th optimizer step (0-based, like train metrics)
    assert _steps(rows, "dse/penultimate/dse") == [0, 1, 3, 5]
    raw = json.loads((tmp_path / "csv" / "version_0" / "dse_monitor" / "history.json").read_text())
    assert [(r["step"], r["epoch"], r["global_step"], r["logged_step"]) for r in raw["history"]] == [
        (0, 0, 0, 0), (2, 0, 2, 1), (4, 1, 4, 3), (6, 1, 6, 5)]


def test_step_cadence_counts_optimizer_steps_under_gradient_accumulation(tmp_path):
    monitor = DSEMonitor(num_samples=32, metrics="dse", every_n_train_steps=1, at_init=False)
    kw = trainer_kwargs(tmp_path, max_epochs=1, limit_val_batches=0, accumulate_grad_batches=2)
    trainer = L.Trainer(callbacks=[monitor], **kw)
    trainer.fit(LitClassifier(n_train=128))  # 4 batches, 2 optimizer steps
    assert trainer.global_step == 2 and sorted(monitor.history) == [1, 2]


def test_both_cadences_is_an_error_that_says_so():
    with pytest.raises(ValueError, match="pass every_n_epochs or every_n_train_steps, not both"):
        DSEMonitor(every_n_epochs=2, every_n_train_steps=50)
    with pytest.raises(ValueError, match="every_n_train_steps"):
        DSEMonitor(every_n_train_steps=0)
    assert DSEMonitor().every_n_epochs == 1 and DSEMonitor(every_n_train_steps=5).every_n_epochs is None
