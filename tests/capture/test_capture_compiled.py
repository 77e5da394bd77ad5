"""Compiled models: the probe runs the eager original with the same weights, hooks fire, and the
compiled training graph is neither changed nor recompiled."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

from dse_monitor.capture import FeatureCapture, LayerNotFoundError, eager, eval_mode, resolve_layer, resolve_layers


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 8), nn.ReLU())
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.body(x))


class Module(nn.Module):
    """A LightningModule-like wrapper holding a compiled network (``self.net = torch.compile(net)``)."""

    def __init__(self, backend: str):
        super().__init__()
        self.net = torch.compile(Net(), backend=backend)

    def forward(self, x):
        return self.net(x)


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


def _features(model: nn.Module, spec, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with eager(model) as m, torch.no_grad(), eval_mode(m):
        layers = resolve_layers(m, spec, lambda: m(x))
        with FeatureCapture(layers) as cap:
            m(x)
            return cap.take()


def test_compiled_submodule_inductor_probe_equals_eager_and_does_not_recompile():
    torch.manual_seed(0)
    model = Module("inductor")
    x = torch.randn(5, 6)
    model.train()
    model(x)  # the training graph (train mode, with grad): compiled once (inductor, CPU)
    graphs = _graphs()
    assert graphs >= 1
    compiled = model.net

    feats = _features(model, ["net.body.1", "net._orig_mod.body.4", "penultimate"], x)
    eager_net = compiled._orig_mod  # the same weights, run eagerly by hand
    with torch.no_grad():
        hidden = torch.relu(eager_net.body[0](x))
        expected_4 = torch.relu(eager_net.body[3](hidden))  # eval: dropout is the identity
    assert sorted(feats) == ["net.body.1", "net.body.4", "penultimate"]  # user-facing names
    torch.testing.assert_close(feats["net.body.1"], hidden, rtol=0, atol=0)
    torch.testing.assert_close(feats["net.body.4"], expected_4, rtol=0, atol=0)
    torch.testing.assert_close(feats["penultimate"], expected_4, rtol=0, atol=0)  # the input of fc

    assert model.net is compiled and model.training  # the compiled wrapper and the modes are back
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0
    model(x)  # training goes on with the same graph
    assert _graphs() == graphs


def test_layer_names_of_compiled_models_are_shown_without_orig_mod():
    model = Module("eager")
    assert resolve_layer(model, "net._orig_mod.body.0").module is model.net._orig_mod.body[0]
    assert resolve_layer(model, "net.body.0").name == "net.body.0"
    assert resolve_layer(model, "penultimate").module_name == "net.fc"
    with pytest.raises(LayerNotFoundError) as info:
        resolve_layer(model, "net.bdy.0")
    assert "'net.body.0'" in str(info.value) and "_orig_mod" not in str(info.value)
    assert [layer.name for layer in resolve_layers(model, "net.body.*")] == [f"net.body.{i}" for i in range(5)]
    whole = torch.compile(Net(), backend="eager")  # compiled as a whole: names as the eager model's
    assert resolve_layer(whole, "body.3").module is whole._orig_mod.body[3]


def test_model_compiled_as_a_whole_and_in_place():
    torch.manual_seed(0)
    x = torch.randn(4, 6)
    net = Net().eval()
    with torch.no_grad():
        reference = _features(net, ["body.1"], x)["body.1"]

    whole = torch.compile(net, backend="eager")
    whole(x)
    graphs = _graphs()
    with eager(whole) as m:
        assert m is net
    assert _graphs() == graphs
    torch.testing.assert_close(_features(whole, ["body.1"], x)["body.1"], reference, rtol=0, atol=0)

    in_place = Net().eval()
    in_place.load_state_dict(net.state_dict())
    in_place.compile(backend="eager")  # nn.Module.compile(): __call__ goes through dynamo
    in_place(x)
    graphs = _graphs()
    torch.testing.assert_close(_features(in_place, ["body.1"], x)["body.1"], reference, rtol=0, atol=0)
    assert in_place._compiled_call_impl is not None
    in_place(x)
    assert _graphs() == graphs


def test_lightning_module_compiled_before_fit_runs_its_original_forward():
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.utilities.compile import from_compiled

    class Lit(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = Net()

        def forward(self, x):
            return self.net(x)

    torch.manual_seed(0)
    lit = Lit().eval()
    x = torch.randn(4, 6)
    with torch.no_grad():
        reference = _features(lit, ["net.body.4"], x)["net.body.4"]
    module = from_compiled(torch.compile(lit, backend="eager"))  # what Trainer.fit does with a compiled module
    compiled_forward = module.forward
    module(x)
    graphs = _graphs()
    torch.testing.assert_close(_features(module, ["net.body.4"], x)["net.body.4"], reference, rtol=0, atol=0)
    assert module.forward is compiled_forward and _graphs() == graphs
    module(x)
    assert _graphs() == graphs
