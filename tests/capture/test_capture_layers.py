"""Finding layers: "penultimate" on timm, torchvision and plain modules; unknown names."""
from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

from dse_monitor.capture import FeatureCapture, LayerNotFoundError, resolve_layer


def _captured(model: nn.Module, layer_name: str, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    layer = resolve_layer(model, layer_name, lambda: model(x))
    with torch.no_grad(), FeatureCapture([layer]) as cap:
        model(x)
        return cap.take()[layer_name]


@pytest.mark.parametrize(
    "name, kwargs",
    [("resnet10t", {}), ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 2})],
)
def test_penultimate_of_timm_models_is_forward_head_pre_logits(name, kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=5, **kwargs).eval()
    x = torch.randn(6, 3, 32, 32)
    layer = resolve_layer(model, "penultimate")
    assert layer.module is model.get_classifier() and layer.read == "input"
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(_captured(model, "penultimate", x), expected)


def test_penultimate_inside_a_wrapper_finds_the_nested_timm_classifier():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = timm.create_model("resnet10t", pretrained=False, num_classes=3)

        def forward(self, x):
            return self.backbone(x)

    assert resolve_layer(Wrapper(), "penultimate").module_name == "backbone.fc"


def test_penultimate_of_torchvision_resnet_is_the_input_of_fc():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=3).eval()
    x = torch.randn(4, 3, 32, 32)
    assert resolve_layer(model, "penultimate").module_name == "fc"
    seen = {}
    handle = model.avgpool.register_forward_hook(lambda m, a, out: seen.update(z=out.flatten(1)))
    with torch.no_grad():
        model(x)
    handle.remove()
    torch.testing.assert_close(_captured(model, "penultimate", x), seen["z"])


def test_penultimate_of_plain_module_is_last_linear_that_runs():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 8)
            self.b = nn.Linear(8, 3)
            self.unused = nn.Linear(3, 3)  # registered last, never called

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    model = Plain()
    x = torch.randn(5, 4)
    layer = resolve_layer(model, "penultimate", lambda: model(x))
    assert layer.module_name == "b" and layer.read == "input"
    torch.testing.assert_close(_captured(model, "penultimate", x), torch.relu(model.a(x)).detach())
    with pytest.raises(LayerNotFoundError, match="example forward"):
        resolve_layer(model, "penultimate")


def test_unknown_layer_lists_closest_names():
    model = torchvision.models.resnet18(weights=None)
    with pytest.raises(LayerNotFoundError, match=r"'layer4'.*penultimate") as info:
        resolve_layer(model, "layer_4")
    assert isinstance(info.value, ValueError)
    with pytest.raises(LayerNotFoundError, match="no nn.Linear"):
        conv = nn.Sequential(nn.Conv2d(1, 1, 1))
        resolve_layer(conv, "penultimate", lambda: conv(torch.zeros(1, 1, 2, 2)))


def test_named_layer_reads_the_output_and_a_layer_that_does_not_run_is_reported():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(3, 4)
    torch.testing.assert_close(_captured(model, "1", x), torch.relu(model[0](x)).detach())
    side = nn.ModuleDict({"used": nn.Linear(4, 2), "idle": nn.Linear(4, 2)})
    layer = resolve_layer(side, "idle")
    with FeatureCapture([layer]) as cap, pytest.raises(RuntimeError, match="did not run"):
        side["used"](x)
        cap.take()


def test_penultimate_skips_a_classifier_that_forward_does_not_call():
    class FeaturesOnly(nn.Module):
        """A timm backbone used through forward_features under the user's own head (named 'out')."""

        def __init__(self):
            super().__init__()
            self.backbone = timm.create_model("resnet10t", pretrained=False, num_classes=0)
            self.out = nn.Linear(self.backbone.num_features, 3)

        def forward(self, x):
            return self.out(self.backbone.forward_features(x).mean(dim=(2, 3)))

    model = FeaturesOnly().eval()
    x = torch.randn(2, 3, 32, 32)
    assert resolve_layer(model, "penultimate").module_name == "backbone.fc"  # without a forward pass: rule 1
    layer = resolve_layer(model, "penultimate", lambda: model(x))
    assert layer.module_name == "out" and layer.read == "input"
    with torch.no_grad():
        expected = model.backbone.forward_features(x).mean(dim=(2, 3))
    torch.testing.assert_close(_captured(model, "penultimate", x), expected)
    assert _hook_count(model) == 0


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
