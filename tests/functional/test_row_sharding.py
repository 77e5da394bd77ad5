"""The kernel's rows split over processes: 2 real processes (gloo), compared with the whole kernel."""
from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from spawned import rerun_if_killed

from dse_monitor.functional import diffusion_spectral_entropy, diffusion_spectral_entropy_details, solver
from dse_monitor.functional.operator import KernelOperator
from dse_monitor.functional.row_group import RowGroup
from dse_monitor.functional.row_operator import RowShardedOperator
from dse_monitor.functional.solver import lanczos_entropy

N = 501  # odd: the two shares differ by one row


def _clustered(n: int, d: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(5, d, generator=g, dtype=torch.float64)
    return centres[torch.arange(n) % 5] + torch.randn(n, d, generator=g, dtype=torch.float64)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        group = RowGroup.from_torch_distributed()
        z = _clustered(N)
        x = torch.randn(5, N, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        res: dict = {}
        for name, kw in {"dense": {}, "streamed": dict(streamed=True, block_size=64), "alpha": dict(alpha=0.5),
                         "streamed_alpha": dict(streamed=True, block_size=100, alpha=0.5)}.items():
            op = RowShardedOperator.build(z, 2.0, group, **kw)
            res[name] = (op.rmatmat(x), op.matmat(x.T), op.trace, op.frobenius_sq, op.storage_bytes)
        narrow = RowShardedOperator.build(z, 0.3, group)  # max ||z_i - mean||^2 / sigma^2 > 354: the distance form
        res["narrow"] = (narrow.outer is None, narrow.rmatmat(x), narrow.trace, narrow.frobenius_sq)
        res["est"] = lanczos_entropy(z, 2.0, 1, row_group=group)
        res["est_t2_streamed"] = lanczos_entropy(z, 2.0, 2, row_group=group, streamed=True)
        op = RowShardedOperator.build(z, 2.0, group)
        try:  # the ranks' operands differ: raised on every rank, not a hang
            op.rmatmat(x + rank)
        except RuntimeError as err:
            res["diverged"] = str(err)
        try:  # one rank alone has no room: every rank raises
            lanczos_entropy(z, 2.0, 1, row_group=group, options={"memory_limit": 10**12 if rank == 0 else 1000})
        except MemoryError as err:
            res["memory"] = str(err)
        # rank 1 alone fails (out of memory, say) building its rows, then inside a product: every rank
        # raises, and the ranks' collectives stay in step (the next solve works)
        own_rows = RowShardedOperator._affinity

        def no_room(self, lo, hi):
            raise MemoryError("no room on rank 1")

        for when in ("build", "product"):
            streamed = RowShardedOperator.build(z, 2.0, group, streamed=True, block_size=100)
            if rank == 1:
                RowShardedOperator._affinity = no_room
            try:
                if when == "build":
                    lanczos_entropy(z, 2.0, 1, row_group=group)
                else:
                    streamed.rmatmat(x)
            except Exception as err:  # noqa: BLE001 - recorded for the test
                res[f"failed_{when}"] = (type(err).__name__, str(err))
            RowShardedOperator._affinity = own_rows
        res["after_failures"] = lanczos_entropy(z, 2.0, 1, row_group=group)
        solver.AUTO_CROSSOVER = 10 if rank == 0 else 10**6  # the ranks would choose differently
        res["auto"] = diffusion_spectral_entropy_details(z, 2.0, solver="auto", row_group=group).solver
        torch.save(res, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_two(worker, out) -> list:
    """``worker(rank, 2, port, out)`` in 2 spawned processes (rerun once if one died of a signal,
    :mod:`spawned`); what each saved."""
    def run(folder):
        folder.mkdir(parents=True, exist_ok=True)
        mp.spawn(worker, args=(2, _free_port(), str(folder)), nprocs=2, join=True)

    out = rerun_if_killed(run, out)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return spawn_two(_worker, tmp_path_factory.mktemp("rows"))


@pytest.mark.parametrize("name,kw", [("dense", {}), ("streamed", {}), ("alpha", dict(alpha=0.5)),
                                     ("streamed_alpha", dict(alpha=0.5))])
def test_sharded_products_and_traces_equal_the_whole_kernel(two_ranks, name, kw):
    z = _clustered(N)
    whole = KernelOperator.build(z, 2.0, **kw)
    x = torch.randn(5, N, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    want = whole.rmatmat(x)
    for rank, res in enumerate(two_ranks):
        xk, kx, trace, frob, nbytes = res[name]
        assert (xk - want).abs().max() <= 1e-10 and (kx.T - want).abs().max() <= 1e-10
        assert abs(trace - whole.trace) <= 1e-10 and abs(frob - whole.frobenius_sq) <= 1e-10
        rows = N // 2 + rank  # shares [0, 250) and [250, 501)
        held = rows if name in ("dense", "alpha") else min(rows, 64 if name == "streamed" else 100)
        assert nbytes == held * N * 8 + N * 6 * 8 + N * 8
    assert torch.equal(two_ranks[0][name][0], two_ranks[1][name][0])  # the same bytes on every rank


def test_sharded_estimate_equals_single_process_and_bounds_hold(two_ranks):
    z = _clustered(N)
    single = lanczos_entropy(z, 2.0, 1)
    exact = float(diffusion_spectral_entropy(z, 2.0, solver="exact"))
    a, b = two_ranks[0]["est"], two_ranks[1]["est"]
    assert (a.value, a.lower, a.upper) == (b.value, b.lower, b.upper)  # identical on both ranks
    assert abs(a.value - single.value) <= 1e-8 and abs(a.lower - single.lower) <= 1e-8
    assert a.lower <= exact <= a.upper and abs(a.value - exact) < 0.01
    assert a.storage == "dense-float64" and a.info["products"] == single.info["products"]
    t2 = two_ranks[0]["est_t2_streamed"]
    exact2 = float(diffusion_spectral_entropy(z, 2.0, 2, solver="exact"))
    assert t2.storage == "streamed-float64" and t2.lower <= exact2 <= t2.upper


def test_ranks_disagreeing_raise_on_every_rank_and_follow_rank_zero(two_ranks):
    for res in two_ranks:
        assert "diverged" in res["diverged"] and "same torch.set_num_threads" in res["diverged"]
        assert "memory" in res  # raised on both ranks, so neither waited for the other
        assert res["auto"] == "lanczos"  # rank 0's crossover of 10 points, not rank 1's of a million
    assert "another process" in two_ranks[0]["memory"]  # rank 0 had room: it names the other one
    assert "streamed kernel of N=501 points" in two_ranks[1]["memory"]  # its own sizes


def test_group_of_one_is_the_ordinary_operator():
    z = _clustered(300)
    one = RowGroup.single()
    op = RowShardedOperator.build(z, 2.0, one)
    whole = KernelOperator.build(z, 2.0)
    assert torch.allclose(op.to_dense(), whole.to_dense(), atol=1e-12, rtol=0)
    assert op.storage_bytes == 300 * 300 * 8 + 300 * 6 * 8 + 300 * 8
    assert lanczos_entropy(z, 2.0, 1, row_group=one).value == pytest.approx(lanczos_entropy(z, 2.0, 1).value,
                                                                            abs=1e-10)


def test_bad_groups_are_named():
    with pytest.raises(ValueError, match="rank must be an int in"):
        RowGroup(2, 2, lambda t: t)
    with pytest.raises(ValueError, match="world must be a positive int"):
        RowGroup(0, 0, lambda t: t)
    with pytest.raises(TypeError, match="must be callable"):
        RowGroup(0, 2, None)
    if not dist.is_initialized():
        with pytest.raises(RuntimeError, match="init_process_group first"):
            RowGroup.from_torch_distributed()
    unstacked = RowGroup(0, 2, lambda t: t)  # returns one tensor, not the ranks' stacked
    with pytest.raises(RuntimeError, match=r"must stack the 2 ranks' tensors as \[world, \*shape\]"):
        lanczos_entropy(_clustered(200), 2.0, 1, row_group=unstacked)
    with pytest.raises(ValueError, match="kNN kernel .* is not split over processes"):
        lanczos_entropy(_clustered(200), 2.0, 1, knn=10, row_group=RowGroup(0, 2, lambda t: t))


def test_a_rank_that_fails_its_rows_makes_every_rank_raise_and_the_next_solve_works(two_ranks):
    for when in ("build", "product"):
        assert two_ranks[1][f"failed_{when}"] == ("MemoryError", "no room on rank 1")
        kind, message = two_ranks[0][f"failed_{when}"]
        assert kind == "RuntimeError" and "another rank failed" in message
    assert two_ranks[0]["after_failures"].value == two_ranks[1]["after_failures"].value == two_ranks[0]["est"].value


def test_shares_of_a_narrow_kernel_are_built_step_by_step_and_equal_the_whole(two_ranks):
    whole = KernelOperator.build(_clustered(N), 0.3)
    x = torch.randn(5, N, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    want = whole.rmatmat(x)
    for res in two_ranks:
        distance_form, xk, trace, frob = res["narrow"]
        assert distance_form  # the factored form is used only where its exps stay accurate
        assert (xk - want).abs().max() <= 1e-10
        assert abs(trace - whole.trace) <= 1e-10 and abs(frob - whole.frobenius_sq) <= 1e-10
