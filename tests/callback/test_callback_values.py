"""The logged values equal the functional core applied to independently extracted features."""
from __future__ import annotations

import copy

import lightning.pytorch as L
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from dse_callback_models import LitClassifier, make_data, trainer_kwargs
from torch import nn

from dse_monitor import (
    DSEMonitor,
    classic_shannon_entropy,
    classic_shannon_mutual_information,
    diffusion_spectral_entropy,
    diffusion_spectral_mutual_information,
    reference_groups,
)

ALL = ["dse", "dsmi_y", "dsmi_x", "cse", "csmi_y", "csmi_x"]


def _expected(z, labels, x_groups, sigma):
    y_groups = reference_groups(labels)
    return {
        "dse": diffusion_spectral_entropy(z, sigma),
        "dsmi_y": diffusion_spectral_mutual_information(z, groups=y_groups, sigma=sigma),
        "dsmi_x": diffusion_spectral_mutual_information(z, groups=x_groups, sigma=sigma),
        "cse": classic_shannon_entropy(z),
        "csmi_y": classic_shannon_mutual_information(z, groups=y_groups),
        "csmi_x": classic_shannon_mutual_information(z, groups=x_groups),
    }


def _check(history, step, prefix, layer, expected):
    for metric, value in expected.items():
        assert history[step][f"{prefix}/{layer}/{metric}"] == pytest.approx(float(value), rel=1e-5, abs=1e-6), metric


def test_values_equal_core_on_independently_hooked_features(tmp_path):
    L.seed_everything(0)
    model = LitClassifier(n_val=64)
    at_init = copy.deepcopy(model.net).eval()
    monitor = DSEMonitor(num_samples=40, metrics=ALL, sigma=1.0, x_size=8)
    L.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1)).fit(model)

    data = make_data(64, 16, seed=2)  # the model's val split
    idx = monitor.probe_indices
    assert len(idx) == 40 and idx == sorted(idx)
    x, y = data.tensors[0][idx], data.tensors[1][idx]
    x_groups = reference_groups(F.interpolate(x, size=(8, 8), mode="nearest").flatten(1), n_clusters=4, seed=0)
    assert torch.equal(monitor.input_groups, x_groups)
    for step, net in ((0, at_init), (1, model.net.eval())):
        seen = {}
        handle = net.fc.register_forward_pre_hook(lambda m, args: seen.update(z=args[0]))
        with torch.no_grad():
            net(x)
        handle.remove()
        _check(monitor.history, step, "dse", "penultimate", _expected(seen["z"], y, x_groups, 1.0))


class _Plain(nn.Module):
    """A user module without classifier names: penultimate = input of the last Linear."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 15 * 15, 16), nn.Tanh())
        self.out = nn.Linear(16, 4)

    def forward(self, x):
        return self.out(self.body(x))


def _timm_cnn():
    return timm.create_model("resnet10t", pretrained=False, num_classes=4)


def _timm_vit():
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=32, patch_size=8, depth=2)


def _torchvision_resnet():
    return torchvision.models.resnet18(weights=None, num_classes=4)


def _pre_logits(net, x):
    if hasattr(net, "forward_head"):
        return net.forward_head(net.forward_features(x), pre_logits=True)
    if isinstance(net, torchvision.models.ResNet):
        return torch.flatten(net.avgpool(net.layer4(net.layer3(net.layer2(net.layer1(
            net.maxpool(net.relu(net.bn1(net.conv1(x))))))))), 1)
    return net.body(x)


@pytest.mark.parametrize("make", [_timm_cnn, _timm_vit, _torchvision_resnet, _Plain])
def test_real_models_penultimate(tmp_path, make):
    L.seed_everything(0)
    model = LitClassifier(net=make(), n_train=32, n_val=48, size=32, batch_size=16, lr=0.01)
    monitor = DSEMonitor(num_samples=32, metrics=["dse", "dsmi_y"], sigma="sqrt_dim")
    L.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1, limit_val_batches=0)).fit(model)
    assert sorted(monitor.history) == [0, 1]
    x, y = make_data(48, 32, seed=2).tensors
    x, y = x[monitor.probe_indices], y[monitor.probe_indices]
    with torch.no_grad():
        z = _pre_logits(model.net.eval(), x)
    expected = {
        "dse": diffusion_spectral_entropy(z, "sqrt_dim"),
        "dsmi_y": diffusion_spectral_mutual_information(z, y, sigma="sqrt_dim"),
    }
    _check(monitor.history, 1, "dse", "penultimate", expected)


@pytest.mark.parametrize("precision", ["64-true", "bf16-mixed"])
def test_probe_pass_uses_the_trainers_precision(tmp_path, precision):
    class Recorder(LitClassifier):
        dtypes: list = []

        def forward(self, x):
            if not self.training:
                self.dtypes.append((x.dtype, torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None))
            return super().forward(x)

    model = Recorder(n_train=32)
    monitor = DSEMonitor(num_samples=32, metrics="dse")
    L.Trainer(callbacks=[monitor], precision=precision, **trainer_kwargs(tmp_path, max_epochs=1, limit_val_batches=0)).fit(model)
    expected = (torch.float64, None) if precision == "64-true" else (torch.float32, torch.bfloat16)
    assert model.dtypes and all(d == expected for d in model.dtypes)
    values = [v for step in monitor.history.values() for v in step.values()]
    assert values and all(v == v for v in values)
