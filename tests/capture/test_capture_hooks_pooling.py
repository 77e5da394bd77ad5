"""Hooks are always removed, modes always restored; pooling of maps, tokens and vectors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dse_monitor.capture import FeatureCapture, eval_mode, pool_features, resolve_layer


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


class Boom(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


def test_hooks_and_modes_are_restored_after_an_exception():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(), nn.BatchNorm1d(4), Boom())
    model[2].eval()  # a frozen sub-module must stay in eval mode
    layers = [resolve_layer(model, "0"), resolve_layer(model, "2")]
    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(model), FeatureCapture(layers) as cap:
            assert _hook_count(model) == 2
            assert not any(m.training for m in model.modules())
            model(torch.randn(3, 4))
    assert _hook_count(model) == 0
    assert [m.training for m in model.modules()] == [True, True, True, False, True]
    cap.remove()  # idempotent


def test_last_call_of_a_module_used_twice_is_kept():
    lin = nn.Linear(2, 2)
    model = nn.ModuleDict({"lin": lin})
    x = torch.randn(3, 2)
    with FeatureCapture([resolve_layer(model, "lin")]) as cap:
        lin(lin(x))
        got = cap.take()["lin"]
    torch.testing.assert_close(got, lin(lin(x)).detach())


def test_pooling_rules():
    maps = torch.randn(2, 5, 3, 4)
    torch.testing.assert_close(pool_features(maps), maps.mean(dim=(2, 3)))
    tokens = torch.randn(2, 7, 5)
    torch.testing.assert_close(pool_features(tokens), tokens.mean(dim=1))
    torch.testing.assert_close(pool_features(tokens, "cls"), tokens[:, 0])
    assert pool_features(tokens, "flatten").shape == (2, 35)
    vec = torch.randn(2, 5, dtype=torch.float64)
    out = pool_features(vec)
    assert out.dtype == torch.float32 and out.shape == (2, 5)
    assert pool_features((vec, "state")).shape == (2, 5)  # tuples: first tensor
    assert pool_features(maps, lambda t: t.amax(dim=(2, 3))).shape == (2, 5)
    assert pool_features(torch.randn(2, 3, 4, 5, 6)).shape == (2, 3)
    with pytest.raises(ValueError, match="pooling"):
        FeatureCapture([], pooling="max")
    with pytest.raises(TypeError, match="callable"):
        pool_features("not a tensor")


@pytest.mark.parametrize("shape", [(2, 197, 64), (2, 64, 14, 14)])
def test_low_precision_activations_are_averaged_in_float32(shape):
    x = (torch.randn(*shape) + 3).to(torch.bfloat16)  # e.g. precision="bf16-true"
    expected = x.float().mean(dim=tuple(range(2, x.ndim))) if x.ndim == 4 else x.float().mean(dim=1)
    torch.testing.assert_close(pool_features(x), expected, rtol=1e-6, atol=1e-6)
