"""Scale diagnostics and sigma / t policies with real Trainers: sigma_ratio, one warning, frozen choices."""
from __future__ import annotations

import math
import warnings

import lightning.pytorch as L
import pytest
import torch
from dse_callback_models import LitClassifier, TinyCNN, trainer_kwargs
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from dse_monitor import DSEMonitor, diffusion_spectral_entropy, median_pairwise_distance
from dse_monitor.monitor import DSEMonitorWarning


class Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


class ScaledFeatures(nn.Module):
    """TinyCNN whose pooled features pass through ``scaled`` (x factor) and a dead ``collapsed`` branch."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.cnn = TinyCNN()
        self.scaled = Scale(factor)
        self.collapsed = nn.Linear(16, 4)  # weights 0, bias 1: every sample gives the same vector
        nn.init.zeros_(self.collapsed.weight)
        nn.init.ones_(self.collapsed.bias)

    def forward(self, x):
        h = self.cnn.pool(self.cnn.features(x)).flatten(1)
        return self.cnn.fc(self.scaled(h)) + 0 * self.collapsed(h).sum()  # the dead branch runs, unused


def _fit(tmp_path, monitor, factor, max_epochs=3, **kw):
    torch.manual_seed(0)
    model = LitClassifier(net=ScaledFeatures(factor), lr=0.0)  # lr 0: the scale stays where it was put
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        L.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=max_epochs, **kw)).fit(model)
    return [str(w.message) for w in record if issubclass(w.category, DSEMonitorWarning)]


@pytest.mark.parametrize("factor, direction, words", [(1e-3, "below", "far above"), (1e4, "above", "far below")])
def test_features_far_from_sigma_warn_once_and_log_sigma_ratio(tmp_path, factor, direction, words):
    monitor = DSEMonitor(layers=["net.scaled", "net.collapsed"], num_samples=48, metrics="dse")
    messages = _fit(tmp_path, monitor, factor)
    scale_warnings = [m for m in messages if "Fix: sigma=" in m]
    assert len(scale_warnings) == 1, messages  # 4 measurements, one warning
    assert f"layer 'net.scaled'" in scale_warnings[0] and words in scale_warnings[0]
    assert 'sigma="median_init"' in scale_warnings[0]
    ratios = [monitor.history[s]["dse/net.scaled/sigma_ratio"] for s in sorted(monitor.history)]
    assert len(ratios) == 4 and all((r < 1 / 3) if direction == "below" else (r > 3) for r in ratios)
    dse = monitor.history[0]["dse/net.scaled/dse"]
    assert (dse < 0.02 * math.log2(48)) if direction == "below" else (dse > 0.98 * math.log2(48))
    # the dead branch is collapsed at a sensible scale (its pairwise distances are all 0): DSE 0, no warning
    assert monitor.history[0]["dse/net.collapsed/dse"] == pytest.approx(0.0, abs=1e-9)
    assert monitor.history[0]["dse/net.collapsed/sigma_ratio"] == 0.0
    assert not any("layer 'net.collapsed'" in m for m in messages)


def test_sigma_ratio_is_the_median_distance_over_sigma(tmp_path):
    monitor = DSEMonitor(layers="net.scaled", num_samples=48, metrics=["dse", "dse_norm"], sigma=3.0)
    _fit(tmp_path, monitor, 1.0, max_epochs=1)
    features = {}
    torch.manual_seed(0)
    model = LitClassifier(net=ScaledFeatures(1.0), lr=0.0)
    hook = model.net.scaled.register_forward_hook(lambda m, i, o: features.setdefault("z", o))
    model.eval()
    x = torch.stack([model.val_dataloader().dataset[i][0] for i in monitor.probe_indices])
    with torch.no_grad():
        model(x)
    hook.remove()
    z = features["z"]
    assert monitor.history[0]["dse/net.scaled/sigma_ratio"] == pytest.approx(median_pairwise_distance(z) / 3.0, rel=1e-5)
    dse = float(diffusion_spectral_entropy(z, 3.0))
    assert monitor.history[0]["dse/net.scaled/dse_norm"] == pytest.approx(dse / math.log2(48), rel=1e-5)


def test_median_init_is_frozen_and_survives_a_resume(tmp_path):
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    first = DSEMonitor(layers="net.scaled", num_samples=48, metrics="dse", sigma="median_init")
    torch.manual_seed(0)
    model = LitClassifier(net=ScaledFeatures(1.0))  # lr 0.05: the features move, sigma must not
    L.Trainer(callbacks=[first, ckpt], **trainer_kwargs(tmp_path, max_epochs=2, enable_checkpointing=True)).fit(model)
    sigma = first.frozen["sigma"]["net.scaled"]
    assert first.history[0]["dse/net.scaled/sigma"] == sigma  # logged once, at the first measurement
    assert "dse/net.scaled/sigma" not in first.history[1] and "dse/net.scaled/sigma" not in first.history[2]
    ratios = [first.history[s]["dse/net.scaled/sigma_ratio"] for s in (0, 1, 2)]
    assert ratios[0] == pytest.approx(1.0) and ratios[1:] != [1.0, 1.0]  # features moved, sigma did not
    resumed = DSEMonitor(layers="net.scaled", num_samples=48, metrics="dse", sigma="median_init")
    trainer = L.Trainer(callbacks=[resumed, ckpt], **trainer_kwargs(tmp_path, max_epochs=3, enable_checkpointing=True))
    trainer.fit(LitClassifier(net=ScaledFeatures(1.0)), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert resumed.frozen["sigma"] == {"net.scaled": sigma}
    assert sorted(resumed.history) == [0, 1, 2, 3] and "dse/net.scaled/sigma" not in resumed.history[3]


def test_t_knee_is_an_integer_chosen_once(tmp_path):
    monitor = DSEMonitor(layers="net.scaled", num_samples=48, metrics="dse", sigma="median_init", t="knee", t_max=30)
    _fit(tmp_path, monitor, 1.0, max_epochs=2)
    t = monitor.frozen["t"]["net.scaled"]
    assert isinstance(t, int) and 1 <= t <= 30
    assert monitor.history[0]["dse/net.scaled/t"] == t and all("dse/net.scaled/t" not in monitor.history[s] for s in (1, 2))


def test_bad_policies_fail_at_construction():
    with pytest.raises(ValueError, match="'median_init'"):
        DSEMonitor(sigma="median_first")
    with pytest.raises(ValueError, match="'knee'"):
        DSEMonitor(t="elbow")
    with pytest.raises(ValueError, match="t_max"):
        DSEMonitor(t="knee", t_max=0)
