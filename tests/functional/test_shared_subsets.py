"""DSMI's subset solves shared out between 2 real processes (gloo): the same terms as one process."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
from test_row_sharding import spawn_two

from dse_monitor.functional.mutual_information import diffusion_spectral_mutual_information_terms
from dse_monitor.functional.row_group import RowGroup
from dse_monitor.functional.shared_subsets import deal_subsets, shared_subset_entropies


def _data(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 5, (300,), generator=g)  # unequal groups
    return (3 * torch.randn(5, 8, generator=g)[y] + torch.randn(300, 8, generator=g)).to(dtype), y


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        group = RowGroup.from_torch_distributed()
        res: dict = {}
        for dtype in (torch.float32, torch.float64):
            z, y = _data(dtype)
            res[dtype] = diffusion_spectral_mutual_information_terms(z, groups=y, sigma=3.0, subset_group=group)
        solved = []

        def counting(subsets):
            subsets = list(subsets)
            solved.extend(len(s) for s in subsets)
            if rank == 1 and any(len(s) == 7 for s in subsets):
                raise MemoryError("no room on rank 1")
            return [torch.tensor(float(len(s))) for s in subsets]

        res["solved"] = (solved, [float(v) for v in shared_subset_entropies(counting, group)(
            [np.arange(m) for m in (5, 9, 3, 6)])])
        try:  # rank 1 alone fails: both raise, a MemoryError on both (the exact path's fallback)
            shared_subset_entropies(counting, group)([np.arange(m) for m in (7, 9, 3, 6)])
        except MemoryError as err:
            res["memory"] = str(err)
        torch.save(res, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return spawn_two(_worker, tmp_path_factory.mktemp("subsets"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shared_subset_solves_give_one_process_terms(two_ranks, dtype):
    z, y = _data(dtype)
    single = diffusion_spectral_mutual_information_terms(z, groups=y, sigma=3.0)
    for res in two_ranks:
        terms = res[dtype]
        assert terms.value.dtype == single.value.dtype
        for name in ("value", "conditional", "unconditional", "unconditional_draws", "weights"):
            assert torch.allclose(getattr(terms, name), getattr(single, name), rtol=1e-6, atol=0), name
    assert torch.equal(two_ranks[0][dtype].unconditional_draws, two_ranks[1][dtype].unconditional_draws)


def test_each_process_solves_its_deal_and_a_failure_raises_everywhere(two_ranks):
    owner = deal_subsets([5, 9, 3, 6], 2)
    for rank, res in enumerate(two_ranks):
        solved, values = res["solved"]
        assert solved[:len([o for o in owner if o == rank])] == [m for m, o in zip((5, 9, 3, 6), owner) if o == rank]
        assert values == [5.0, 9.0, 3.0, 6.0]  # every process holds every value
        assert "memory" in res
    assert "no room on rank 1" in two_ranks[1]["memory"] and "process 1 of 2" in two_ranks[0]["memory"]
