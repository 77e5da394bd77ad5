"""The monitor's eigen-solver choice: solver='auto'|'exact'|'lanczos' and the memory fallback."""
from __future__ import annotations

import lightning.pytorch as L
import pytest
from dse_callback_models import LitClassifier, trainer_kwargs

import dse_monitor.monitor as core
import dse_monitor.functional.entropy as entropy
import dse_monitor.functional.subset_entropies as subset_entropies
from dse_monitor import DSEMonitor
from dse_monitor.functional.operator import check_exact_fits


def test_lanczos_monitor_agrees_with_exact_monitor(tmp_path):
    exact = DSEMonitor(num_samples=64, metrics=["dse", "dsmi_y"], sigma=1.0, solver="exact", prefix="exact")
    approx = DSEMonitor(num_samples=64, metrics=["dse", "dsmi_y"], sigma=1.0, solver="lanczos", prefix="approx")
    L.Trainer(callbacks=[exact, approx], **trainer_kwargs(tmp_path)).fit(LitClassifier())
    assert sorted(exact.history) == sorted(approx.history) == [0, 1, 2]
    for step in exact.history:
        for metric in ("dse", "dsmi_y"):
            e = exact.history[step][f"exact/penultimate/{metric}"]
            a = approx.history[step][f"approx/penultimate/{metric}"]
            assert abs(e - a) < 0.05, (step, metric, e, a)


def test_default_auto_is_exact_below_the_crossover(tmp_path):
    auto = DSEMonitor(num_samples=64, metrics=["dse"], sigma=1.0, prefix="auto")
    exact = DSEMonitor(num_samples=64, metrics=["dse"], sigma=1.0, solver="exact", prefix="exact")
    assert auto.solver == "auto"
    L.Trainer(callbacks=[auto, exact], **trainer_kwargs(tmp_path, max_epochs=1)).fit(LitClassifier())
    for step in auto.history:
        assert auto.history[step]["auto/penultimate/dse"] == exact.history[step]["exact/penultimate/dse"]


def test_probe_too_large_for_exact_warns_and_streams(tmp_path, monkeypatch):
    # The real memory guard, told that only one byte is free: the exact solve "cannot fit".
    monkeypatch.setattr(entropy, "check_exact_fits", lambda n, dtype, device: check_exact_fits(n, dtype, device, memory_limit=1))
    small = DSEMonitor(num_samples=64, metrics=["dse"], sigma=1.0, solver="exact", prefix="small")
    L.seed_everything(3)
    with pytest.warns(core.DSEMonitorWarning, match=r"exact DSE of N=64 points needs .*streamed approximate"):
        L.Trainer(callbacks=[small], **trainer_kwargs(tmp_path)).fit(LitClassifier())
    assert sorted(small.history) == [0, 1, 2]  # every epoch still measured
    monkeypatch.undo()
    reference = DSEMonitor(num_samples=64, metrics=["dse"], sigma=1.0, solver="exact", prefix="small")
    L.seed_everything(3)  # the same model and the same training as above
    L.Trainer(callbacks=[reference], **trainer_kwargs(tmp_path)).fit(LitClassifier())
    for step, values in reference.history.items():
        assert abs(values["small/penultimate/dse"] - small.history[step]["small/penultimate/dse"]) < 0.05


def _one_byte_free(n, dtype, device):
    return check_exact_fits(n, dtype, device, memory_limit=1)


def test_dsmi_too_large_for_exact_streams_like_dse(tmp_path, monkeypatch):
    # Only DSMI's memory guard is told that one byte is free; DSE stays exact.
    monkeypatch.setattr(subset_entropies, "check_exact_fits", _one_byte_free)
    small = DSEMonitor(num_samples=64, metrics=["dse", "dsmi_y"], sigma=1.0, solver="exact", prefix="m")
    L.seed_everything(3)
    with pytest.warns(core.DSEMonitorWarning, match=r"exact DSE of N=\d+ points needs .*streamed approximate"):
        L.Trainer(callbacks=[small], **trainer_kwargs(tmp_path)).fit(LitClassifier())
    monkeypatch.undo()
    reference = DSEMonitor(num_samples=64, metrics=["dse", "dsmi_y"], sigma=1.0, solver="exact", prefix="m")
    L.seed_everything(3)
    L.Trainer(callbacks=[reference], **trainer_kwargs(tmp_path)).fit(LitClassifier())
    assert sorted(small.history) == sorted(reference.history) == [0, 1, 2]
    for step, values in reference.history.items():
        assert small.history[step]["m/penultimate/dse"] == values["m/penultimate/dse"]  # untouched, exact
        assert abs(small.history[step]["m/penultimate/dsmi_y"] - values["m/penultimate/dsmi_y"]) < 0.05


def test_one_failing_metric_does_not_take_the_others_with_it(tmp_path, monkeypatch):
    # At t = 3 there is no approximate fallback: DSMI fails, DSE of the same layer is still logged.
    monkeypatch.setattr(subset_entropies, "check_exact_fits", _one_byte_free)
    monitor = DSEMonitor(num_samples=64, metrics=["dse", "dsmi_y"], sigma=1.0, t=3, solver="exact")
    with pytest.warns(core.DSEMonitorWarning, match=r"computing \['dsmi_y'\] for layer 'penultimate' at epoch 0 "
                      r"failed \(MemoryError: exact DSE of N=\d+ points.*\); skipping it"):
        L.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1)).fit(LitClassifier())
    assert sorted(monitor.history) == [0, 1]
    for values in monitor.history.values():
        assert "dse/penultimate/dsmi_y" not in values
        assert values["dse/penultimate/dse"] > 0


def test_unknown_solver_is_a_configuration_error():
    with pytest.raises(ValueError, match="solver must be one of"):
        DSEMonitor(solver="eigh")
