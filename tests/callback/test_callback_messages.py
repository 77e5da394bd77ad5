"""What the monitor says, with real Trainers: info lines that show, the paper's start told apart from a
wrong scale, identical layers measured once, NaN inputs named as such."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from dse_callback_models import LitClassifier, TinyCNN, make_data, trainer_kwargs
from torch import nn
from torch.utils.data import TensorDataset

from dse_monitor import DSEMonitor
from dse_monitor.monitor import DSEMonitorWarning, Measurement
from dse_monitor.monitor.report import Reporter

ROOT = Path(__file__).parents[2]


def _fit(tmp_path, monitor, model, max_epochs=1, **kw):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        L.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=max_epochs, **kw)).fit(model)
    return [str(w.message) for w in record if issubclass(w.category, DSEMonitorWarning)]


def test_info_lines_show_on_stderr_without_any_logging_set_up(tmp_path):
    script = textwrap.dedent(f"""
        import lightning.pytorch as L, torch
        from torch import nn
        from dse_callback_models import LitClassifier, trainer_kwargs
        from dse_monitor import DSEMonitor

        class Staged(nn.Module):  # two stages named as ResNet names them: what layers="blocks" finds
            def __init__(self):
                super().__init__()
                self.layer1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
                self.layer2 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
                self.fc = nn.Linear(8, 4)
            def forward(self, x):
                return self.fc(self.layer2(self.layer1(x)).mean(dim=(2, 3)))

        torch.manual_seed(0)
        monitor = DSEMonitor(layers="blocks", num_samples=16, metrics=["dse"], sigma="median_init")
        L.Trainer(callbacks=[monitor], **trainer_kwargs({str(tmp_path)!r}, max_epochs=1)).fit(LitClassifier(net=Staged()))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(Path(__file__).parent)]),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "DSEMonitor: layers resolved: net.layer1, net.layer2" in done.stderr
    assert "sigma='median_init' for layer 'net.layer1' frozen at" in done.stderr
    assert "GPU available" in done.stderr  # the same stream as Lightning's own lines


def test_both_distributions_send_info_lines_through_their_own_rank_zero_info():
    import lightning.pytorch.utilities
    import pytorch_lightning.utilities

    from dse_monitor.pytorch_lightning import DSEMonitor as PLMonitor

    assert DSEMonitor(metrics="dse")._reporter.info_fn is lightning.pytorch.utilities.rank_zero_info
    assert PLMonitor(metrics="dse")._reporter.info_fn is pytorch_lightning.utilities.rank_zero_info


# ----------------------------------------------------------------------------- the paper's start
class _Trainer:
    is_global_zero = True


def _below(step, dse):
    return Measurement(step, values={"dse/penultimate/dse": dse}, verdicts={"penultimate": ("below", "WRONG SCALE")})


def _say(reporter, *measurements):
    lines = []
    reporter.info_fn = lambda m: lines.append(("info", m))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for m in measurements:
            reporter.measurement(_Trainer(), m)
    return lines + [("warning", str(w.message)) for w in record]


def test_the_papers_collapsed_start_is_an_info_line_and_a_stuck_scale_still_warns():
    rising = _say(Reporter(sigma=10.0), _below(0, 0.007), _below(1, 0.108), _below(2, 0.5))
    assert [kind for kind, _ in rising] == ["info"] and "collapsed-initialisation regime" in rising[0][1]
    stuck = _say(Reporter(sigma=10.0), _below(0, 0.007), _below(1, 0.108), _below(2, 0.109), _below(3, 0.11))
    assert [kind for kind, _ in stuck] == ["info", "warning"] and stuck[1][1] == "WRONG SCALE"
    other_sigma = _say(Reporter(sigma="sqrt_dim"), _below(0, 0.007))
    assert other_sigma == [("warning", "WRONG SCALE")]
    above = Measurement(0, values={"dse/penultimate/dse": 8.4}, verdicts={"penultimate": ("above", "TOO SMALL")})
    assert _say(Reporter(sigma=10.0), above) == [("warning", "TOO SMALL")]
    assert [k for k, _ in _say(Reporter(sigma=1.0), _below(0, 0.003), _below(1, 0.023))] == ["info"]  # quickstart


class _Shrunk(nn.Module):
    def __init__(self):
        super().__init__()
        self.cnn = TinyCNN()

    def forward(self, x):
        return self.cnn.fc(1e-3 * self.cnn.pool(self.cnn.features(x)).flatten(1))


@pytest.mark.parametrize("sigma", [10.0, "sqrt_dim"])
def test_a_fit_at_the_papers_sigma_explains_its_start_and_warns_when_it_stays(tmp_path, sigma):
    torch.manual_seed(0)
    monitor = DSEMonitor(num_samples=32, metrics=["dse"], sigma=sigma)
    said = _fit(tmp_path, monitor, LitClassifier(net=_Shrunk(), lr=0.0), max_epochs=2)  # lr 0: stays collapsed
    kinds = [kind for kind, m in monitor._reporter.said if "regime" in m or "Fix: sigma=" in m]
    # an absolute sigma: the start explained, then one warning when epoch 1 is just as collapsed;
    # a sigma policy (sqrt_dim) on the wrong scale: warned at once
    assert kinds == (["info", "warning"] if sigma == 10.0 else ["warning"])
    assert len([m for m in said if "Fix: sigma=" in m]) == 1


# ----------------------------------------------------------------------------- identical layers
def test_identical_layers_are_measured_once_and_logged_under_each_name(tmp_path, monkeypatch):
    import torchvision

    import dse_monitor.registry.computations as registry

    calls = []  # every DSE computed, counted where the registry calls the functional core
    original = registry.diffusion_spectral_entropy_details
    monkeypatch.setattr(registry, "diffusion_spectral_entropy_details",
                        lambda z, *a, **k: calls.append(tuple(z.shape)) or original(z, *a, **k))
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=4)
    monitor = DSEMonitor(layers=["blocks", "penultimate"], num_samples=32, metrics=["dse"], sigma="median_init",
                         reuse_validation=False)
    _fit(tmp_path, monitor, LitClassifier(net=net, n_train=32), max_epochs=1)
    for values in monitor.history.values():
        assert values["dse/net.layer4/dse"] == values["dse/penultimate/dse"]
        assert values["dse/net.layer4/sigma_ratio"] == values["dse/penultimate/sigma_ratio"]
        assert values["dse/net.layer3/dse"] != values["dse/penultimate/dse"]
    assert len(calls) == 4 * len(monitor.history)  # layer1..layer4; penultimate copied, not measured again
    lines = [m for kind, m in monitor._reporter.said if "identical pooled features" in m]
    assert lines == ["DSEMonitor: layers 'net.layer4' and 'penultimate' give identical pooled features; "
                     "measured once, logged under both names."]


# ----------------------------------------------------------------------------- NaN inputs
def test_nan_in_the_probe_inputs_is_named_not_blamed_on_training(tmp_path):
    data = make_data(32, seed=2)
    x = data.tensors[0].clone()
    x[3, 0, 0, 0] = float("nan")
    probe = TensorDataset(x, data.tensors[1])
    monitor = DSEMonitor(probe=probe, num_samples=None, metrics=["dse"], sigma=1.0, cache_inputs=False)
    said = _fit(tmp_path, monitor, LitClassifier(lr=0.0), limit_val_batches=0)
    nan_notes = [m for m in said if "NaN/Inf features" in m]
    assert nan_notes and all("the probe's inputs hold NaN/Inf: 1 sample(s), probe positions" in m for m in nan_notes)
    assert not any("diverged training" in m for m in nan_notes)
