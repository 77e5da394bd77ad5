"""kernel="knn" has no global bandwidth: a sigma policy is not resolved, frozen, logged nor warned about
(sigma="median_init" used to freeze a median and log it as ``<prefix>/<layer>/sigma``, and to warn when
a collapsed layer's median fell back), and the values are those of any other sigma."""
from __future__ import annotations

import csv
import logging
import warnings

import lightning.pytorch as L
import pytest
import torch
from dse_callback_models import LitClassifier, make_data, trainer_kwargs
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_callback_scale import ScaledFeatures

from dse_monitor import DSEMonitor, diffusion_spectral_entropy
from dse_monitor.monitor import DSEMonitorWarning
from dse_monitor.monitor.tensorboard import parse_settings

LAYERS = ["net.scaled", "net.collapsed"]  # the second gives one vector for every sample: its median is 0


def _fit(tmp_path, sigma, caplog):
    torch.manual_seed(0)
    model = LitClassifier(net=ScaledFeatures(1.0))  # lr 0.05: the features move between measurements
    tb = TensorBoardLogger(str(tmp_path), name="tb")
    csv_logger = CSVLogger(str(tmp_path), name="csv")
    monitor = DSEMonitor(layers=LAYERS, num_samples=48, metrics="dse", kernel="knn", k=5, sigma=sigma,
                         dtype="float64")
    caplog.clear()
    with warnings.catch_warnings(record=True) as record, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        L.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=2, logger=[tb, csv_logger])).fit(model)
    said = [str(w.message) for w in record if issubclass(w.category, DSEMonitorWarning)] + caplog.messages
    with open(csv_logger.log_dir + "/metrics.csv") as f:
        columns = next(csv.reader(f))
    events = EventAccumulator(tb.log_dir, size_guidance={"scalars": 0, "tensors": 0}).Reload()
    settings = parse_settings(events.Tensors("dse/settings/text_summary")[0].tensor_proto.string_val[0].decode())
    return monitor, model, said, columns, events.Tags()["scalars"], settings


def test_knn_with_median_init_freezes_logs_and_warns_nothing_about_sigma(tmp_path, caplog):
    monitor, model, said, columns, tags, settings = _fit(tmp_path / "median_init", "median_init", caplog)
    assert sorted(monitor.history) == [0, 1, 2]
    for names, where in ((columns, "CSV"), (tags, "TensorBoard"), *((list(h), f"history {s}")
                                                                   for s, h in monitor.history.items())):
        assert [n for n in names if n.endswith(("/sigma", "/sigma_ratio"))] == [], where
        assert {f"dse/{layer}/dse" for layer in LAYERS} <= set(names), where
    assert monitor.frozen["sigma"] == {}
    assert [m for m in said if "sigma" in m] == []
    assert settings["sigma"].startswith("not used (kernel='knn', k = 5")  # TensorBoard's settings table

    # the values: those of an absolute sigma (which the kNN kernel does not use either) and of the functional API
    other, _, said_other, _, _, _ = _fit(tmp_path / "absolute", 10.0, caplog)
    assert [m for m in said_other if "sigma" in m] == []
    for step in (0, 1, 2):
        assert monitor.history[step] == other.history[step]
    x = make_data(64, 16, seed=2).tensors[0][monitor.probe_indices]  # the model's val split
    with torch.no_grad():
        net = model.net.eval()
        z = net.scaled(net.cnn.pool(net.cnn.features(x)).flatten(1))
    expected = diffusion_spectral_entropy(z, kernel="knn", k=5, dtype=torch.float64)
    assert monitor.history[2]["dse/net.scaled/dse"] == pytest.approx(float(expected), abs=1e-9)
