"""Subsets that share rows build their Gram on an earlier subset's, with the same spectrum.

What is proven here:
- the reference's draws of different sizes are planned on earlier ones (a first draw is
  nested in a larger one; later draws share most rows), disjoint groups are not made
  bases, and every kernel built that way, with or without new rows, has the spectrum of
  the kernel built from the subset alone;
- a base outside the factored form's range, or one whose job never ran, leaves its
  subsets to be built alone; abandoning a base whose job ran changes nothing; a base's
  Gram is let go once its subsets have it;
- the memory budget caps the bases;
- DSMI through this path equals the reference package (tests/functional/test_parity.py)
  and gives the same value on one thread as in the solver pool.
"""
from __future__ import annotations

import gc
import weakref

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


def _groups_then_draws(n: int, sizes: tuple[int, ...], reps: int = 4) -> list[np.ndarray]:
    groups = [np.arange(start, n, 4) for start in range(4)]  # disjoint, like DSMI's class members
    return groups + [s for k in sizes for s in _draws(n, k, reps, 0, None)]


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_kernels_built_on_earlier_draws_have_the_spectrum_of_the_subset_alone(dtype, atol):
    x = _features(800, 24, dtype)
    grams = SharedGrams(x, sigma=5.0)
    subsets = _groups_then_draws(800, (150, 170, 160, 140))
    plans = grams.plan(subsets)
    assert plans[:4] == [None] * 4  # disjoint groups: nothing builds on them
    roles = [p.role if p else None for p in plans]
    assert roles[4:8] == ["base"] * 4  # the first size's draws: the later sizes build on them
    assert roles.count("dependent") >= 8  # every first draw of the later sizes at least
    with_new_rows = 0
    for s, plan in zip(subsets, plans):
        if plan is None:
            continue
        if plan.role == "dependent":
            with_new_rows += int(not np.isin(s, plan.slot._future.result().rows).all())
        k = grams.kernel(s, plan)
        assert k is not None and k.dtype == dtype and k.shape == (len(s), len(s))
        expected = torch.linalg.eigvalsh(diffusion_kernel(x[torch.from_numpy(s)], 5.0))
        torch.testing.assert_close(torch.linalg.eigvalsh(k), expected, rtol=0, atol=atol)
    assert 0 < with_new_rows < roles.count("dependent")  # both ways of building were checked


def test_a_base_gram_is_let_go_once_its_subsets_have_it():
    x = _features(400, 8, torch.float64)
    grams = SharedGrams(x, sigma=3.0)
    t, s1, s2 = np.arange(0, 200), np.arange(10, 200), np.arange(0, 190)
    pt, p1, p2 = grams.plan([t, s1, s2])
    assert (pt.role, p1.role, p2.role) == ("base", "dependent", "dependent")
    grams.kernel(t, pt)
    held = weakref.ref(pt.slot._future.result().gram)
    grams.kernel(s1, p1)
    gc.collect()
    assert held() is not None  # s2 still needs it
    grams.kernel(s2, p2)
    gc.collect()
    assert held() is None


def test_a_base_outside_the_factored_range_leaves_its_subsets_to_be_built_alone():
    # ||b||^2 = 100 at the two far clusters: beyond float32's range for the factored form
    x = torch.zeros(300, 2, dtype=torch.float32)
    x[::2, 0], x[1::2, 0] = -10.0, 10.0
    grams = SharedGrams(x, sigma=1.0)
    t, s = np.arange(0, 200), np.arange(10, 200)
    pt, ps = grams.plan([t, s])
    assert (pt.role, ps.role) == ("base", "dependent")
    assert grams.kernel(t, pt) is None
    assert grams.kernel(s, ps) is None
    mi64 = float(dm.diffusion_spectral_mutual_information(x.double(), torch.arange(300) % 3, sigma=1.0))
    mi32 = float(dm.diffusion_spectral_mutual_information(x, torch.arange(300) % 3, sigma=1.0))
    assert np.isfinite(mi32) and abs(mi32 - mi64) < 1e-4


def test_a_base_abandoned_after_its_job_ran_is_a_no_op():
    # The solver pool calls abandon when every base job ends: after the base published its
    # Gram (its subsets may not have taken it yet) and after the last one took it.
    grams = SharedGrams(_features(400, 8, torch.float64), sigma=3.0)
    t, s1, s2 = np.arange(0, 200), np.arange(10, 200), np.arange(0, 190)
    pt, p1, p2 = grams.plan([t, s1, s2])
    assert (pt.role, p1.role, p2.role) == ("base", "dependent", "dependent")
    grams.kernel(t, pt)
    published = pt.slot._future.result()
    SharedGrams.abandon(pt)
    assert pt.slot._future.result() is published and pt.slot.users == 2  # the Gram stays for both
    for s, plan in ((s1, p1), (s2, p2)):
        k = grams.kernel(s, plan)
        assert k is not None  # built on the base, not alone
        expected = torch.linalg.eigvalsh(diffusion_kernel(grams.x[torch.from_numpy(s)], 3.0))
        torch.testing.assert_close(torch.linalg.eigvalsh(k), expected, rtol=0, atol=1e-12)
    assert pt.slot._future is None  # let go by the last user
    SharedGrams.abandon(pt)  # nothing left to publish into: no error, nothing held again
    assert pt.slot._future is None and pt.slot.users == 0


def test_the_solver_pool_reports_no_error_from_its_callbacks(caplog):
    if torch.get_num_threads() < 2:
        pytest.skip("the solver pool needs two threads")
    z = _features(900, 16, torch.float64)
    with caplog.at_level("ERROR", logger="concurrent.futures"):
        dm.diffusion_spectral_mutual_information(z, torch.arange(900) % 3, sigma=4.0)
    assert not caplog.records, [r.getMessage() for r in caplog.records]


def test_subsets_of_a_base_that_never_ran_build_alone():
    # what the solver pool does when a base's job is cancelled: its subsets must not wait forever
    grams = SharedGrams(_features(300, 4, torch.float64), sigma=2.0)
    pt, ps = grams.plan([np.arange(0, 200), np.arange(20, 200)])
    SharedGrams.abandon(pt)
    assert grams.kernel(np.arange(20, 200), ps) is None


def test_the_budget_caps_the_bases(monkeypatch):
    x = _features(400, 8, torch.float64)
    one_base = (100 * 8 + 100 * 100) * 8
    monkeypatch.setattr(subset_grams, "BUDGET_BYTES", one_base)
    subsets = [np.arange(0, 100), np.arange(10, 100), np.arange(200, 300), np.arange(210, 300)]
    roles = [p.role if p else None for p in SharedGrams(x, sigma=3.0).plan(subsets)]
    assert roles == ["base", "dependent", None, None]  # no room for a second base


def test_small_subsets_are_built_alone():
    grams = SharedGrams(_features(200, 4, torch.float64), sigma=2.0)
    k = subset_grams.MIN_ROWS - 1
    assert grams.plan([np.arange(k), np.arange(k - 1)]) == [None, None]


def test_dsmi_is_the_same_on_one_thread_as_in_the_solver_pool():
    if torch.get_num_threads() < 2:
        pytest.skip("the solver pool needs two threads")
    z = _features(900, 16, torch.float64)
    y = torch.arange(900) % 3
    pooled = float(dm.diffusion_spectral_mutual_information(z, y, sigma=4.0))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = float(dm.diffusion_spectral_mutual_information(z, y, sigma=4.0))
    finally:
        torch.set_num_threads(threads)
    assert abs(pooled - alone) < 1e-10
