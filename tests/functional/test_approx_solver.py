"""The approximate (Lanczos) DSE solver against the exact eigen-solve.

What is proven here:
- the Gauss-Radau remainder bounds contain the true spectral sum for any spectrum
  (random spectra, t = 1 and 2), i.e. the bounds are guaranteed, not statistical;
- on clustered, manifold-like and isotropic data at low / middle / high entropy the
  estimate is within 0.02 bits of the exact float64 value and the bounds contain it;
- the streamed operator (K never formed) gives the same products, traces and estimate
  as the dense one; the probes on the kernel rounded to float32 keep the float64 bounds;
- solver="auto" is bit-identical to the exact path up to the crossover and switches to
  the approximate path above it; DSMI accepts the same solvers;
- bad input (unknown solver or option, t outside {1, 2}, too little memory) fails with
  a clear error naming the sizes.
"""
from __future__ import annotations

import math

import pytest
import torch

import dse_monitor as dm
from dse_monitor.functional import lanczos, memory, operator, solver
from dse_monitor.functional.lanczos import approximate_entropy, phi, radau_bounds
from dse_monitor.functional.operator import KernelOperator, plan_storage


@pytest.fixture(autouse=True)
def _one_thread():
    # On a shared 2-core machine, LAPACK on two OpenMP threads is erratically 10-100x
    # slower when other processes hold the cores; these tests check values, not speed.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(kind: str, n: int, d: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "clustered":
        centers = torch.randn(8, d, generator=g, dtype=torch.float64) * 3
        return centers[torch.randint(0, 8, (n,), generator=g)] + torch.randn(n, d, generator=g, dtype=torch.float64)
    if kind == "manifold":  # a noisy torus embedded in D dimensions
        th = torch.rand(n, 2, generator=g, dtype=torch.float64) * 2 * math.pi
        x = torch.stack([th[:, 0].cos(), th[:, 0].sin(), th[:, 1].cos(), th[:, 1].sin()], 1) * 3
        rot = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0][:4]
        return x @ rot + 0.05 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return torch.randn(n, d, generator=g, dtype=torch.float64)


def _median_distance(z: torch.Tensor) -> float:
    return float(torch.cdist(z[:400], z[:400]).median())


@pytest.mark.parametrize("t", [1, 2])
def test_radau_bounds_contain_every_spectrum(t):
    g = torch.Generator().manual_seed(1)
    for trial in range(300):
        m = int(torch.randint(1, 60, (1,), generator=g))
        shape = [torch.rand(m, generator=g), torch.rand(m, generator=g) ** 6, (torch.rand(m, generator=g) < 0.3) * 1.0]
        x = shape[trial % 3].double() * float(torch.rand(1, generator=g))
        s = float(x.pow(t).sum()) + float(torch.rand(1, generator=g)) * 5 + 1e-3
        c = float(x.max()) * (1 + float(torch.rand(1, generator=g)))  # any upper bound of the support
        lo, hi = radau_bounds(m, float(x.sum()), float((x * x).sum()), c, s, t)
        true = float(phi(x, s, t).sum())
        assert lo - 1e-12 <= true <= hi + 1e-12, (trial, lo, true, hi)


CASES = [(kind, level) for kind in ("clustered", "manifold", "isotropic") for level in (3.0, 0.6, 0.15)]


@pytest.mark.parametrize("kind,level", CASES)
def test_lanczos_matches_exact_within_bounds(kind, level):
    z = _data(kind, 2000)
    sigma = level * _median_distance(z)
    exact = float(dm.diffusion_spectral_entropy(z, sigma))
    est = dm.diffusion_spectral_entropy_details(z, sigma, solver="lanczos").estimate
    assert est.solver == "lanczos" and est.storage == "dense-float64"
    assert est.lower <= exact <= est.upper
    assert abs(est.value - exact) < 0.02
    assert est.std_error < 0.02
    assert est.lower <= est.value <= est.upper


