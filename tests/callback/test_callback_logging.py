"""What reaches TensorBoard, CSV, callback_metrics and the raw files."""
from __future__ import annotations

import csv
import json

import lightning.pytorch as L
import numpy as np
import pytest
import torch
from dse_callback_models import LitClassifier, make_data, trainer_kwargs
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

from dse_monitor import DSEMonitor

KEYS = ["dse/penultimate/dse", "dse/penultimate/dsmi_y", "dse/penultimate/dsmi_x"]


def test_tensorboard_csv_callback_metrics_and_raw_files(tmp_path):
    L.seed_everything(0)
    tb = TensorBoardLogger(str(tmp_path), name="tb")
    csv_logger = CSVLogger(str(tmp_path), name="csv")
    monitor = DSEMonitor(num_samples=48, save_raw=True, sigma="median")
    best = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor="dse/penultimate/dse", mode="max")
    trainer = L.Trainer(
        callbacks=[monitor, best], **trainer_kwargs(tmp_path, max_epochs=2, logger=[tb, csv_logger], enable_checkpointing=True)
    )
    trainer.fit(LitClassifier())
    assert sorted(monitor.history) == [0, 1, 2]
    for key in KEYS:
        assert float(trainer.callback_metrics[key]) == pytest.approx(monitor.history[2][key])
    assert best.best_model_path  # ModelCheckpoint could watch the logged key

    acc = EventAccumulator(tb.log_dir, size_guidance={"scalars": 0, "histograms": 0, "tensors": 0}).Reload()
    for key in KEYS:
        events = acc.Scalars(key)
        # at the trainer's step (3 batches an epoch: where val_loss is logged), once each
        assert [e.step for e in events] == [monitor.positions[s]["step"] for s in (0, 1, 2)] == [0, 2, 5]
        assert [e.value for e in events] == pytest.approx([monitor.history[s][key] for s in (0, 1, 2)], rel=1e-6)
    assert [h.step for h in acc.Histograms("dse/penultimate/spectrum")] == [0, 2, 5]
    spectrum = acc.Histograms("dse/penultimate/spectrum")[0].histogram_value
    assert spectrum.num == 48 and spectrum.max == pytest.approx(1.0, abs=1e-6)
    layout = layout_pb2.Layout.FromString(acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for cat in layout.category for chart in cat.chart}
    assert charts == {"DSE(Z)": [KEYS[0]], "DSMI(Z;Y)": [KEYS[1]], "DSMI(Z;X)": [KEYS[2]]}

    with open(csv_logger.log_dir + "/metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get(KEYS[0])]
    assert [int(r["step"]) for r in rows] == [0, 2, 5]

    raw = tmp_path / "tb" / "version_0" / "dse_monitor"
    saved = json.loads((raw / "history.json").read_text())
    assert saved["indices"] == monitor.probe_indices
    assert [r["step"] for r in saved["history"]] == [0, 1, 2]
    assert saved["history"][1][KEYS[0]] == pytest.approx(monitor.history[1][KEYS[0]])
    with np.load(raw / "spectra.npz") as spectra:
        assert sorted(spectra.files) == ["penultimate/step_0", "penultimate/step_1", "penultimate/step_2"]
        assert spectra["penultimate/step_2"].shape == (48,)
    assert (raw / "history.csv").read_text().startswith("step,")


def test_schedule_every_n_epochs_without_init_and_without_logger(tmp_path):
    monitor = DSEMonitor(num_samples=32, every_n_epochs=2, at_init=False, metrics="dse", layers=["net.pool", "net.fc"])
    trainer = L.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=3))
    trainer.fit(LitClassifier(n_train=32))
    assert sorted(monitor.history) == [2]
    assert sorted(monitor.history[2]) == ["dse/net.fc/dse", "dse/net.fc/sigma_ratio", "dse/net.pool/dse", "dse/net.pool/sigma_ratio"]
    assert "dse/net.fc/dse" in trainer.callback_metrics


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"metrics": ["dse", "entropy"]}, "metrics"),
        ({"probe": "test"}, "probe"),
        ({"every_n_epochs": 0}, "every_n_epochs"),
        ({"sigma": -1.0}, "sigma"),
        ({"pooling": "max"}, "pooling"),
        ({"layers": []}, "layers"),
        ({"num_samples": 1}, "num_samples"),
        ({"dtype": "int64"}, "dtype"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DSEMonitor(**kwargs)


class _DictData(torch.utils.data.Dataset):
    """Samples as dicts with unusual keys: needs a batch_fn."""

    def __init__(self):
        self.x, self.y = make_data(40, seed=3).tensors

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"pixels": self.x[i], "target": self.y[i]}


class _Data(L.LightningDataModule):
    def train_dataloader(self):
        return DataLoader(make_data(32, seed=1), batch_size=16)

    def val_dataloader(self):
        return [DataLoader(make_data(48, seed=2), batch_size=16)]  # a list: the first loader is probed


def test_probe_from_a_datamodule_and_a_batch_fn_for_dict_samples(tmp_path):
    class NoLoaders(LitClassifier):
        train_dataloader = val_dataloader = None

    from_dm = DSEMonitor(num_samples=None, metrics=["dse", "dsmi_y"])
    from_dicts = DSEMonitor(probe=_DictData(), batch_fn=lambda b: (b["pixels"], b["target"]), prefix="dict",
                            metrics=["dsmi_y"], num_samples=None)
    trainer = L.Trainer(callbacks=[from_dm, from_dicts], **trainer_kwargs(tmp_path, max_epochs=1))
    trainer.fit(NoLoaders(), datamodule=_Data())
    assert from_dm.probe_indices == list(range(48)) and sorted(from_dm.history) == [0, 1]
    assert torch.equal(from_dm.label_groups, make_data(48, seed=2).tensors[1])
    assert torch.equal(from_dicts.label_groups, make_data(40, seed=3).tensors[1])
    assert sorted(from_dicts.history[1]) == ["dict/penultimate/dsmi_y", "dict/penultimate/sigma_ratio"]


def test_save_raw_that_cannot_write_warns_and_training_goes_on(tmp_path):
    from dse_monitor.monitor import DSEMonitorWarning

    (tmp_path / "dse_monitor").write_text("a file where the raw folder should go")
    monitor = DSEMonitor(num_samples=32, metrics="dse", save_raw=True)
    trainer = L.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1, limit_val_batches=0))
    with pytest.warns(DSEMonitorWarning, match="save_raw could not write"):
        trainer.fit(LitClassifier(n_train=32))
    assert trainer.current_epoch == 1 and sorted(monitor.history) == [0, 1]
