"""The measured choice among ways to solve on a device, and padded batched solves (CUDA's paths, run
here on the CPU: the choice is keyed by the device's model, "cpu" here)."""
from __future__ import annotations

from functools import partial

import pytest
import torch

from dse_monitor.functional import backend, device_eigen
from dse_monitor.functional.device_eigen import (accurate_ways, batched_eigvals, choose_way, proxy_kernels,
                                                 size_groups, solve_as)
from dse_monitor.functional.kernel import diffusion_kernel
from dse_monitor.functional.spectrum import entropy_of_spectrum, symmetric_eigvals

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _fresh_choices():
    backend.reset()
    yield
    backend.reset()


def test_every_way_gives_the_spectrum_of_a_matrix_and_of_a_stack():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 200, 200, generator=g)
    a = a @ a.transpose(-1, -2) / 200
    ref = torch.linalg.eigvalsh(a.double())
    for how in ("torch", "torch64"):
        for m, r in ((a, ref), (a[0], ref[0])):
            vals = solve_as(m, how)
            assert vals.dtype == torch.float32 and vals.shape == r.shape
            assert torch.allclose(vals.double(), r, rtol=0, atol=1e-5 * float(r.abs().max()))


def test_the_choice_is_measured_once_per_kind_and_only_among_accurate_ways():
    first = choose_way(200, torch.float32, 0, CPU)
    key = ("eigvalsh", 200 .bit_length(), "cpu", torch.float32, 2)  # by the device's model, not its index
    assert first in ("torch", "torch64") and backend.choices()[key] == first
    # the same kind later: no new measurement (a proxy that fails would show one)
    assert backend.choose_on_device("eigvalsh", 220, (torch.float32, 2), None, ("torch", "torch64"), CPU) == first
    # Float32's entropy on a kernel is within 1e-6 bits of float64's on the CPU, but not within 1e-13:
    # asked for that, the measurement must keep the float64 solve whichever is faster.
    kernel = proxy_kernels(300, 0, torch.float32, CPU)
    spectra = {how: solve_as(kernel, how) for how in ("torch", "torch64")}
    assert accurate_ways(spectra) == ("torch", "torch64")
    assert accurate_ways(spectra, tolerance=1e-13) == ("torch64",)
    strict = partial(accurate_ways, tolerance=1e-13)
    for n in (300, 600):
        chosen = backend.choose_on_device("eigvalsh-strict", n, (), lambda m: partial(solve_as, proxy_kernels(m, 0, torch.float32, CPU)),
                                          ("torch", "torch64"), CPU, admissible=strict)
        assert chosen == "torch64"


def test_a_large_matrix_takes_the_way_measured_on_a_capped_proxy(monkeypatch):
    monkeypatch.setattr(device_eigen, "PROXY_MAX_N", 256)
    way = choose_way(1000, torch.float32, 0, CPU)  # measured on 256 rows, under 256's size class
    solves = {k: v for k, v in backend.choices().items() if k[0] == "eigvalsh"}  # (the proxy's kernel chose its product too)
    assert solves == {("eigvalsh", 256 .bit_length(), "cpu", torch.float32, 2): way}
    before = backend.choices()
    assert choose_way(3000, torch.float32, 0, CPU) == way and backend.choices() == before  # no new measurement


def test_a_way_that_cannot_run_here_is_no_choice():
    # CuPy is not installed here: its way raises inside the measurement and is left out.
    assert device_eigen._cupy() is None
    chosen = backend.choose_on_device("eigvalsh-cupy", 128, (), lambda m: partial(solve_as, proxy_kernels(m, 0, torch.float64, CPU)),
                                      ("cupy", "torch"), CPU, admissible=accurate_ways)
    assert chosen == "torch"


def test_sizes_share_a_padded_call_only_within_the_pad_ratio():
    assert size_groups([5, 7, 5, 9, 7, 5], pad=False) == [(9, [3]), (7, [1, 4]), (5, [0, 2, 5])]
    assert size_groups([1000, 950, 1000, 1040, 700], pad=True) == [(1040, [3, 0, 2, 1]), (700, [4])]
    assert size_groups([100, 91], pad=True) == [(100, [0, 1])]  # 91 x 1.1 >= 100: padded by 9 rows
    assert size_groups([100, 90], pad=True) == [(100, [0]), (90, [1])]  # 90 x 1.1 < 100


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_padded_batched_solves_give_each_kernels_spectrum_and_entropy(dtype):
    # DSMI's unequal groups: kernels of nearby sizes padded into one call. A kernel's spectrum has
    # many eigenvalues near 0, the ones the padding's zeros could be confused with.
    g = torch.Generator().manual_seed(1)
    mats = []
    for size in (120, 125, 120, 130, 80, 119):  # all but 80 within 1.1x of 130
        z = torch.randn(size, 6, generator=g, dtype=torch.float64)
        mats.append(diffusion_kernel(z, 1.5).to(dtype))
    calls = []

    def solve(stack):
        calls.append(tuple(stack.shape))
        return symmetric_eigvals(stack)

    padded = batched_eigvals(mats, solve, free_bytes=2**30, pad=True)
    assert calls == [(5, 130, 130), (1, 80, 80)]
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    for m, lam in zip(mats, padded):
        alone = symmetric_eigvals(m)
        assert lam.shape == alone.shape and lam.dtype == dtype
        assert bool((lam[1:] >= lam[:-1]).all())
        torch.testing.assert_close(lam.double(), alone.double(), rtol=0, atol=tol)
        assert abs(float(entropy_of_spectrum(lam.double()) - entropy_of_spectrum(alone.double()))) < 10 * tol
    calls.clear()
    by_size = batched_eigvals(mats, solve, free_bytes=2**30, pad=False)
    assert calls == [(1, 130, 130), (1, 125, 125), (2, 120, 120), (1, 119, 119), (1, 80, 80)]
    for a, b in zip(padded, by_size):
        torch.testing.assert_close(a.double(), b.double(), rtol=0, atol=tol)
    # a quarter of the free memory bounds each call: three padded kernels of 130 rows per call here
    calls.clear()
    batched_eigvals(mats, solve, free_bytes=4 * 3 * 3 * 130 * 130 * mats[0].element_size(), pad=True)
    assert calls == [(3, 130, 130), (2, 130, 130), (1, 80, 80)]


def test_whether_padding_pays_is_measured_once_and_kept():
    first = device_eigen.padding_pays(100, torch.float64, CPU)
    assert isinstance(first, bool)
    assert any(k[0] == "eigvalsh-padded" for k in backend.choices())
    assert device_eigen.padding_pays(110, torch.float64, CPU) == first