def test_lanczos_t2_and_seeds():
    z = _data("clustered", 900, seed=3)
    sigma = 0.5 * _median_distance(z)
    exact = float(dm.diffusion_spectral_entropy(z, sigma, t=2))
    for seed in (0, 1):
        est = dm.diffusion_spectral_entropy_details(z, sigma, t=2, seed=seed, solver="lanczos").estimate
        assert est.lower <= exact <= est.upper
        assert abs(est.value - exact) < 0.02


def test_bounds_hold_without_deflation_and_with_few_probes():
    # k = 0 (nothing locked) and 4 probes: the estimate is rough, the bounds must still hold.
    z = _data("manifold", 800, seed=2)
    sigma = 0.3 * _median_distance(z)
    exact = float(dm.diffusion_spectral_entropy(z, sigma))
    op = KernelOperator.build(z, sigma)
    est = approximate_entropy(op, n_probes=4, lanczos_steps=5, lock_tol=0.0, block=8, max_rank=16)
    assert est.rank == 0
    assert est.lower <= exact <= est.upper


def test_streamed_operator_equals_dense():
    z = _data("clustered", 700, seed=4)
    sigma = 0.5 * _median_distance(z)
    dense = KernelOperator.build(z, sigma)
    streamed = KernelOperator.build(z, sigma, streamed=True, block_size=96)
    assert streamed.dense_k is None
    x = torch.randn(700, 5, dtype=torch.float64)
    torch.testing.assert_close(streamed.matmat(x), dense.matmat(x), rtol=1e-10, atol=1e-12)
    assert streamed.trace == pytest.approx(dense.trace, rel=1e-12)
    assert streamed.frobenius_sq == pytest.approx(dense.frobenius_sq, rel=1e-12)
    a = approximate_entropy(dense, seed=5)
    b = approximate_entropy(streamed, seed=5)
    assert a.value == pytest.approx(b.value, abs=1e-8)
    assert (a.lower, a.upper) == pytest.approx((b.lower, b.upper), abs=1e-8)
    via_api = dm.diffusion_spectral_entropy_details(z, sigma, seed=5, solver="lanczos", streamed=True).estimate
    assert via_api.storage == "streamed-float64"
    assert via_api.value == pytest.approx(a.value, abs=1e-8)


def test_float32_probes_keep_the_float64_bounds():
    # The API rounds its own dense float64 kernel to float32 after the deflation: the
    # bounds (from the float64 deflation) are unchanged, the estimate moves by rounding only.
    z = _data("clustered", 1500, seed=6)
    sigma = 0.5 * _median_distance(z)
    op64 = KernelOperator.build(z, sigma)
    a = approximate_entropy(op64, seed=2)
    assert op64.dtype == torch.float64 and a.info["probe_dtype"] == "float64"
    op = KernelOperator.build(z, sigma)
    rounded = op.dense_k.float()
    b = approximate_entropy(op, seed=2, probe_dtype=torch.float32)
    assert op.dtype == torch.float32 and torch.equal(op.dense_k, rounded)
    assert b.info["probe_dtype"] == "float32" and b.storage == "dense-float64"
    assert (b.lower, b.upper, b.rank) == (a.lower, a.upper, a.rank)
    assert b.value == pytest.approx(a.value, abs=1e-5) and b.value != a.value
    via_api = dm.diffusion_spectral_entropy_details(z, sigma, seed=2, solver="lanczos").estimate
    assert via_api.info["probe_dtype"] == "float32" and via_api.value == b.value
    kept = dm.diffusion_spectral_entropy_details(z, sigma, seed=2, solver="lanczos",
                                                 lanczos_options={"probe_dtype": torch.float64}).estimate
    assert kept.info["probe_dtype"] == "float64" and kept.value == a.value
    streamed = KernelOperator.build(z, sigma, streamed=True)
    assert approximate_entropy(streamed, seed=2, probe_dtype=torch.float32).info["probe_dtype"] == "float64"
    with pytest.raises(ValueError, match="needs a dense operator"):
        streamed.round_to_float32()
    with pytest.raises(ValueError, match="probe_dtype must be None"):
        approximate_entropy(KernelOperator.build(z, sigma), probe_dtype=torch.float16)


