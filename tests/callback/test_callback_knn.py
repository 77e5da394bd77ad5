"""kernel, k and alpha reach the logged values: the monitor's DSE and DSMI under manylatents' settings."""
from __future__ import annotations

import copy

import lightning.pytorch as L
import pytest
import torch
from dse_callback_models import LitClassifier, make_data, trainer_kwargs

from dse_monitor import DSEMonitor, diffusion_spectral_entropy, diffusion_spectral_mutual_information, reference_groups


def test_knn_kernel_and_alpha_reach_the_logged_values(tmp_path):
    L.seed_everything(0)
    model = LitClassifier(n_val=64)
    at_init = copy.deepcopy(model.net).eval()
    monitor = DSEMonitor(num_samples=48, metrics=["dse", "dsmi_y"], kernel="knn", k=5, alpha=1.0, t=3,
                         dtype="float64")
    L.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1)).fit(model)
    assert (monitor.kernel, monitor.k, monitor.alpha) == ("knn", 5, 1.0)

    data = make_data(64, 16, seed=2)  # the model's val split
    idx = monitor.probe_indices
    x, y = data.tensors[0][idx], data.tensors[1][idx]
    for step, net in ((0, at_init), (1, model.net.eval())):
        with torch.no_grad():  # the input of fc (dropout is the identity in eval mode)
            z = net.pool(net.features(x)).flatten(1)
        logged = monitor.history[step]
        dse = diffusion_spectral_entropy(z, t=3, kernel="knn", k=5, alpha=1.0)
        dsmi = diffusion_spectral_mutual_information(z, groups=reference_groups(y), t=3, kernel="knn", k=5, alpha=1.0)
        assert logged["dse/penultimate/dse"] == pytest.approx(float(dse), abs=1e-9)
        assert logged["dse/penultimate/dsmi_y"] == pytest.approx(float(dsmi), abs=1e-9)
        assert logged["dse/penultimate/dse"] != pytest.approx(float(diffusion_spectral_entropy(z, t=3)), abs=1e-3)
        assert "dse/penultimate/sigma_ratio" not in logged  # no global sigma to diagnose


@pytest.mark.parametrize("kwargs, message", [
    ({"kernel": "dense"}, r"kernel must be one of \('gaussian', 'knn'\), got 'dense'"),
    ({"alpha": 2}, r"alpha must be a number in \[0, 1\]"),
    ({"k": 0}, r"k must be a positive integer"),
])
def test_bad_kernel_settings_fail_when_the_monitor_is_built(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DSEMonitor(**kwargs)
