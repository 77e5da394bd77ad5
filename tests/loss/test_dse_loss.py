"""DSELoss: gradcheck in float64 on small inputs, the value of the functional form, DSMI(Z;Y)
with labels, clear errors; and a real training step whose gradient it changes."""
from __future__ import annotations

import math

import pytest
import torch

import dse_monitor
from dse_monitor import DSELoss, diffusion_spectral_entropy, diffusion_spectral_mutual_information


def _points(n=7, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("sigma,t", [(1.0, 1.0), (2.0, 2.0), (0.7, 1.5)])
def test_gradcheck_float64(sigma, t):
    z = _points().requires_grad_()
    assert torch.autograd.gradcheck(DSELoss(sigma=sigma, t=t), (z,))


def test_gradcheck_dsmi_with_labels():
    z = _points(8).requires_grad_()
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    assert torch.autograd.gradcheck(lambda a: DSELoss(sigma=1.0, measure="dsmi_y")(a, y), (z,))


def test_value_equals_the_functional_form():
    z = _points(40, 5, seed=3) * 4
    y = torch.arange(40) % 3
    assert DSELoss(sigma=10.0)(z).item() == diffusion_spectral_entropy(z, sigma=10.0).item()
    assert DSELoss(sigma=3.0, t=2)(z).item() == diffusion_spectral_entropy(z, sigma=3.0, t=2).item()
    mi = diffusion_spectral_mutual_information(z, y, sigma=3.0, num_repetitions=5, seed=0)
    assert DSELoss(sigma=3.0, measure="dsmi_y")(z, y).item() == pytest.approx(mi.item(), abs=1e-12)
    far = torch.eye(16) * 1e3
    assert DSELoss(normalize=True)(far).item() == pytest.approx(1.0)  # log2 16 / log2 16
    assert dse_monitor.DSELoss is DSELoss and "DSELoss" in dse_monitor.__all__


def test_tiling_would_not_change_the_value():
    """Why small batches are not tiled: exact copies leave DSE where it was."""
    z = _points(12, 4, seed=5)
    once, tiled = DSELoss(sigma=1.5)(z), DSELoss(sigma=1.5)(torch.cat([z, z, z]))
    assert tiled.item() == pytest.approx(once.item(), abs=1e-9)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="min_samples=2"):
        DSELoss()(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="features \\[N, D\\]"):
        DSELoss()(torch.zeros(4, 3, 2))
    with pytest.raises(ValueError, match="needs the labels"):
        DSELoss(measure="dsmi_y")(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="measure must be"):
        DSELoss(measure="cse")


def test_its_gradient_moves_features_towards_lower_entropy():
    z = (_points(10, 2, seed=1) * 2).requires_grad_()
    loss = DSELoss(sigma=1.0)
    before = loss(z)
    before.backward()
    with torch.no_grad():
        stepped = z - 0.05 * z.grad
    assert loss(stepped).item() < before.item() and math.isfinite(before.item())