def test_sum_of_squares_in_chunks(monkeypatch):
    z = _data("clustered", 300, seed=1)
    whole = KernelOperator.build(z, 1.0).frobenius_sq
    monkeypatch.setattr(operator, "_DOT_CHUNK", 1000)  # 90 chunks, the last one partial
    chunked = KernelOperator.build(z, 1.0)
    assert chunked.frobenius_sq == pytest.approx(whole, rel=1e-13)
    assert chunked.frobenius_sq == pytest.approx(float((chunked.dense_k**2).sum()), rel=1e-13)


def test_auto_crossover_is_the_root_of_the_measured_cost_model():
    costs = solver.path_costs(m=300)
    assert all(costs[k] > 0 for k in ("e", "p")) and costs["o"] >= 0
    n = solver.auto_crossover()
    assert n >= solver.AUTO_EXACT_N
    assert solver.choose_solver(n, 1, "auto") == "exact" and solver.choose_solver(n + 1, 1, "auto") == "lanczos"
    assert solver.choose_solver(n + 1, 3, "auto") == "exact"
    assert solver.choose_solver(solver.AUTO_EXACT_N, 1, "auto") == "exact"


def test_auto_is_exact_up_to_the_crossover_and_lanczos_above(monkeypatch):
    z = _data("isotropic", 600)
    exact = dm.diffusion_spectral_entropy(z, 3.0)
    monkeypatch.setattr(solver, "AUTO_CROSSOVER", 2000)
    assert torch.equal(dm.diffusion_spectral_entropy(z, 3.0, solver="auto"), exact)
    assert dm.diffusion_spectral_entropy_details(z, 3.0, solver="auto").estimate.solver == "exact"
    monkeypatch.setattr(solver, "AUTO_CROSSOVER", 500)
    est = dm.diffusion_spectral_entropy_details(z, 3.0, solver="auto").estimate
    assert est.solver == "lanczos" and est.lower <= float(exact) <= est.upper
    # t outside {1, 2} stays exact under auto.
    assert dm.diffusion_spectral_entropy_details(z, 3.0, t=3, solver="auto").estimate.solver == "exact"


def test_exact_estimate_is_degenerate():
    z = _data("clustered", 200)
    est = dm.diffusion_spectral_entropy_details(z, 2.0).estimate
    assert isinstance(est, dm.EntropyEstimate)
    assert est.lower == est.value == est.upper and est.std_error == 0
    assert est.value == float(dm.diffusion_spectral_entropy(z, 2.0))


def test_lanczos_value_is_a_tensor_on_the_input_device_and_dtype():
    z = _data("clustered", 300).float()
    out = dm.diffusion_spectral_entropy(z, 2.0, dtype=torch.float32, solver="lanczos")
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.ndim == 0
    assert abs(float(out) - float(dm.diffusion_spectral_entropy(z, 2.0))) < 0.02


def test_tiny_problems_are_solved_exactly():
    z = _data("isotropic", 40)
    est = dm.diffusion_spectral_entropy_details(z, 2.0, solver="lanczos").estimate
    assert est.width == 0 and est.value == pytest.approx(float(dm.diffusion_spectral_entropy(z, 2.0)), abs=1e-10)
    one = dm.diffusion_spectral_entropy(z[:1], 2.0, solver="lanczos")
    assert float(one) == 0.0


def test_dsmi_accepts_solvers():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(900) % 3
    z = torch.randn(900, 6, generator=g, dtype=torch.float64) + 3 * labels[:, None]
    exact = float(dm.diffusion_spectral_mutual_information(z, labels, sigma=2.0))
    approx = float(dm.diffusion_spectral_mutual_information(z, labels, sigma=2.0, solver="lanczos"))
    auto = float(dm.diffusion_spectral_mutual_information(z, labels, sigma=2.0, solver="auto"))
    assert abs(approx - exact) < 0.03
    assert auto == exact


