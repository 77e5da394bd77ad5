"""Properties of the core beyond parity: range, dtypes, devices, gradients, caching."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import dse_monitor as dm


def clustered(n=400, d=32, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(8, d, generator=g, dtype=dtype) * 6
    labels = torch.randint(0, 8, (n,), generator=g)
    return centers[labels] + torch.randn(n, d, generator=g, dtype=dtype), labels


def test_dse_lies_between_zero_and_log2_n_and_grows_with_sigma_inverse():
    z, _ = clustered()
    values = [float(dm.diffusion_spectral_entropy(z, sigma=s)) for s in (100.0, 10.0, 3.0, 1.0, 0.1)]
    assert all(0 <= v <= math.log2(len(z)) + 1e-9 for v in values)
    assert values == sorted(values)  # smaller bandwidth, more separated points, higher entropy


def test_eigenvalues_are_descending_in_unit_interval_and_start_at_one():
    z, _ = clustered(200)
    lam = dm.diffusion_eigenvalues(z, sigma=5.0)
    assert lam.shape == (200,)
    assert torch.all(lam[:-1] >= lam[1:])
    assert abs(float(lam[0]) - 1.0) < 1e-10
    assert float(lam.min()) > -1e-10 and float(lam.max()) < 1 + 1e-10
    # the spectrum of the symmetric kernel is that of the row-stochastic P = Q^-1 G
    d = torch.cdist(z, z) ** 2
    g = torch.exp(-d / 50.0)
    p = g / g.sum(1, keepdim=True)
    ev = torch.linalg.eigvals(p).real.sort(descending=True).values
    assert torch.allclose(ev, lam, atol=1e-9)


@pytest.mark.parametrize("sigma", [10.0, "sqrt_dim", "median"])
def test_float32_within_1e3_bits_of_float64(sigma):
    z, y = clustered(600, 64, seed=1)
    z = z * 2
    h64 = dm.diffusion_spectral_entropy(z, sigma=sigma)
    h32 = dm.diffusion_spectral_entropy(z, sigma=sigma, dtype=torch.float32)
    assert h32.dtype == torch.float32
    assert abs(float(h32) - float(h64)) < 1e-3
    m64 = dm.diffusion_spectral_mutual_information(z, y, sigma=sigma)
    m32 = dm.diffusion_spectral_mutual_information(z, y, sigma=sigma, dtype=torch.float32)
    assert abs(float(m32) - float(m64)) < 1e-3


def test_float32_with_large_offsets_stays_accurate():
    # Features far from the origin: centring keeps float32 distances accurate.
    z, _ = clustered(300, 16, seed=2)
    shifted = z + 1e4
    h64 = float(dm.diffusion_spectral_entropy(z, sigma=5.0))
    assert abs(float(dm.diffusion_spectral_entropy(shifted.float(), sigma=5.0, dtype=torch.float32)) - h64) < 1e-3


def test_float32_conditional_terms_of_far_apart_classes_stay_accurate():
    # Each class's kernel is built on the class's own mean: with classes 300 spreads apart
    # (and 1,500 from the origin), centring on the global mean cost float32 ~1.4e-4 bits.
    g = torch.Generator().manual_seed(0)
    y = torch.arange(400) // 100
    centers = torch.nn.functional.normalize(torch.randn(4, 16, generator=g, dtype=torch.float64), dim=1)
    z = 300 * centers[y] + torch.randn(400, 16, generator=g, dtype=torch.float64) + 1500
    t64 = dm.diffusion_spectral_mutual_information_terms(z, y, sigma=4.0)
    t32 = dm.diffusion_spectral_mutual_information_terms(z, y, sigma=4.0, dtype=torch.float32)
    assert float((t32.conditional.double() - t64.conditional).abs().max()) < 3e-5


@pytest.mark.parametrize("spread", [1e-6, 3e-3, 3e-2])
def test_float32_of_a_nearly_collapsed_representation_is_solved_again_in_float64(spread):
    # DSE near 0: N - 1 eigenvalues at float32's rounding floor carried 1.5e-4 (spread 1e-6),
    # 1.2e-4 (3e-3) and 2.6e-5 bits (3e-2) of float32 error at N = 1,000; the retry leaves ~1e-10.
    z = torch.randn(1000, 256, generator=torch.Generator().manual_seed(0)) * spread
    y = torch.arange(1000) % 4
    h64 = float(dm.diffusion_spectral_entropy(z.double(), 10.0))
    res = dm.diffusion_spectral_entropy_details(z, 10.0, dtype=torch.float32)
    assert res.value.dtype == torch.float32 and abs(float(res.value) - h64) < 1e-6
    t64 = dm.diffusion_spectral_mutual_information_terms(z.double(), y, sigma=10.0)
    t32 = dm.diffusion_spectral_mutual_information_terms(z, y, sigma=10.0, dtype=torch.float32)
    assert float((t32.conditional.double() - t64.conditional).abs().max()) < 1e-6
    assert abs(float(t32.value) - float(t64.value)) < 1e-6
    assert not dm.functional.spectrum.at_float32_floor(torch.linspace(1, 0.01, 100))  # a spread spectrum
    spread_out = torch.randn(1000, 256, generator=torch.Generator().manual_seed(0)) * 0.3  # small but real eigenvalues
    assert not dm.diffusion_spectral_entropy_details(spread_out, 10.0, dtype=torch.float32) \
        .eigenvalues.dtype == torch.float64


@pytest.mark.parametrize("dtype, sigma", [(torch.float32, 1e-18), (torch.float64, 1.5e-154)])
def test_tiny_sigma_that_passes_the_bandwidth_check_gives_separated_points(dtype, sigma):
    # Just above the underflow threshold: every point is its own cluster, DSE = log2 N, DSMI = 0.
    z = torch.randn(50, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 10
    assert abs(float(dm.diffusion_spectral_entropy(z, sigma=sigma, dtype=dtype)) - math.log2(50)) < 1e-5
    assert float(dm.diffusion_spectral_mutual_information(z, torch.arange(50) % 2, sigma=sigma, dtype=dtype)) == 0


def test_numpy_and_torch_inputs_agree_and_results_are_0dim_tensors():
    z, y = clustered(150, 8)
    a = dm.diffusion_spectral_entropy(z.numpy(), sigma=4.0)
    b = dm.diffusion_spectral_entropy(z, sigma=4.0)
    assert isinstance(a, torch.Tensor) and a.ndim == 0 and float(a) == float(b)
    m1 = dm.diffusion_spectral_mutual_information(z.numpy(), y.numpy(), sigma=4.0)
    m2 = dm.diffusion_spectral_mutual_information(z, y, sigma=4.0)
    assert float(m1) == float(m2)


def test_resolve_sigma_choices():
    z = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    assert dm.resolve_sigma("sqrt_dim", z) == math.sqrt(2)
    assert dm.resolve_sigma("median", z) == pytest.approx(5.0)
    assert dm.resolve_sigma(2, z) == 2.0


def test_dse_is_differentiable():
    z, _ = clustered(60, 4)
    z = z.clone().requires_grad_(True)
    h = dm.diffusion_spectral_entropy(z, sigma=3.0)
    (grad,) = torch.autograd.grad(h, z)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # the gradient is the true derivative: compare with a finite difference
    direction = torch.randn_like(z)
    eps = 1e-6
    with torch.no_grad():
        up = dm.diffusion_spectral_entropy(z + eps * direction, sigma=3.0)
        down = dm.diffusion_spectral_entropy(z - eps * direction, sigma=3.0)
    numeric = (up - down) / (2 * eps)
    assert float(numeric) == pytest.approx(float((grad * direction).sum()), rel=1e-4, abs=1e-7)


def test_gradient_ascent_on_dse_spreads_points():
    z = (torch.randn(40, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.5).requires_grad_()
    opt = torch.optim.SGD([z], lr=0.5)
    start = float(dm.diffusion_spectral_entropy(z.detach(), sigma=1.0))
    for _ in range(20):
        opt.zero_grad()
        (-dm.diffusion_spectral_entropy(z, sigma=1.0)).backward()
        opt.step()
    assert float(dm.diffusion_spectral_entropy(z.detach(), sigma=1.0)) > start + 0.5


def test_kernel_does_not_modify_input_and_matches_formula():
    z, _ = clustered(50, 3)
    before = z.clone()
    k = dm.diffusion_kernel(z, 2.0)
    assert torch.equal(z, before)
    g = torch.exp(-torch.cdist(z, z) ** 2 / 8.0)
    q = g.sum(1)
    assert torch.allclose(k, g / torch.sqrt(q[:, None] * q[None, :]), atol=1e-12)
    assert torch.allclose(k, k.T)


def test_mutual_information_is_high_for_informative_labels_and_near_zero_for_random():
    z, y = clustered(400, 16, seed=3)
    informative = float(dm.diffusion_spectral_mutual_information(z, y, sigma=6.0))
    rnd = y[torch.randperm(400, generator=torch.Generator().manual_seed(1))]
    noise = float(dm.diffusion_spectral_mutual_information(z, rnd, sigma=6.0))
    assert informative > 1.0
    assert abs(noise) < 0.2


def test_mutual_information_serial_and_threaded_solves_agree():
    z, y = clustered(300, 8, seed=5)
    threaded = dm.diffusion_spectral_mutual_information(z, y, sigma=4.0)
    torch.set_num_threads(1)
    serial = dm.diffusion_spectral_mutual_information(z, y, sigma=4.0)
    assert abs(float(threaded) - float(serial)) < 1e-10


def test_a_memory_error_leaves_no_solve_running(monkeypatch):
    # The real memory guard with a limit between what 500 and 900 points need: the two
    # 500-point groups are submitted before the 900-point group fails its check.
    import time

    import dse_monitor.functional.subset_entropies as mi
    from dse_monitor.functional.operator import check_exact_fits, exact_bytes

    limit = (exact_bytes(500, torch.float64) + exact_bytes(900, torch.float64)) // 2
    monkeypatch.setattr(mi, "check_exact_fits", lambda n, dtype, device: check_exact_fits(n, dtype, device, limit))
    finished = []
    solve = mi.symmetric_eigvals

    def recording_solve(k):
        lam = solve(k)
        finished.append(k.shape[0])
        return lam

    monkeypatch.setattr(mi, "symmetric_eigvals", recording_solve)
    torch.set_num_threads(2)
    groups = torch.tensor([0] * 500 + [1] * 500 + [2] * 900 + [3] * 100)
    z = torch.randn(2000, 8, dtype=torch.float64)
    with pytest.raises(MemoryError, match="N=900"):
        dm.diffusion_spectral_mutual_information(z, groups=groups, sigma=2.0)
    done_at_raise = list(finished)
    time.sleep(0.3)
    assert finished == done_at_raise  # nothing was left running behind the error


def test_the_solver_pool_leaves_torch_thread_counts_as_they_were():
    # In a fresh process: the pool's workers solve single-threaded, but the caller and any
    # thread started later keep torch's thread count (the monitor must not slow training).
    import subprocess
    import sys

    script = """
