"""Subsets that share rows build their Gram on an earlier subset's, with the same spectrum.

What is proven here:
- the reference's draws of different sizes are planned on earlier ones (a first draw is
  nested in a larger one; later draws share most rows), and every kernel built that way,
  with or without new rows, has the spectrum of the kernel built from the subset alone;
- a base outside the factored form's range leaves its subsets to be built alone;
- the memory budget caps the bases;
- DSMI through this path equals the reference package (tests/functional/test_parity.py).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import dse_monitor as dm
from dse_monitor.functional import subset_grams
from dse_monitor.functional.kernel import diffusion_kernel
from dse_monitor.functional.mutual_information import _draws
from dse_monitor.functional.subset_grams import SharedGrams


def _features(n: int, d: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(4, d, generator=g, dtype=torch.float64) * 2
    z = centers[torch.randint(0, 4, (n,), generator=g)] + torch.randn(n, d, generator=g, dtype=torch.float64)
    return z.to(dtype)


def _reference_draws(n: int, sizes: tuple[int, ...], reps: int = 4) -> list[np.ndarray]:
    return [s for k in sizes for s in _draws(n, k, reps, 0, None)]


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_kernels_built_on_earlier_draws_have_the_spectrum_of_the_subset_alone(dtype, atol):
    x = _features(800, 24, dtype)
    grams = SharedGrams(x, sigma=5.0)
    subsets = _reference_draws(800, (150, 170, 160, 140))
    plans = [grams.plan(s) for s in subsets]
    roles = [p.role for p in plans]
    assert roles[:4] == ["base"] * 4  # the first size: nothing to build on yet
    assert roles.count("dependent") >= 8  # every first draw of the later sizes at least
    with_new_rows = 0
    for s, plan in zip(subsets, plans):
        k = grams.kernel(s, plan)
        assert k is not None and k.dtype == dtype and k.shape == (len(s), len(s))
        expected = torch.linalg.eigvalsh(diffusion_kernel(x[torch.from_numpy(s)], 5.0))
        torch.testing.assert_close(torch.linalg.eigvalsh(k), expected, rtol=0, atol=atol)
        if plan.role == "dependent":
            base = plan.base.result()
            with_new_rows += int(not np.isin(s, base.rows).all())
    assert 0 < with_new_rows < roles.count("dependent")  # both ways of building were checked


def test_a_base_outside_the_factored_range_leaves_its_subsets_to_be_built_alone():
    # |b|^2 / 2 = 50 at the two far clusters: beyond float32's range for exp(b_i.b_j)
    x = torch.zeros(300, 2, dtype=torch.float32)
    x[::2, 0], x[1::2, 0] = -10.0, 10.0
    grams = SharedGrams(x, sigma=1.0)
    t, s = np.arange(0, 200), np.arange(10, 200)
    pt, ps = grams.plan(t), grams.plan(s)
    assert (pt.role, ps.role) == ("base", "dependent")
    assert grams.kernel(t, pt) is None and pt.base.result() is None
    assert grams.kernel(s, ps) is None
    mi64 = float(dm.diffusion_spectral_mutual_information(x.double(), torch.arange(300) % 3, sigma=1.0))
    mi32 = float(dm.diffusion_spectral_mutual_information(x, torch.arange(300) % 3, sigma=1.0))
    assert np.isfinite(mi32) and abs(mi32 - mi64) < 1e-4


def test_the_budget_caps_the_bases(monkeypatch):
    x = _features(400, 8, torch.float64)
    one_base = (100 * 8 + 100 * 100) * 8
    monkeypatch.setattr(subset_grams, "BUDGET_BYTES", one_base)
    grams = SharedGrams(x, sigma=3.0)
    assert grams.plan(np.arange(0, 100)).role == "base"
    assert grams.plan(np.arange(200, 300)) is None  # no overlap, and no room for a second base
    assert grams.plan(np.arange(10, 100)).role == "dependent"


def test_small_subsets_are_built_alone():
    grams = SharedGrams(_features(200, 4, torch.float64), sigma=2.0)
    assert grams.plan(np.arange(subset_grams.MIN_ROWS - 1)) is None