def test_storage_plan_and_memory_errors():
    gib = 2**30
    n = 20_000
    # float64 (3.2 GB) while it takes at most a quarter of the limit; above, float32 (1.6 GB) even where it fits
    assert plan_storage(n, 512, torch.float64, torch.device("cpu"), None, 16 * gib)[:2] == (False, torch.float64)
    assert plan_storage(n, 512, torch.float64, torch.device("cpu"), None, 8 * gib)[:2] == (False, torch.float32)
    assert plan_storage(n, 512, torch.float64, torch.device("cpu"), None, 2 * gib)[:2] == (False, torch.float32)
    stream, _, rows = plan_storage(n, 512, torch.float64, torch.device("cpu"), None, gib // 2)
    assert stream and rows >= 16
    with pytest.raises(MemoryError, match=r"20000 x 20000 float64 kernel needs .* GiB"):
        plan_storage(n, 512, torch.float64, torch.device("cpu"), False, gib)
    with pytest.raises(MemoryError, match=r"N=20000 points in D=512"):
        plan_storage(n, 512, torch.float64, torch.device("cpu"), True, 10_000)
    z = _data("isotropic", 300)
    with pytest.raises(MemoryError, match="N=300"):
        dm.diffusion_spectral_entropy(z, 2.0, solver="lanczos", lanczos_options={"memory_limit": 1000})


def test_exact_path_refuses_what_cannot_fit(monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": 10_000_000)  # a small device
    z = _data("isotropic", 2000)
    with pytest.raises(MemoryError, match=r"exact DSE of N=2000 points needs .*solver='lanczos'"):
        dm.diffusion_spectral_entropy(z, 2.0)
    with pytest.raises(MemoryError, match="N=2000"):
        dm.diffusion_eigenvalues(z, 2.0)


def test_bad_arguments():
    z = _data("isotropic", 100)
    with pytest.raises(ValueError, match="solver must be one of"):
        dm.diffusion_spectral_entropy(z, solver="lobpcg")
    with pytest.raises(ValueError, match="supports t = 1 and t = 2"):
        dm.diffusion_spectral_entropy(z, t=1.5, solver="lanczos")
    with pytest.raises(ValueError, match="unknown lanczos option"):
        dm.diffusion_spectral_entropy(z, solver="lanczos", lanczos_options={"probes": 3})
    with pytest.raises(ValueError, match="block_size must be a positive integer"):
        KernelOperator.build(z, 1.0, streamed=True, block_size=0)
    with pytest.raises(ValueError, match="solver must be one of"):
        dm.diffusion_spectral_mutual_information(z, torch.arange(100) % 2, solver="nystrom")
    with pytest.raises(ValueError, match="NaN or Inf"):
        bad = z.clone()
        bad[3, 0] = float("nan")
        dm.diffusion_spectral_entropy(bad, solver="lanczos")


def test_lipschitz_constant_bounds_the_derivative():
    for s, t in [(1.0, 1), (3.0, 1), (250.0, 1), (1.5, 2), (40.0, 2)]:
        x = torch.linspace(0, 1, 200_001, dtype=torch.float64)
        y = phi(x, s, t)
        slope = float(((y[1:] - y[:-1]) / (x[1] - x[0])).abs().max())
        assert slope <= lanczos._lipschitz(s, t)


def test_batched_subset_solves_match_one_by_one():
    # The CUDA path of DSMI stacks kernels into batched eigvalsh calls (never padded off CUDA);
    # its logic is device independent, so it is checked here on CPU tensors.
    from dse_monitor.functional.subset_entropies import batched_subset_eigvals

    g = torch.Generator().manual_seed(0)
    mats = []
    for size in (5, 7, 5, 9, 7, 5):
        a = torch.randn(size, size, generator=g, dtype=torch.float64)
        mats.append(a @ a.T)
    out = batched_subset_eigvals(mats)
    for m, lam in zip(mats, out):
        torch.testing.assert_close(lam, torch.linalg.eigvalsh(m))
