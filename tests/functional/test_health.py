"""The health metrics against independent implementations, on the embedded default's real features.

Oracles (test-only dependencies): numpy's SVD and reptrix 0.1.0 (``get_rank``, ``get_alpha``) for
RankMe and alpha-ReQ, ckatorch 1.0.3's ``cka_base`` for linear CKA, scikit-learn's
``KNeighborsClassifier`` for the kNN accuracy. ckatorch's ``__init__`` imports its plotting
module (seaborn, pandas): only its torch-only ``core`` module is loaded, through a bare package.
"""
from __future__ import annotations

import importlib.util
import math
import sys
import types

import lightning.pytorch as L
import numpy as np
import pytest
import torch
from reptrix.alpha import get_alpha
from reptrix.rankme import get_rank
from sklearn.metrics import r2_score
from sklearn.neighbors import KNeighborsClassifier
from threadpoolctl import threadpool_limits

from dse_monitor.functional import (
    NotApplicable,
    alpha_req,
    diffusion_eigenvalues,
    diffusion_spectral_entropy,
    knn_accuracy,
    linear_cka,
    rankme,
    spectral_gap,
)
from dse_monitor.registry import METRICS, MetricSettings, derive_result
from dse_monitor.train.data import ImageDataModule
from dse_monitor.train.model import ImageClassifier


def _cka_base():
    if "ckatorch.core" not in sys.modules:
        spec = importlib.util.find_spec("ckatorch")
        assert spec is not None, "pip install --no-deps ckatorch==1.0.3 (a test-only dependency)"
        package = types.ModuleType("ckatorch")
        package.__path__ = list(spec.submodule_search_locations)
        saved = sys.modules.get("ckatorch")
        sys.modules["ckatorch"] = package
        try:
            importlib.import_module("ckatorch.core")
        finally:
            if saved is not None:
                sys.modules["ckatorch"] = saved
    return sys.modules["ckatorch.core"].cka_base


def _penultimate(model, loader):
    net = model.backbone
    with torch.no_grad():
        was = net.training
        net.eval()
        zs, ys = [], []
        for x, y in loader:
            zs.append(net.forward_head(net.forward_features(x), pre_logits=True))
            ys.append(y)
        net.train(was)
    return torch.cat(zs).double(), torch.cat(ys)


@pytest.fixture(scope="module")
def digits_features():
    """Penultimate features [359, 256] of the embedded default (configs/digits.yaml) at init and after training."""
    L.seed_everything(1)
    data = ImageDataModule("digits", image_size=24, batch_size=128)
    model = ImageClassifier("resnet18", num_classes=10, lr=1e-3, warmup_epochs=1,
                            backbone_kwargs={"channels": [32, 64, 128, 256], "stem_width": 32})
    data.setup("fit")
    out = {"init": _penultimate(model, data.val_dataloader())}
    trainer = L.Trainer(max_epochs=2, limit_train_batches=4, limit_val_batches=0, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    trainer.fit(model, datamodule=data)
    out["trained"] = _penultimate(model, data.val_dataloader())
    assert not torch.equal(out["init"][0], out["trained"][0])
    return out


STAGES = ["init", "trained"]


@pytest.mark.parametrize("stage", STAGES)
def test_rankme_is_the_svd_formula_and_reptrix_get_rank(digits_features, stage):
    z, _ = digits_features[stage]
    s = np.linalg.svd(z.numpy(), compute_uv=False)
    p = s / s.sum() + 1e-7
    ours = float(rankme(z))
    assert ours == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-10)
    assert ours == pytest.approx(float(get_rank(s)), rel=1e-10)
    assert 1 <= ours <= min(z.shape)


def test_rankme_of_rank_deficient_features_is_the_svd_formula():
    # rank 5 of 40: the Gram route's small singular values would be rounding, so these take the SVD
    g = torch.Generator().manual_seed(0)
    z = torch.randn(300, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 40, generator=g, dtype=torch.float64)
    s = np.linalg.svd(z.numpy(), compute_uv=False)
    assert float(rankme(z)) == pytest.approx(float(get_rank(s)), rel=1e-10)
    assert float(rankme(z)) < 5.1


