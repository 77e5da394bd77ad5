"""The monitor's pure parts without a Trainer: compute -> Measurement, the registry, the versioned state."""
from __future__ import annotations

import math

import pytest
import torch
from sklearn.datasets import load_digits

import dse_monitor as dm
from dse_monitor.monitor import (
    STATE_VERSION,
    DSEMonitorCore,
    MonitorConfig,
    MonitorState,
    ReferenceGroups,
    compute_measurement,
    make_groups,
)
from dse_monitor.registry import HEALTH_METRICS, METRICS, MetricSettings


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return torch.tensor(x[:300], dtype=torch.float32), torch.tensor(y[:300])


def test_measurement_equals_the_functional_core(digits):
    x, y = digits
    cfg = DSEMonitorCore(metrics=["dse", "dsmi_y", "dsmi_x", "cse"], sigma=20.0, solver="exact").config
    groups = make_groups(cfg, ReferenceGroups(), labels=y, inputs=x)
    assert groups.labels is not None and groups.inputs is not None and not groups.notes
    assert int(groups.inputs.max()) + 1 == 10  # clusters = classes when n_clusters is not given
    m = compute_measurement(cfg, {"penultimate": x}, groups, step=4)
    assert m.step == 4 and not m.failures and not m.fallbacks
    f32 = torch.float32  # the monitor's default precision for the diffusion metrics; binning stays float64
    assert m.values["dse/penultimate/dse"] == float(dm.diffusion_spectral_entropy(x, 20.0, dtype=f32))
    dsmi_y = dm.diffusion_spectral_mutual_information(x, groups=groups.labels, sigma=20.0, dtype=f32)
    assert m.values["dse/penultimate/dsmi_y"] == float(dsmi_y)
    dsmi_x = dm.diffusion_spectral_mutual_information(x, groups=groups.inputs, sigma=20.0, dtype=f32)
    assert m.values["dse/penultimate/dsmi_x"] == float(dsmi_x)
    assert m.values["dse/penultimate/cse"] == pytest.approx(float(dm.classic_shannon_entropy(x)), abs=1e-12)
    lam = dm.diffusion_eigenvalues(x, 20.0, dtype=f32).numpy()
    assert m.spectra["penultimate"] == pytest.approx(lam, abs=1e-12)
    # and within 1e-5 bits of the float64 values (the functional API's default)
    assert m.values["dse/penultimate/dse"] == pytest.approx(float(dm.diffusion_spectral_entropy(x, 20.0)), abs=1e-5)


def test_a_failing_metric_is_recorded_not_raised_and_nan_layers_log_nan(digits):
    x, y = digits
    cfg = DSEMonitorCore(metrics=["dse", "dsmi_y"], sigma=20.0).config
    groups = make_groups(cfg, ReferenceGroups(), labels=y, inputs=None)
    bad = x.clone()
    bad[3, 0] = float("nan")
    m = compute_measurement(cfg, {"good": x, "empty": x[:, :0], "diverged": bad}, groups, step=1)
    assert set(m.failures) == {"empty"} and set(m.failures["empty"]) == {"dse", "dsmi_y"}
    assert "no features" in m.failures["empty"]["dse"]
    assert math.isnan(m.values["dse/diverged/dse"]) and math.isnan(m.values["dse/diverged/dsmi_y"])
    assert m.values["dse/good/dse"] > 0
    assert any("'diverged' has NaN/Inf" in n for n in m.notes) and any("'empty' at epoch 1" in n for n in m.notes)


def test_groups_that_cannot_be_made_are_not_retried_and_their_metrics_are_dropped(digits):
    x, _ = digits
    cfg = DSEMonitorCore(metrics=["dse", "dsmi_x"], n_clusters=500).config  # more clusters than samples
    groups = make_groups(cfg, ReferenceGroups(), labels=None, inputs=x)
    assert groups.inputs is None and groups.inputs_failed and "clustering the probe inputs" in groups.notes[0]
    assert groups.still_needed(cfg) == (False, False)
    m = compute_measurement(cfg, {"penultimate": x}, groups, step=0)
    assert sorted(m.values) == ["dse/penultimate/dse", "dse/penultimate/sigma_ratio"]


def test_every_registry_metric_names_a_title_a_reference_and_computes(digits):
    x, y = digits
    settings = MetricSettings(sigma=20.0, solver="exact")
    for name, metric in METRICS.items():
        if name in HEALTH_METRICS:  # not in bits: tests/functional/test_health.py
            continue
        groups = y if metric.reference is not None else None
        if metric.derived_from is not None:  # dse_norm: from DSE's result
            result = METRICS[metric.derived_from].compute(x, groups, settings)
            assert 0 < metric.derive(result) == result.value / math.log2(len(x)) < 1
            continue
        result = metric.compute(x, groups, settings)
        assert metric.title and metric.reference in (None, "labels", "inputs")
        assert 0 <= result.value <= math.log2(len(x)) + 1e-9, name


def test_state_round_trips_and_reads_the_first_layout():
    state = MonitorState(indices=[1, 5], label_groups=torch.tensor([0, 1]), history={0: {"dse/p/dse": 2.5}})
    saved = state.to_dict()
    assert saved["version"] == STATE_VERSION
    assert MonitorState.from_dict(saved) == state
    # a version-1 checkpoint as written before the state was versioned in code (string step keys, no groups)
    v1 = {"version": 1, "indices": [1, 5], "history": {"0": {"dse/p/dse": 2.5}}}
    restored = MonitorState.from_dict(v1)
    assert restored.indices == [1, 5] and restored.history == {0: {"dse/p/dse": 2.5}} and restored.label_groups is None


def test_a_newer_state_version_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"version 99, newer than this dse-monitor reads.*upgrade dse-monitor"):
        MonitorState.from_dict({"version": 99})


def test_configuration_reads_as_attributes_of_the_callback():
    monitor = dm.DSEMonitor(sigma=2, metrics="dse", dtype="float32")
    assert monitor.sigma == 2.0 and monitor.metrics == ["dse"] and monitor.dtype is torch.float32
    assert isinstance(monitor.config, MonitorConfig)
    with pytest.raises(AttributeError, match="no attribute 'sigmaa'"):
        monitor.sigmaa


def test_collective_groups_without_a_share_are_refused_not_ignored():
    from dse_monitor.functional.row_group import RowGroup

    cfg = MonitorConfig(metrics=["dse"], sigma=1.0)
    z = {"penultimate": torch.randn(20, 3, generator=torch.Generator().manual_seed(0))}
    for kw in ({"row_group": RowGroup.single()}, {"subset_group": RowGroup.single()}):
        with pytest.raises(ValueError, match=r"pass share=Share\(rank, world\)"):
            compute_measurement(cfg, z, ReferenceGroups(), step=0, **kw)
