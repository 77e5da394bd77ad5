"""The kNN accuracy's two-pass ranking: float32 candidates, float64 distances, a certificate per row."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.neighbors import KNeighborsClassifier
from threadpoolctl import threadpool_limits

from dse_monitor.functional.knn_vote import _nearest, _Rows, knn_accuracy


def _brute(a: torch.Tensor, m: int) -> torch.Tensor:
    sq = (a * a).sum(dim=1)
    full = sq[:, None] + sq[None, :] - 2 * a @ a.T  # float64, as scikit-learn computes it
    full.fill_diagonal_(float("inf"))
    return full.topk(m, dim=1, largest=False).values


def _far_clusters(n: int = 120) -> torch.Tensor:
    # two clusters 2e4 apart with spreads of 1e-3: float32 cannot rank the distances inside a cluster
    g = torch.Generator().manual_seed(0)
    side = torch.where(torch.arange(n) % 2 == 0, 1e4, -1e4).double()
    z = 1e-3 * torch.randn(n, 5, generator=g, dtype=torch.float64)
    z[:, 0] += side
    return z


def test_the_candidates_are_the_float64_nearest_where_float32_ranks_and_where_it_cannot():
    g = torch.Generator().manual_seed(1)
    # random features: every row certified from its float32 candidates; far clusters: none, all ranked in float64
    for z in (torch.randn(300, 40, generator=g, dtype=torch.float64), _far_clusters()):
        a = z - z.mean(dim=0)
        _, d = _nearest(_Rows(a), torch.arange(len(a)), 11)
        ref = _brute(a, 11)
        assert torch.allclose(d, ref, rtol=1e-12, atol=1e-12 * float(ref.abs().max()))


def test_far_clusters_need_the_float64_rows_and_match_scikit_learn():
    z = _far_clusters()
    y = (torch.arange(len(z)) // 2) % 3  # labels unrelated to the float32-unresolvable order
    with threadpool_limits(1):
        expected = np.mean([
            KNeighborsClassifier(n_neighbors=10, algorithm="brute").fit(np.delete(z.numpy(), i, 0),
                                                                        np.delete(y.numpy(), i)).predict(z.numpy()[i:i + 1])[0]
            == int(y[i]) for i in range(len(z))])
    assert float(knn_accuracy(z, y, 10)) == expected
