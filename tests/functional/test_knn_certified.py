"""The neighbour search's reduced-precision route (CUDA's TF32 candidates, emulated here on the
CPU by rounding the inputs' mantissas): same neighbours as the plain search, certificate sound."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from dse_monitor.functional import knn_search as knn_search_module
from dse_monitor.functional.knn_search import _certified_candidates, knn_search
from dse_monitor.functional.knn_reduced import augmented_factors, candidate_bound, float32_matmul, round_mantissa


def _data(kind: str, n: int = 400, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "grid":  # exact ties everywhere
        return torch.randint(0, 5, (n, 4), generator=g).float()
    centres = torch.randn(6, 24, generator=g) * 3
    x = centres[torch.randint(0, 6, (n,), generator=g)] + 0.3 * torch.randn(n, 24, generator=g)
    if kind == "duplicates":  # every row of the second half is a row of the first
        x[n // 2 :] = x[: n - n // 2].clone()
    return x if kind != "clusters64" else x.double()


def _route(x: torch.Tensor, k: int, bits: int, extra: int, bound_scale: float = 1.0):
    # few candidates beyond k + 1 (not 64): with 400 rows, 64 would leave few rows out
    a = x - x.mean(dim=0, keepdim=True)
    idx, redo = _certified_candidates(x, a, k, 97, bits, extra=extra, bound_scale=bound_scale)
    d2 = knn_search_module._pair_distances(x, idx)
    order = knn_search_module._lexsort(d2, idx)
    return idx.gather(1, order), d2.gather(1, order), redo


def _brute_force(x: torch.Tensor, k: int) -> torch.Tensor:
    exact = (x.double()[:, None, :] - x.double()[None, :, :]).square().sum(-1)
    exact.fill_diagonal_(float("inf"))
    return torch.argsort(exact, dim=1, stable=True)[:, :k]  # stable over ascending columns: ties by index


@pytest.mark.parametrize("kind", ["clusters", "duplicates", "grid", "clusters64"])
@pytest.mark.parametrize("bits, extra", [(3, 4), (7, 4), (10, 4), (10, 40)])
def test_candidates_give_the_plain_searchs_neighbours(kind, bits, extra):
    # 3 bits: every certificate fails and rows are searched again; 10 (TF32) with 40 extra
    # candidates: most rows are certified
    x, k = _data(kind), 10
    idx, d2, redo = _route(x, k, bits, extra)
    idx0, d20 = knn_search(x, k, reduced_bits=0)
    assert torch.equal(idx, idx0) and torch.equal(d2, d20)
    assert torch.equal(idx, _brute_force(x, k))
    if bits == 3:
        assert redo.numel() > len(x) // 2, redo.numel()  # the redo path is exercised, not skipped
    if extra == 40:
        assert redo.numel() < len(x) // 2, redo.numel()  # ... and the certified one
    assert torch.equal(knn_search(x, k, reduced_bits=bits)[0], idx)


def test_a_too_small_bound_returns_wrong_neighbours():
    # the certificate carries the exactness: with the bound shrunk 100x, rows whose true
    # neighbours fell outside the candidates are passed as certified and come back wrong
    x, k = _data("clusters"), 10
    right = _brute_force(x, k)
    assert torch.equal(_route(x, k, 3, 4)[0], right)
    wrong, _, redo = _route(x, k, 3, 4, bound_scale=0.01)
    assert not torch.equal(wrong, right)


@pytest.mark.parametrize("dtype, bits", [(torch.float32, 10), (torch.float32, 7), (torch.float64, 10)])
def test_the_bound_holds_and_is_nearly_reached(dtype, bits):
    # |r_ij - R_ij| against E_i over all pairs. Rows of equal entries just under half a unit
    # above 1 all round down: the errors add up coherently, the worst case the bound allows
    g = torch.Generator().manual_seed(3)
    a = 1 + 0.01 * torch.rand(300, 512, generator=g, dtype=torch.float64)  # norms alike: A ~ ||a_i||
    a[:100] = 1 + 0.49 * 2.0**-bits
    a = a.to(dtype)
    left, right = augmented_factors(a, bits, len(a) + 4)
    approx = (left @ right)[:, : len(a)].double()  # the candidate pass's product, in a's precision
    ad = a.double()
    exact = ad.square().sum(1)[None, :] - 2 * ad @ ad.T
    e, _ = candidate_bound(torch.linalg.vector_norm(ad, dim=1) * (1 + 1e-12), a.shape[1], bits, dtype)
    ratio = float(((approx - exact).abs() / e[:, None]).max())
    assert 0.5 < ratio <= 1  # sound, and within 2x: a bound half as large fails here


def test_round_mantissa_is_nearest_within_half_a_unit():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(10_000, generator=g) * 1e3
    for bits in (3, 7, 10):
        r = round_mantissa(x, bits)
        assert float(((r - x).abs() / x.abs()).max()) <= 2.0 ** -(bits + 1)
        assert torch.equal(round_mantissa(r, bits), r)  # on the grid: unchanged, as a TF32 unit takes them


def test_matmul_precision_is_restored_even_after_an_error():
    before = torch.get_float32_matmul_precision()
    with pytest.raises(RuntimeError, match="inside"):
        with float32_matmul("high" if before != "high" else "medium"):
            assert torch.get_float32_matmul_precision() != before
            raise RuntimeError("inside")
    assert torch.get_float32_matmul_precision() == before


def test_threads_searching_at_once_keep_their_own_precision_and_restore_the_callers():
    before, seen = torch.get_float32_matmul_precision(), []

    def search(precision):
        with float32_matmul(precision):
            time.sleep(0.02)  # the other thread tries to enter meanwhile
            seen.append((precision, torch.get_float32_matmul_precision()))

    threads = [threading.Thread(target=search, args=(p,)) for p in ("high", "highest", "medium", "high")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(want == got for want, got in seen) and len(seen) == 4
    assert torch.get_float32_matmul_precision() == before
