"""knn_acc's candidates read off DSE's kernel product: the same ranking and vote as its own pass."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier
from test_knn_vote import _brute, _far_clusters
from threadpoolctl import threadpool_limits

from dse_monitor.functional.kernel import diffusion_kernel, in_factored_range, scaled_rows
from dse_monitor.functional.kernel_neighbours import kernel_neighbours
from dse_monitor.functional.knn_vote import _nearest, _Rows, knn_accuracy
from dse_monitor.registry import MetricSettings
from dse_monitor.registry.layer import compute_layer


def _sklearn(z: torch.Tensor, y: torch.Tensor, k: int) -> float:
    zn, yn = z.double().numpy(), y.numpy()
    with threadpool_limits(1):
        return float(np.mean([KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(
            np.delete(zn, i, 0), np.delete(yn, i)).predict(zn[i:i + 1])[0] == yn[i] for i in range(len(zn))]))


def _clustered(n=240, d=24, dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    y = torch.arange(n) % 4
    z = torch.randn(4, d, generator=g)[y] * 2 + torch.randn(n, d, generator=g)
    z[5] = z[9]  # a duplicate: a tie at distance 0
    return z.to(dtype), y


@pytest.mark.parametrize("sigma", [10.0, 0.5])  # the factored form, and the distance form (||b||^2 too large)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_candidates_from_the_kernel_rank_and_vote_as_the_own_pass_and_scikit_learn(sigma, dtype):
    z, y = _clustered(dtype=dtype)
    _, half_sq = scaled_rows(z, z.mean(dim=0, keepdim=True), sigma)
    assert in_factored_range(half_sq) == (sigma == 10.0)
    with kernel_neighbours(len(z), 15) as tap:
        diffusion_kernel(z, sigma)
        diffusion_kernel(z[:100], sigma)  # a kernel of other rows is not taken
    c = tap.candidates
    assert c.index.shape == (len(z), 15) and bool((c.index != torch.arange(len(z))[:, None]).all())
    a = z.double() - z.double().mean(dim=0)
    _, d = _nearest(_Rows(a), torch.arange(len(a)), 11, given=c)
    ref = _brute(a, 11)
    assert torch.allclose(d, ref, rtol=1e-12, atol=1e-12 * float(ref.abs().max()))
    assert float(knn_accuracy(z, y, 10, candidates=c)) == float(knn_accuracy(z, y, 10)) == _sklearn(z, y, 10)


def test_candidates_that_float_rounding_cannot_rank_are_ranked_again_in_float64():
    z = _far_clusters()  # spreads of 1e-3 at 1e4 apart: no candidate row can be certified
    y = (torch.arange(len(z)) // 2) % 3
    with kernel_neighbours(len(z), 15) as tap:
        diffusion_kernel(z.float(), 1e4)
    assert tap.candidates is not None
    assert float(knn_accuracy(z, y, 10, candidates=tap.candidates)) == _sklearn(z, y, 10)


def test_too_few_candidates_or_other_rows_fall_back_to_the_own_pass():
    z, y = _clustered()
    with kernel_neighbours(len(z), 5) as tap:  # fewer than k + 1
        diffusion_kernel(z, 10.0)
    assert float(knn_accuracy(z, y, 10, candidates=tap.candidates)) == _sklearn(z, y, 10)
    with kernel_neighbours(len(z) + 1, 15) as tap:
        diffusion_kernel(z, 10.0)
    assert tap.candidates is None


def test_a_layer_measured_with_dse_and_knn_acc_gives_the_values_of_each_alone():
    z, y = _clustered()
    settings = MetricSettings(sigma=10.0, dtype=torch.float32, solver="exact", knn_k=10)
    both, failures = compute_layer(z, ["knn_acc", "dse_norm"], {"labels": y}, settings)
    assert not failures and set(both) == {"knn_acc", "dse", "dse_norm"}
    alone = compute_layer(z, ["knn_acc"], {"labels": y}, settings)[0]
    assert both["knn_acc"].value == alone["knn_acc"].value == _sklearn(z, y, 10)
    assert both["dse"].value == compute_layer(z, ["dse"], {}, settings)[0]["dse"].value
