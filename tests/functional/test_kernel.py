"""The factored diffusion kernel equals the step-by-step one, and steps aside near overflow.

``diffusion_kernel`` on the CPU without a gradient builds K as c_i exp(b_i.b_j) c_j
(four passes over the matrix); the step-by-step path (distances, Gaussian affinity,
symmetric normalisation) is what a differentiable call runs. Both are compared here with
either library computing the product, and on a spread whose exp(b_i.b_j) would overflow.
"""
from __future__ import annotations

import pytest
import torch

import dse_monitor as dm
from dse_monitor.functional import backend
from dse_monitor.functional.kernel import (
    _factored_diffusion_kernel,
    affinity_to_diffusion_kernel,
    diffusion_kernel,
    gaussian_affinity,
    squared_distances,
)


def _step_by_step(z: torch.Tensor, sigma: float) -> torch.Tensor:
    return affinity_to_diffusion_kernel(gaussian_affinity(squared_distances(z), sigma))


def _clustered(n: int, d: int, scale: float, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    centers = torch.randn(4, d, generator=g, dtype=torch.float64) * scale
    z = centers[torch.randint(0, 4, (n,), generator=g)] + torch.randn(n, d, generator=g, dtype=torch.float64)
    return z.to(dtype)


@pytest.mark.parametrize("lib", ["torch", "numpy"])
@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_factored_kernel_equals_the_step_by_step_kernel(lib, dtype, rtol):
    z = _clustered(300, 24, 2.0, dtype)
    with backend.forced(lib):
        factored = _factored_diffusion_kernel(z, 4.0)
        assert factored is not None  # this spread is inside the factored form's range
        expected = _step_by_step(z, 4.0)
        torch.testing.assert_close(diffusion_kernel(z, 4.0), factored, rtol=0, atol=0)
    assert factored.dtype == dtype
    torch.testing.assert_close(factored, expected, rtol=rtol, atol=rtol * float(expected.max()))
    assert bool(torch.isfinite(factored).all())


def test_spread_beyond_the_factored_range_uses_the_step_by_step_kernel():
    # |b|^2 = 100 at the two far clusters: exp(b_i.b_j) = exp(100) is inf in float32
    z = torch.zeros(200, 2, dtype=torch.float32)
    z[:100, 0], z[100:, 0] = -10.0, 10.0
    z += 0.1 * torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    assert _factored_diffusion_kernel(z, 1.0) is None
    k = diffusion_kernel(z, 1.0)
    assert bool(torch.isfinite(k).all())
    torch.testing.assert_close(k, _step_by_step(z, 1.0), rtol=0, atol=0)


def test_a_kernel_that_needs_a_gradient_is_built_step_by_step():
    z = _clustered(100, 8, 2.0, torch.float64).requires_grad_()
    k = diffusion_kernel(z, 3.0)
    assert k.requires_grad
    k.diagonal().sum().backward()
    assert z.grad is not None and bool(torch.isfinite(z.grad).all())


def _far_tight_clusters(sq_norm: float, d: int = 512) -> torch.Tensor:
    # two tight clusters at +-c with ||c||^2 = sq_norm (sigma = 1): the factored form's hardest case
    g = torch.Generator().manual_seed(d)
    c = torch.zeros(d, dtype=torch.float64)
    c[0] = sq_norm**0.5
    noise = 0.3 * torch.randn(300, d, generator=g, dtype=torch.float64) / d**0.5
    return torch.cat([c + noise[:150], -c + noise[150:]])


@pytest.mark.parametrize("sq_norm, factored", [(15.0, True), (18.5, False)])
def test_float32_uses_the_factored_form_only_where_its_rounding_stays_small(sq_norm, factored):
    z = _far_tight_clusters(sq_norm)
    z32 = z.float()
    assert (_factored_diffusion_kernel(z32, 1.0) is not None) is factored  # the bound: max ||b||^2 < 16.8
    assert _factored_diffusion_kernel(z, 1.0) is not None  # float64: up to 354
    err = float(dm.diffusion_spectral_entropy(z32, sigma=1.0, dtype=torch.float32)) - float(
        dm.diffusion_spectral_entropy(z, sigma=1.0))
    assert abs(err) < 5e-5  # the monitor's float32 budget is 1e-4 bits


def test_identical_rows_with_a_sigma_too_small_for_the_dtype_are_refused():
    with pytest.raises(ValueError, match="too small for torch.float32"):
        diffusion_kernel(torch.ones(100, 3), 1e-30)
