"""torch's and numpy's libraries give the same values, and the per-machine choice is stable.

What is proven here:
- the eigen-solve and the distance product give the same numbers (to rounding) with
  either library, and DSE / DSMI agree to 1e-10 bits whichever is used;
- a choice is made once per kind and kept: repeated calls are bit-identical;
- the kernel products in the transposed layout equal ``K @ X`` (dense and streamed);
- tensors that need a gradient never leave torch.
"""
from __future__ import annotations

import pytest
import torch

import dse_monitor as dm
from dse_monitor.functional import backend
from dse_monitor.functional.kernel import diffusion_kernel, squared_distances
from dse_monitor.functional.operator import KernelOperator
from dse_monitor.functional.spectrum import symmetric_eigvals


def _clustered(n: int, d: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(5, d, generator=g, dtype=torch.float64) * 3
    return centers[torch.randint(0, 5, (n,), generator=g)] + torch.randn(n, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_both_libraries_give_the_same_spectrum_and_distances(dtype):
    z = _clustered(300).to(dtype)
    with backend.forced("torch"):
        d_torch = squared_distances(z)
        lam_torch = symmetric_eigvals(diffusion_kernel(z, 3.0))
    with backend.forced("numpy"):
        d_numpy = squared_distances(z)
        lam_numpy = symmetric_eigvals(diffusion_kernel(z, 3.0))
    assert d_numpy.dtype == d_torch.dtype == lam_numpy.dtype == dtype
    tol = 1e-10 if dtype == torch.float64 else 1e-3
    torch.testing.assert_close(d_numpy, d_torch, rtol=tol, atol=tol * float(d_torch.max()))
    assert torch.equal(d_numpy.diagonal(), torch.zeros(300, dtype=dtype))
    torch.testing.assert_close(lam_numpy, lam_torch, rtol=0, atol=1e-12 if dtype == torch.float64 else 1e-5)


def test_dse_and_dsmi_agree_to_1e_10_bits_whichever_library_solves():
    z = _clustered(600)
    labels = torch.arange(600) % 3
    with backend.forced("torch"):
        h_torch = float(dm.diffusion_spectral_entropy(z, 3.0))
        mi_torch = float(dm.diffusion_spectral_mutual_information(z, labels, sigma=3.0))
    with backend.forced("numpy"):
        h_numpy = float(dm.diffusion_spectral_entropy(z, 3.0))
        mi_numpy = float(dm.diffusion_spectral_mutual_information(z, labels, sigma=3.0))
    assert h_numpy == pytest.approx(h_torch, abs=1e-10)
    assert mi_numpy == pytest.approx(mi_torch, abs=1e-10)


def test_the_choice_is_made_once_and_repeated_calls_are_identical():
    z = _clustered(700)
    first = dm.diffusion_spectral_entropy(z, 3.0)
    chosen = backend.choices()
    kinds = [k for k in chosen if k[0] == "eigvalsh" and k[1] == (700).bit_length() and k[-1] == torch.float64]
    assert kinds and all(chosen[k] in ("torch", "numpy") for k in kinds)
    for _ in range(3):
        assert torch.equal(dm.diffusion_spectral_entropy(z, 3.0), first)
    assert backend.choices() == chosen


def test_transposed_products_equal_k_times_x():
    z = _clustered(400)
    x = torch.randn(400, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    dense = KernelOperator.build(z, 3.0)
    streamed = KernelOperator.build(z, 3.0, streamed=True, block_size=96)
    expected = diffusion_kernel(z, 3.0) @ x
    torch.testing.assert_close(dense.matmat(x), expected, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(streamed.matmat(x), expected, rtol=1e-10, atol=1e-12)
    f32 = KernelOperator.build(z, 3.0, dtype=torch.float32)
    out = f32.matmat(x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_tensors_that_need_a_gradient_stay_in_torch():
    z = _clustered(200).requires_grad_(True)
    with backend.forced("numpy"):
        h = dm.diffusion_spectral_entropy(z, 3.0)
    h.backward()
    assert z.grad is not None and bool(torch.isfinite(z.grad).all())
    assert not backend.eligible(z) and backend.eligible(z.detach())
