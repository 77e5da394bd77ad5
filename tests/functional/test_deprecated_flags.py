"""The flags that changed a function's return type still work for one release, and warn.

Each old flag returns what it returned before (equal to the new call's result) and emits
a ``DeprecationWarning`` naming the new call; the new calls warn about nothing. The
suite turns these deprecations into errors everywhere else (pyproject's filterwarnings),
so no caller in the package or the tests can keep using them unnoticed.
"""
from __future__ import annotations

import warnings

import pytest
import torch

import dse_monitor as dm


def _clusters(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    return torch.randn(n, 4, generator=g, dtype=torch.float64) + 4 * labels[:, None], labels


def _same_estimate(a, b) -> None:
    assert (a.value, a.std_error, a.lower, a.upper, a.solver, a.rank, a.storage) == (
        b.value, b.std_error, b.lower, b.upper, b.solver, b.rank, b.storage)


def _same_terms(a, b) -> None:
    for field in ("value", "group_ids", "weights", "conditional", "unconditional", "unconditional_draws"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert a.fallback == b.fallback


@pytest.mark.parametrize("solver", ["exact", "lanczos"])
def test_return_bounds_warns_and_returns_the_details_estimate(solver):
    z, _ = _clusters()
    with pytest.warns(DeprecationWarning, match=r"diffusion_spectral_entropy_details\(\.\.\.\)\.estimate"):
        old = dm.diffusion_spectral_entropy(z, 2.0, solver=solver, return_bounds=True)
    new = dm.diffusion_spectral_entropy_details(z, 2.0, solver=solver).estimate
    assert isinstance(old, dm.EntropyEstimate) and old.solver == solver
    _same_estimate(old, new)


def test_return_spectrum_warns_and_returns_the_details():
    z, _ = _clusters()
    with pytest.warns(DeprecationWarning, match=r"use diffusion_spectral_entropy_details\(\.\.\.\) instead"):
        old = dm.diffusion_spectral_entropy(z, 2.0, return_spectrum=True)
    new = dm.diffusion_spectral_entropy_details(z, 2.0)
    assert isinstance(old, dm.DiffusionEntropy)
    assert torch.equal(old.value, new.value) and torch.equal(old.eigenvalues, new.eigenvalues)
    assert (old.solver, old.sigma, old.n, old.fallback) == (new.solver, new.sigma, new.n, new.fallback) == (
        "exact", 2.0, 300, None)


def test_a_flag_passed_as_false_warns_and_returns_the_tensor():
    z, _ = _clusters()
    with pytest.warns(DeprecationWarning, match="diffusion_spectral_entropy_details"):
        old = dm.diffusion_spectral_entropy(z, 2.0, return_spectrum=False)
    assert isinstance(old, torch.Tensor) and torch.equal(old, dm.diffusion_spectral_entropy(z, 2.0))


def test_both_flags_are_still_refused():
    with pytest.raises(ValueError, match="not both"):
        dm.diffusion_spectral_entropy(torch.eye(3), return_bounds=True, return_spectrum=True)


@pytest.mark.parametrize("old_fn, new_fn, kw", [
    (dm.diffusion_spectral_mutual_information, dm.diffusion_spectral_mutual_information_terms, {"sigma": 3.0}),
    (dm.classic_shannon_mutual_information, dm.classic_shannon_mutual_information_terms, {}),
])
def test_return_terms_warns_and_returns_the_value_and_the_terms(old_fn, new_fn, kw):
    z, y = _clusters()
    with pytest.warns(DeprecationWarning, match=rf"use {new_fn.__name__}\(\.\.\.\) instead"):
        value, terms = old_fn(z, y, num_repetitions=2, return_terms=True, **kw)
    new = new_fn(z, y, num_repetitions=2, **kw)
    assert torch.equal(value, new.value)
    _same_terms(terms, new)
    assert torch.equal(old_fn(z, y, num_repetitions=2, **kw), new.value)


def test_the_new_calls_return_one_type_and_warn_about_nothing():
    z, y = _clusters(120)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert isinstance(dm.diffusion_spectral_entropy(z, 2.0, solver="lanczos"), torch.Tensor)
        assert isinstance(dm.diffusion_spectral_entropy_details(z, 2.0), dm.DiffusionEntropy)
        assert isinstance(dm.diffusion_spectral_mutual_information(z, y, sigma=3.0), torch.Tensor)
        assert isinstance(dm.diffusion_spectral_mutual_information_terms(z, y, sigma=3.0), dm.MutualInformationTerms)
        assert isinstance(dm.classic_shannon_mutual_information(z, y), torch.Tensor)
        assert isinstance(dm.classic_shannon_mutual_information_terms(z, y), dm.MutualInformationTerms)


def test_the_warning_points_at_the_caller():
    with pytest.warns(DeprecationWarning) as record:
        dm.diffusion_spectral_entropy(torch.eye(3), return_bounds=True)
    assert record[0].filename == __file__
