"""The streamed operator, factored (one exp a block) and step by step, against the dense kernel."""
from __future__ import annotations

import pytest
import torch

from dse_monitor.functional.operator import KernelOperator


@pytest.mark.parametrize("alpha", [0.0, 1.0])
@pytest.mark.parametrize("sigma, factored", [(3.0, True), (0.1, False)])  # max ||b||^2 = max ||a||^2 / sigma^2
def test_streamed_products_traces_match_the_dense_kernel(sigma, factored, alpha):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(257, 6, generator=g, dtype=torch.float64)
    dense = KernelOperator.build(z, sigma, alpha=alpha)
    streamed = KernelOperator.build(z, sigma, streamed=True, block_size=64, alpha=alpha)
    assert (streamed.outer is not None) == factored
    x = torch.randn(3, 257, generator=g, dtype=torch.float64)
    assert torch.allclose(streamed.rmatmat(x), dense.rmatmat(x), rtol=1e-10, atol=1e-12)
    assert streamed.trace == pytest.approx(dense.trace, rel=1e-10)
    assert streamed.frobenius_sq == pytest.approx(dense.frobenius_sq, rel=1e-10)