@pytest.mark.parametrize("stage", STAGES)
def test_alpha_req_is_reptrix_get_alpha(digits_features, stage):
    z, _ = digits_features[stage]
    res = alpha_req(z)
    alpha, ypred, _, _ = get_alpha(z)
    assert res.zeros_in_fit == 0
    assert res.alpha == pytest.approx(float(alpha), rel=1e-6)
    # R^2 of that same fit (reptrix's prediction) over the fitted eigenvalues 11..100
    centred = z.numpy() - z.numpy().mean(axis=0)
    s = np.linalg.svd(centred, compute_uv=False)
    lam = s**2 / (s**2).sum()
    assert res.r2 == pytest.approx(r2_score(np.log(lam[10:100]), np.log(ypred[10:100])), rel=1e-6)


def test_alpha_req_recovers_a_power_law_and_says_where_it_cannot_fit():
    g = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(300, 300, generator=g, dtype=torch.float64))[0]
    for exponent in (0.5, 1.0, 2.0):  # covariance eigenvalues i^-exponent
        scales = torch.arange(1, 301, dtype=torch.float64) ** (-exponent / 2)
        z = torch.cat([q * scales, -q * scales])
        res = alpha_req(z)
        assert res.alpha == pytest.approx(exponent, rel=1e-9) and res.r2 == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(NotApplicable, match=r"min\(N, D\) = min\(300, 100\) < 110"):
        alpha_req(torch.randn(300, 100, generator=g))
    low_rank = torch.randn(300, 50, generator=g, dtype=torch.float64) @ torch.randn(50, 200, generator=g,
                                                                                      dtype=torch.float64)
    res = alpha_req(low_rank)  # rank 50: eigenvalues 51..100 are zeros
    assert math.isnan(res.alpha) and math.isnan(res.r2) and res.zeros_in_fit == 50


@pytest.mark.parametrize("columns", [slice(None), slice(0, 64)])  # Gram form (D large), feature form (D small)
def test_cka_between_measurements_is_ckatorch_cka_base(digits_features, columns):
    cka_base = _cka_base()
    a, b = digits_features["init"][0][:, columns], digits_features["trained"][0][:, columns]
    for x, y in ((a, b), (b, a), (a, a), (b[:100], a[:100])):
        expected = float(cka_base(x.clone(), y.clone(), kernel="linear", unbiased=False))
        assert float(linear_cka(x, y)) == pytest.approx(expected, abs=1e-8)
    assert float(linear_cka(a, a)) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="same samples: 359 rows vs 100"):
        linear_cka(a, b[:100])
    with pytest.raises(NotApplicable, match="constant"):
        linear_cka(a, torch.ones_like(a))


def _sklearn_leave_one_out(z: np.ndarray, y: np.ndarray, k: int) -> float:
    # one thread: with several, scikit-learn's own choice among equidistant neighbours varies
    # (measured on the init features: 0.4095 on one thread, 0.4123 on two, k = 10)
    hits = 0
    with threadpool_limits(1):
        for i in range(len(z)):
            others = np.arange(len(z)) != i
            hits += KNeighborsClassifier(n_neighbors=k).fit(z[others], y[others]).predict(z[i:i + 1])[0] == y[i]
    return hits / len(z)


@pytest.mark.parametrize("stage", STAGES)
def test_knn_accuracy_is_scikit_learns_leave_one_out(digits_features, stage):
    z, y = digits_features[stage]
    if stage == "trained":  # also labels that the features do not predict
        y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    for k in (10, 3):
        expected = _sklearn_leave_one_out(z.numpy(), y.numpy(), k)
        assert float(knn_accuracy(z, y, k)) == expected
        assert float(knn_accuracy(z, y, k, chunk_entries=1000)) == expected  # a few rows per chunk
    if stage == "init":  # timm's init maps some distinct digits to identical features: ties to break
        assert len(torch.unique(z, dim=0)) < len(z)


def test_knn_accuracy_breaks_ties_as_scikit_learn_with_duplicates_and_equidistant_neighbours():
    # Small integer coordinates (exact distances, many equidistant neighbours and duplicates) in
    # 16 dimensions (scikit-learn's brute-force search), random labels: tied votes are common.
    g = np.random.default_rng(0)
    for trial in range(12):
        n, k = int(g.integers(14, 40)), int(g.integers(1, 8))
        z = g.integers(0, 2, size=(n, 16)).astype(np.float64)
        z[g.integers(0, n, 4)] = z[g.integers(0, n, 4)]  # more exact duplicates
        y = g.integers(0, 3, size=n) * 2 + 1  # labels 1, 3, 5: not 0..C-1
        assert float(knn_accuracy(torch.from_numpy(z), torch.from_numpy(y), k)) == _sklearn_leave_one_out(z, y, k), trial


