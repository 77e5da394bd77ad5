"""Scale diagnostics on real data: the median distance, the median sigma's fallback, the verdict."""
from __future__ import annotations

import math

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from dse_monitor.functional import (
    diffusion_spectral_entropy,
    median_pairwise_distance,
    median_sigma,
    normalised_entropy,
    resolve_sigma,
    scale_diagnosis,
    scale_warning,
)
from dse_monitor.functional.kernel import MEDIAN_SAMPLE, subsample_indices
from dse_monitor.functional.scale import HIGH_RATIO, LOW_RATIO, SCALE_SAMPLE


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """300 of scikit-learn's bundled 8x8 digits as raw pixel vectors (0..16), float64."""
    return torch.tensor(load_digits().data[:300], dtype=torch.float64)


@pytest.fixture(scope="module")
def cnn_features() -> torch.Tensor:
    """Penultimate features of a small CNN at its default (PyTorch) initialisation, on 300 digits."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 32), nn.ReLU()).eval()
    images = torch.tensor(load_digits().images[:300], dtype=torch.float32).unsqueeze(1) / 16.0
    with torch.no_grad():
        return net(images).double()


def brute_force_median(z: torch.Tensor) -> float:
    d = torch.cdist(z, z, compute_mode="donot_use_mm_for_euclid_dist")
    iu = torch.triu_indices(len(z), len(z), offset=1)
    return float(d[iu[0], iu[1]].median())


def test_median_equals_brute_force_on_all_pairs(digits, cnn_features):
    for z in (digits, cnn_features):
        assert median_pairwise_distance(z) == pytest.approx(brute_force_median(z), rel=1e-10)


def test_median_above_max_points_is_the_seeded_sample_and_agrees_with_resolve_sigma(digits):
    sample = digits[subsample_indices(len(digits), 120, seed=3)]
    value = median_pairwise_distance(digits, max_points=120, seed=3)
    assert value == pytest.approx(brute_force_median(sample), rel=1e-10)
    assert value != median_pairwise_distance(digits, max_points=120, seed=4)  # another sample, another median
    # With resolve_sigma's sample size, its sample and formula: the same number as sigma="median".
    big = torch.cat([digits + k for k in range(8)])  # 2,400 rows > 2,000
    assert median_pairwise_distance(big, max_points=MEDIAN_SAMPLE) == resolve_sigma("median", big)
    # The default, cheaper sample (1,000 rows) is within 2% of the median over all pairs.
    assert len(big) > SCALE_SAMPLE
    assert median_pairwise_distance(big) == pytest.approx(brute_force_median(big), rel=0.02)
    # median_sigma's median is this value (same sample): the first sigma_ratio of median_init is exactly 1.
    assert median_sigma(big).median == median_pairwise_distance(big)


def test_median_is_scale_equivariant_and_accepts_float32_and_numpy(digits):
    m = median_pairwise_distance(digits)
    assert median_pairwise_distance(digits * 1e-3) == pytest.approx(m * 1e-3, rel=1e-10)
    assert median_pairwise_distance(digits.float()) == pytest.approx(m, rel=1e-10)  # exact pixels in float32
    assert median_pairwise_distance(digits.numpy()) == m


def test_coinciding_points_give_a_median_of_exactly_zero(digits):
    assert median_pairwise_distance(torch.ones(50, 8, dtype=torch.float32) * 0.3) == 0.0
    # Spread at 1e-12 of the magnitude is rounding (float32 resolves ~1e-7), not a distance.
    assert median_pairwise_distance(1e3 + digits * 1e-12) == 0.0
    # A tiny but real spread is kept: no absolute threshold.
    assert median_pairwise_distance(digits * 1e-9) == pytest.approx(median_pairwise_distance(digits) * 1e-9)


def test_median_sigma_is_the_median_when_it_is_positive(digits):
    choice = median_sigma(digits)
    assert choice.rule == "median" and not choice.fell_back
    assert choice.sigma == choice.median == median_pairwise_distance(digits)
    assert "median pairwise distance" in choice.describe()


def test_median_sigma_falls_back_to_the_median_of_nonzero_distances(digits):
    dead = digits[:1].repeat(250, 1)  # 250 of 300 inputs give the same features: 69% of the pairs coincide
    z = torch.cat([dead, digits[100:150]])
    choice = median_sigma(z)
    d = torch.cdist(z, z, compute_mode="donot_use_mm_for_euclid_dist")
    iu = torch.triu_indices(len(z), len(z), offset=1)
    pair = d[iu[0], iu[1]]
    assert choice.median == 0.0 and choice.rule == "median_nonzero" and choice.fell_back
    assert choice.sigma == pytest.approx(float(pair[pair > 0].median()), rel=1e-10)
    assert "more than half the pairs coincide" in choice.describe()


def test_median_sigma_on_fully_collapsed_features_uses_their_norm_then_sqrt_dim(cnn_features):
    one = cnn_features[:1].repeat(40, 1)
    choice = median_sigma(one)
    assert (choice.rule, choice.median) == ("rms_norm", 0.0)
    assert choice.sigma == pytest.approx(float(cnn_features[0].norm()), rel=1e-12)
    zero = median_sigma(torch.zeros(40, 32))
    assert (zero.rule, zero.sigma) == ("sqrt_dim", math.sqrt(32))
    assert "sqrt(D)" in zero.describe()


def _ratio_and_dse(z: torch.Tensor, sigma: float) -> tuple[float, float]:
    return median_pairwise_distance(z) / sigma, float(diffusion_spectral_entropy(z, sigma))


@pytest.mark.parametrize("which", ["digits", "cnn_features"])
def test_features_far_below_and_far_above_sigma_are_diagnosed(which, request):
    z = request.getfixturevalue(which)
    med = median_pairwise_distance(z)
    n = len(z)
    below = z * (0.02 * 10.0 / med)  # median distance 0.2 under sigma = 10
    ratio, dse = _ratio_and_dse(below, 10.0)
    assert ratio == pytest.approx(0.02)
    assert scale_diagnosis(dse, n, ratio) == "below"
    above = z * (100 * 10.0 / med)  # median distance 1,000 over sigma = 10
    ratio, dse = _ratio_and_dse(above, 10.0)
    assert scale_diagnosis(dse, n, ratio) == "above"
    # The same features at their own scale: no verdict.
    ratio, dse = _ratio_and_dse(z, med)
    assert ratio == 1.0 and scale_diagnosis(dse, n, ratio) is None


def test_a_collapsed_layer_at_a_sensible_scale_is_not_diagnosed(digits):
    # Collapse onto one direction (rank one: the first principal component), sigma at its scale.
    centred = digits - digits.mean(0)
    line = centred @ torch.linalg.svd(centred, full_matrices=False).Vh[:1].T
    sigma = median_pairwise_distance(line)
    ratio, dse = _ratio_and_dse(line, sigma)
    assert scale_diagnosis(dse, len(line), ratio) is None
    # Five sixths of the inputs give identical features: the median is 0 (ratio 0) and DSE small.
    # That is the layer's collapse; a warning about sigma would misname it.
    z = torch.cat([digits[:1].repeat(250, 1), digits[:50] * 1e-3 + digits[0]])
    ratio, dse = _ratio_and_dse(z, 10.0)
    assert ratio == 0.0 and dse < 0.02 * math.log2(len(z))
    assert scale_diagnosis(dse, len(z), ratio) is None
    # In the 2% band but at a ratio inside [1/3, 3]: the features' structure, not the scale.
    assert scale_diagnosis(0.0, 300, 0.5) is None and scale_diagnosis(math.log2(300), 300, 1.5) is None


def test_the_ratio_thresholds_hold_on_real_features(digits, cnn_features):
    # Why 1/3 and 2 (module docstring): at r <= 0.1 DSE sits within 2% of 0 whatever the
    # features; at ratios inside [1/3, 2] none of these sets is within 2% of 0 or of log2 N.
    centred = digits - digits.mean(0)
    plane = centred @ torch.linalg.svd(centred, full_matrices=False).Vh[:2].T
    for z in (digits, cnn_features, plane):
        med, top = median_pairwise_distance(z), math.log2(len(z))
        assert float(diffusion_spectral_entropy(z, med / 0.1)) < 0.02 * top
        for r in (LOW_RATIO, 1.0, HIGH_RATIO):
            assert 0.02 * top < float(diffusion_spectral_entropy(z, med / r)) < 0.98 * top


def test_equidistant_points_the_fastest_to_saturate_stay_out_of_the_band_at_the_high_ratio():
    simplex = torch.eye(300, dtype=torch.float64) * 5.0  # every pair at distance 5 sqrt(2)
    med, top = median_pairwise_distance(simplex), math.log2(300)
    at_high = float(diffusion_spectral_entropy(simplex, med / HIGH_RATIO))
    assert 0.9 * top < at_high < 0.95 * top
    assert scale_diagnosis(at_high, 300, HIGH_RATIO) is None
    at_three = float(diffusion_spectral_entropy(simplex, med / 3.0))
    assert at_three > 0.99 * top and scale_diagnosis(at_three, 300, 3.0) == "above"


def test_the_diagnosis_needs_both_the_band_and_the_ratio():
    top = math.log2(1000)
    assert scale_diagnosis(0.02 * top, 1000, 0.05) == "below"           # the band edge is inside
    assert scale_diagnosis(0.021 * top, 1000, 0.05) is None            # not flat: the ratio alone says nothing
    assert scale_diagnosis(0.98 * top, 1000, 50.0) == "above"
    assert scale_diagnosis(0.97 * top, 1000, 50.0) is None
    assert scale_diagnosis(0.0, 1000, 50.0) is None                     # flat at 0 with sigma far *below*: not scale
    assert scale_diagnosis(0.1, 1000, 0.2, tol=0.005) is None           # a stricter band
    assert scale_diagnosis(0.0, 1000, 0.4, low_ratio=0.5) == "below"    # a wider ratio rule


def test_normalised_entropy(digits):
    dse = float(diffusion_spectral_entropy(digits * 1e3))
    assert normalised_entropy(dse, len(digits)) == pytest.approx(1.0, abs=1e-6)


def test_the_warning_names_the_numbers_and_both_fixes():
    text = scale_warning("below", layer="backbone.head", dse_bits=0.0065, n=359, median=0.2137, sigma=10.0)
    for part in ("'backbone.head'", "0.0065 bits", "log2 N = 8.49", "sigma = 10", "0.2137", "sigma=0.2137",
                 'sigma="median_init"', "far above"):
        assert part in text
    text = scale_warning("above", layer="fc", dse_bits=8.48, n=359, median=1234.5, sigma=10.0, suggested_sigma=1200.0)
    assert "far below" in text and "sigma=1200 (suggested)" in text and "1234" in text


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: median_pairwise_distance(torch.zeros(0, 3)), "empty"),
        (lambda: median_pairwise_distance(torch.ones(1, 3)), "at least 2 points"),
        (lambda: median_pairwise_distance(torch.tensor([[0.0], [float("nan")]])), "NaN or Inf"),
        (lambda: median_pairwise_distance(torch.ones(4)), r"shape \[N, D\]"),
        (lambda: median_pairwise_distance(torch.ones(4, 2), max_points=1), "max_points"),
        (lambda: median_sigma(torch.ones(3, 2), max_points=2.5), "max_points"),
        (lambda: scale_diagnosis(0.1, 1, 0.5), "n .* >= 2"),
        (lambda: scale_diagnosis(float("nan"), 10, 0.5), "dse_bits must be finite"),
        (lambda: scale_diagnosis(0.1, 10, -1.0), "sigma_ratio"),
        (lambda: scale_diagnosis(0.1, 10, float("inf")), "sigma_ratio"),
        (lambda: scale_diagnosis(0.1, 10, 0.5, tol=0.7), "tol"),
        (lambda: scale_diagnosis(0.1, 10, 0.5, low_ratio=4.0), "high_ratio"),
        (lambda: normalised_entropy(1.0, 1), "n .* >= 2"),
        (lambda: scale_warning("sideways", layer="x", dse_bits=0, n=10, median=1, sigma=1), "direction"),
    ],
)
def test_bad_input_is_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()
