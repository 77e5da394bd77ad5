"""sigma='median_init' on the embedded default: at init timm's features sit far below sigma = 10."""
from __future__ import annotations

import math
import warnings

import lightning.pytorch as L

from dse_monitor import DSEMonitor
from dse_monitor.monitor import DSEMonitorWarning
from dse_monitor.train.data import ImageDataModule
from dse_monitor.train.model import ImageClassifier


def _at_init(sigma):
    L.seed_everything(1)
    data = ImageDataModule("digits", image_size=24, batch_size=128)
    model = ImageClassifier("resnet18", num_classes=10, lr=1e-3, warmup_epochs=2,
                            backbone_kwargs={"channels": [32, 64, 128, 256], "stem_width": 32})
    monitor = DSEMonitor(num_samples=None, metrics="dse", sigma=sigma)
    trainer = L.Trainer(callbacks=[monitor], max_epochs=1, limit_train_batches=1, limit_val_batches=0,
                        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(model, datamodule=data)
    return monitor, [str(w.message) for w in record if issubclass(w.category, DSEMonitorWarning)]


def test_median_init_gives_an_informative_dse_where_sigma_10_warns():
    top = math.log2(359)
    absolute, messages = _at_init(10.0)
    dse = absolute.history[0]["dse/penultimate/dse"]
    assert dse < 0.02 * top and absolute.history[0]["dse/penultimate/sigma_ratio"] < 1 / 3
    assert sum("Fix: sigma=" in m for m in messages) == 1  # it says why the curve is flat, and the fix

    adapted, messages = _at_init("median_init")
    dse = adapted.history[0]["dse/penultimate/dse"]
    assert 0.02 * top < dse < 0.98 * top  # strictly inside (0, log2 N), away from both ends
    assert adapted.history[0]["dse/penultimate/sigma_ratio"] == 1.0
    assert adapted.frozen["sigma"]["penultimate"] == adapted.history[0]["dse/penultimate/sigma"]
    assert not any("Fix: sigma=" in m for m in messages)
