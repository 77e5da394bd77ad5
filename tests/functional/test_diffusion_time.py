"""DSE(t) from one spectrum equals separate solves; the knee; the log10 spectrum."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from dse_monitor.functional import (
    diffusion_eigenvalues,
    diffusion_spectral_entropy,
    diffusion_time_knee,
    entropy_curve,
    entropy_of_spectrum,
    knee_of_curve,
    log_spectrum,
    median_pairwise_distance,
)


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return torch.tensor(load_digits().data[:250], dtype=torch.float64)


@pytest.mark.parametrize("scale", [0.5, 1.0, 3.0])  # sigma = median / scale: from smooth to spread
def test_curve_equals_separate_exact_solves_at_each_t(digits, scale):
    sigma = median_pairwise_distance(digits) / scale
    ts = [1, 2, 3, 5, 8, 13, 21, 34, 55, 100, 0.5, 1.5]
    curve = entropy_curve(diffusion_eigenvalues(digits, sigma), ts)
    separate = torch.stack([diffusion_spectral_entropy(digits, sigma, t) for t in ts])
    assert curve.shape == (len(ts),)
    assert float((curve - separate).abs().max()) < 1e-10
    assert float(curve[0] - curve[1]) > 0.01  # a real curve: DSE falls with t


def test_curve_of_a_batch_of_spectra_and_of_one_point(digits):
    spectra = torch.stack([diffusion_eigenvalues(digits, s) for s in (20.0, 40.0)])
    curve = entropy_curve(spectra, [1, 4])
    assert curve.shape == (2, 2)
    for i in range(2):
        for j, t in enumerate((1, 4)):
            assert float(curve[i, j]) == pytest.approx(float(entropy_of_spectrum(spectra[i], t)), abs=1e-12)
    assert entropy_curve(torch.ones(1, dtype=torch.float64), [1, 2]).tolist() == [0.0, 0.0]
    assert entropy_curve(np.array([1.0, 0.0]), [1]).dtype == torch.float64  # numpy in, float64 out


def test_knee_is_an_int_in_range_and_depends_only_on_the_spectrum(digits):
    lam = diffusion_eigenvalues(digits, median_pairwise_distance(digits) / 2)
    t = diffusion_time_knee(lam, t_max=60)
    assert type(t) is int and 2 <= t <= 59
    assert diffusion_time_knee(lam.clone(), t_max=60) == t  # same spectrum, same t: safe to freeze
    curve = entropy_curve(lam, range(1, 61))
    assert knee_of_curve(range(1, 61), curve) == t
    # DSE(t) has bent by the knee: the slope after it is much flatter than before it.
    before = float(curve[0] - curve[t - 1]) / (t - 1)
    after = float(curve[t - 1] - curve[-1]) / (60 - t)
    assert after < 0.5 * before


def test_knee_of_a_broken_line_is_the_break_and_survives_affine_rescaling():
    ts = list(range(1, 41))
    values = [30 - 3 * t if t <= 12 else 30 - 36 - 0.2 * (t - 12) for t in ts]
    assert knee_of_curve(ts, values) == 12
    assert knee_of_curve(ts, [1e-3 * v + 7 for v in values]) == 12
    assert knee_of_curve(torch.tensor(ts, dtype=torch.float64), torch.tensor(values)) == 12
    assert knee_of_curve([2 * t for t in ts], values) == 24  # returns the t, not the index


def test_a_flat_curve_gives_the_first_t():
    far = torch.eye(20, dtype=torch.float64) * 100  # every eigenvalue 1: DSE(t) = log2 20 for all t
    lam = diffusion_eigenvalues(far, sigma=1.0)
    assert torch.allclose(entropy_curve(lam, [1, 50]), torch.full((2,), math.log2(20), dtype=torch.float64))
    assert diffusion_time_knee(lam, t_max=30) == 1


def test_log_spectrum_shows_the_structure_a_linear_axis_hides(digits):
    lam = diffusion_eigenvalues(digits, median_pairwise_distance(digits))
    logs = log_spectrum(lam)
    assert float(logs.max()) == pytest.approx(0.0, abs=1e-12)  # the stationary mode, lambda = 1
    assert float(logs.min()) >= -16.0
    # On a linear axis most of the spectrum is one bin at 0; in log10 it spreads over decades.
    linear_bin_at_zero = float((lam.abs() < 0.05).double().mean())
    decades = torch.unique(logs.floor()).numel()
    assert linear_bin_at_zero > 0.8 and decades >= 5
    assert log_spectrum(torch.tensor([0.0, 1e-30]), floor=1e-8).tolist() == [-8.0, -8.0]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: entropy_curve(torch.tensor([]), [1]), "non-empty spectrum"),
        (lambda: entropy_curve(torch.tensor([1.0, float("nan")]), [1]), "NaN or Inf"),
        (lambda: entropy_curve(torch.tensor([1.0, 0.5]), []), "non-empty list"),
        (lambda: entropy_curve(torch.tensor([1.0, 0.5]), [1, 0]), "positive finite"),
        (lambda: entropy_curve(torch.tensor([1.0, 0.5]), [1, float("inf")]), "positive finite"),
        (lambda: diffusion_time_knee(torch.tensor([1.0, 0.5]), t_max=0), "t_max must be an integer >= 3"),
        (lambda: diffusion_time_knee(torch.tensor([1.0, 0.5]), t_max=2), "t_max must be an integer >= 3"),
        (lambda: diffusion_time_knee(torch.tensor([1.0, 0.5]), t_max=10.0), "t_max"),
        (lambda: diffusion_time_knee(torch.ones(2, 3), t_max=10), "one spectrum"),
        (lambda: knee_of_curve([1, 2], [3.0, 2.0]), "at least 3 points"),
        (lambda: knee_of_curve([1, 2, 3], [3.0, 2.0]), "one length"),
        (lambda: knee_of_curve([1, 3, 2], [3.0, 2.0, 1.0]), "strictly increasing"),
        (lambda: knee_of_curve([0, 1, 2], [3.0, 2.0, 1.0]), "positive integers"),
        (lambda: knee_of_curve([1.0, 1.5, 2.0], [3.0, 2.0, 1.0]), "integer"),
        (lambda: knee_of_curve([1, 2, 3], [3.0, float("nan"), 1.0]), "NaN"),
        (lambda: log_spectrum(torch.tensor([1.0]), floor=0.0), "floor"),
    ],
)
def test_bad_input_is_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()
