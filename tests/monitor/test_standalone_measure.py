"""The Trainer-free measurement (dse_monitor.measure) and the configuration it shares with the callback."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import dse_monitor as dm
from dse_monitor.monitor import DSEMonitorCore, MonitorConfig
from dse_monitor.registry import METRICS, logged_names, MetricSettings


class DictImages(Dataset):
    """The same samples as a TensorDataset, as {"image", "label"} dicts."""

    def __init__(self, data: TensorDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        x, y = self.data[i]
        return {"image": x, "label": y}


@pytest.fixture(scope="module")
def setup():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    data = TensorDataset(torch.randn(60, 2, 6, 6, generator=g) + y[:, None, None, None], y)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 10), nn.ReLU(), nn.Linear(10, 3))
    return net, data


def test_tuple_and_dict_batches_and_config_or_keywords_give_the_same_measurement(setup):
    net, data = setup
    config = MonitorConfig(metrics=list(METRICS), sigma="median", num_samples=50, x_size=4, batch_size=16)
    m = dm.measure(net, data, config)
    assert m.shapes == {"penultimate": (50, 10)} and not m.failures
    logged = {name for metric in METRICS for name in logged_names(metric, config.settings())}
    not_applicable = {"cka_prev", "alpha_req", "alpha_req_r2"}  # a first measurement; D = 10 < 110
    assert set(m.of_layer("penultimate")) == logged - not_applicable | {"sigma_ratio"}
    values = m.of_layer("penultimate")
    assert values["dse_norm"] == pytest.approx(values["dse"] / math.log2(50), abs=1e-12)
    as_dicts = dm.measure(net, DataLoader(DictImages(data), batch_size=16), metrics=list(METRICS), sigma="median",
                          num_samples=50, x_size=4)
    assert as_dicts.values == m.values
    # the groups of the first measurement are reused, not recomputed: same values
    again = dm.measure(net, data, config, groups=m.groups)
    assert again.groups.inputs is m.groups.inputs and again.values == m.values
    # forward_fn runs the call itself (here: the same call)
    own = dm.measure(net, data, config=MonitorConfig(metrics=["dse"], sigma="median", num_samples=50,
                                                      forward_fn=lambda module, batch: module(batch[0])))
    assert own.values["dse/penultimate/dse"] == m.values["dse/penultimate/dse"]


def test_bad_calls_say_what_to_do(setup):
    net, data = setup
    with pytest.raises(TypeError, match="not both"):
        dm.measure(net, data, MonitorConfig(), sigma=2.0)
    with pytest.raises(ValueError, match="Dataset or DataLoader"):
        dm.measure(net, metrics=["dse"])
    with pytest.raises(ValueError, match="need labels"):
        dm.measure(net, TensorDataset(data.tensors[0]), metrics=["dsmi_y"])


def test_the_config_owns_defaults_and_checks_and_the_monitor_reads_it_back():
    assert DSEMonitorCore().config == MonitorConfig()
    monitor = DSEMonitorCore(layers="fc", metrics="dse", sigma=3, every_n_train_steps=5)
    assert (monitor.layers, monitor.metrics, monitor.sigma, monitor.every_n_epochs) == (["fc"], ["dse"], 3.0, None)
    assert monitor.config == MonitorConfig(layers=["fc"], metrics=["dse"], sigma=3.0, every_n_train_steps=5)
    with pytest.raises(AttributeError, match="read-only"):
        monitor.sigma = 5.0
    with pytest.raises(ValueError, match="not both"):
        MonitorConfig(every_n_epochs=1, every_n_train_steps=1)
    with pytest.raises(ValueError, match="t must be a positive number or 'knee'"):
        MonitorConfig(t=0)


def test_every_registry_metric_computes_through_one_interface():
    z = torch.cat([torch.randn(20, 3), torch.randn(20, 3) + 4])
    labels = torch.arange(40) // 20
    settings = MetricSettings(sigma=2.0, solver="exact")
    computed = {}
    for name, metric in METRICS.items():
        ref = {None: None, "previous": z.flip(0)}.get(metric.reference, labels)  # cka_prev: other features
        computed[name] = result = metric.compute(z, ref, settings, computed)
        # a value, or (alpha_req on D = 3 < 110) nothing logged, and why
        assert math.isfinite(result.value) or (result.values == {} and result.note), name
    assert computed["dse_norm"].value == computed["dse"].value / math.log2(40)
    alone = {}
    METRICS["dse_norm"].compute(z, None, settings, alone)
    assert list(alone) == ["dse"]  # the base, kept for a later request of dse itself