def test_knn_accuracy_needs_more_samples_than_k_and_two_classes():
    z = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(NotApplicable, match="10 samples: .* k=10 needs at least 11"):
        knn_accuracy(z, torch.arange(10) % 2)
    with pytest.raises(NotApplicable, match="single class"):
        knn_accuracy(z, torch.zeros(10), k=3)
    with pytest.raises(ValueError, match="one label per sample: 9 labels for 10 samples"):
        knn_accuracy(z, torch.zeros(9), k=3)


@pytest.mark.parametrize("stage", STAGES)
def test_dse_t_and_spectral_gap_come_from_dses_own_spectrum(digits_features, stage):
    z, _ = digits_features[stage]
    sigma = float(torch.pdist(z).median())
    settings = MetricSettings(sigma=sigma, solver="exact", dtype=torch.float64, t_values=(1, 2, 4, 8, 0.5))
    dse = METRICS["dse"].compute(z, None, settings)
    dse_t = derive_result(METRICS["dse_t"], dse, settings)
    for t in settings.t_values:
        direct = float(diffusion_spectral_entropy(z, sigma, t))
        assert dse_t.values[f"dse_t{t:g}"] == pytest.approx(direct, abs=1e-9)
    # 1 - |lambda_2| of the row-stochastic P = Q^-1 G, solved as a general (non-symmetric) matrix
    d2 = torch.cdist(z, z).numpy() ** 2
    gram = np.exp(-d2 / (2 * sigma**2))
    moduli = np.sort(np.abs(np.linalg.eigvals(gram / gram.sum(axis=1, keepdims=True))))[::-1]
    gap = derive_result(METRICS["spectral_gap"], dse, settings).value
    assert gap == pytest.approx(1 - moduli[1], abs=1e-9)
    assert float(spectral_gap(diffusion_eigenvalues(z, sigma))) == pytest.approx(gap, abs=1e-12)


def test_registry_entries_compute_and_skip_with_a_reason(digits_features):
    z, y = digits_features["trained"]
    settings = MetricSettings(sigma=10.0, solver="exact")
    values = METRICS["alpha_req"].compute(z, None, settings).logged("alpha_req")
    assert set(values) == {"alpha_req", "alpha_req_r2"} and 0 < values["alpha_req_r2"] <= 1
    assert METRICS["knn_acc"].compute(z, y, MetricSettings(knn_k=5)).value == _sklearn_leave_one_out(
        z.numpy(), y.numpy(), 5)
    first = METRICS["cka_prev"].compute(z, None, settings)  # no previous measurement
    assert first.logged("cka_prev") == {} and "no previous measurement" in first.note
    small = METRICS["alpha_req"].compute(z[:50], None, settings)
    assert small.logged("alpha_req") == {} and "min(N, D) = min(50, 256) < 110" in small.note
    r2 = derive_result(METRICS["alpha_req_r2"], small, settings)
    assert r2.logged("alpha_req_r2") == {}  # the base does not apply: neither does its R^2
    lanczos = METRICS["dse"].compute(z, None, MetricSettings(sigma=10.0, solver="lanczos"))
    for name in ("dse_t", "spectral_gap"):
        res = derive_result(METRICS[name], lanczos, settings)
        assert res.logged(name) == {} and "solver='exact'" in res.note


def test_dse_t_from_a_float32_spectrum_of_nearly_collapsed_features_is_not_biased():
    # float32 eigenvalues beyond the first are rounding noise here; DSE solves such a spectrum again in
    # float64 (its own t is at the floor), which dse_t then reads: every t matches float64.
    z = torch.randn(300, 8, generator=torch.Generator().manual_seed(0)) * 0.5
    settings = MetricSettings(sigma=10.0, t=2.0, solver="exact", dtype=torch.float32, t_values=(0.5, 1, 2, 8))
    dse = METRICS["dse"].compute(z, None, settings)
    res = derive_result(METRICS["dse_t"], dse, settings)
    for t in settings.t_values:
        assert res.values[f"dse_t{t:g}"] == pytest.approx(float(diffusion_spectral_entropy(z.double(), 10.0, t)),
                                                          abs=1e-6)