import threading, torch
torch.set_num_threads(2)
import dse_monitor as dm
z = torch.randn(300, 8, dtype=torch.float64)
dm.diffusion_spectral_mutual_information(z, torch.arange(300) % 3, sigma=2.0)
from dse_monitor.functional.spectrum import solver_pool
workers = {f.result() for f in [solver_pool().submit(torch.get_num_threads) for _ in range(4)]}
later = []
t = threading.Thread(target=lambda: later.append(torch.get_num_threads())); t.start(); t.join()
print(torch.get_num_threads(), sorted(workers), later[0])
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["2", "[1]", "2"]


def test_reference_groups_for_images_flattens_and_clusters():
    g = torch.Generator().manual_seed(0)
    imgs = torch.cat([torch.randn(30, 1, 4, 4, generator=g) + 5 * i for i in range(3)])
    groups = dm.reference_groups(imgs, n_clusters=3)
    assert groups.shape == (90,) and groups.dtype == torch.int64
    # each true block falls into a single cluster
    for i in range(3):
        assert len(set(groups[30 * i: 30 * (i + 1)].tolist())) == 1
    assert len(set(groups.tolist())) == 3


def test_groups_bypass_reference_and_seed_changes_only_the_unconditional_draws():
    z, y = clustered(200, 8, seed=6)
    ta = dm.diffusion_spectral_mutual_information_terms(z, groups=y, sigma=3.0, seed=0)
    a = ta.value
    tb = dm.diffusion_spectral_mutual_information_terms(z, groups=y, sigma=3.0, seed=1)
    b = tb.value
    assert torch.equal(ta.conditional, tb.conditional)
    assert not torch.equal(ta.unconditional_draws, tb.unconditional_draws)
    assert abs(float(a) - float(b)) < 0.1  # seed-to-seed spread is small


def test_cse_saturates_in_high_dimension_while_dse_does_not():
    z, _ = clustered(256, 200, seed=7)
    assert float(dm.classic_shannon_entropy(z)) == pytest.approx(8.0, abs=1e-6)
    assert float(dm.diffusion_spectral_entropy(z, sigma="sqrt_dim")) < 7.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_inputs_give_cuda_results():
    z, y = clustered(200, 8)
    h = dm.diffusion_spectral_entropy(z.cuda(), sigma=4.0, dtype=torch.float32)
    assert h.device.type == "cuda"
    assert abs(float(h) - float(dm.diffusion_spectral_entropy(z, sigma=4.0))) < 1e-3
    m = dm.diffusion_spectral_mutual_information(z.cuda(), y.cuda(), sigma=4.0)
    assert m.device.type == "cuda"
