"""compare reads this version's monitor curves by the <prefix>/epoch logged beside them (the values are
logged at the trainer's global steps)."""
from __future__ import annotations

import lightning.pytorch as L
import pytest
from lightning.pytorch.loggers import TensorBoardLogger

from dse_monitor import DSEMonitor
from dse_monitor.train.compare import read_run
from dse_monitor.train.data import ImageDataModule
from dse_monitor.train.model import ImageClassifier


def test_monitor_curves_come_back_by_completed_epoch(tmp_path):
    L.seed_everything(1)
    data = ImageDataModule("digits", image_size=16, batch_size=64)
    model = ImageClassifier("resnet18", num_classes=10, lr=1e-3, warmup_epochs=1,
                            backbone_kwargs={"channels": [8, 8, 8, 8], "stem_width": 8})
    monitor = DSEMonitor(num_samples=64, metrics=["dse", "dsmi_y"], sigma="median_init")
    logger = TensorBoardLogger(str(tmp_path), name="run")
    trainer = L.Trainer(max_epochs=3, limit_train_batches=2, limit_val_batches=1, logger=logger, callbacks=[monitor],
                        accelerator="cpu", enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1)
    trainer.fit(model, datamodule=data)
    assert [monitor.positions[k]["step"] for k in (0, 1, 2, 3)] == [0, 1, 3, 5]  # 2 steps an epoch
    run = read_run(logger.log_dir)
    for metric in ("dse", "dsmi_y", "sigma_ratio"):
        curve = run.curves[f"dse/penultimate/{metric}"]
        assert sorted(curve) == [0, 1, 2, 3]
        for epoch, value in curve.items():
            assert value == pytest.approx(monitor.history[epoch][f"dse/penultimate/{metric}"], rel=1e-6)
    assert "dse/epoch" not in run.curves
    assert sorted(run.curves["val_acc"]) == [1, 2, 3]
