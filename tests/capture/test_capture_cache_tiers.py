"""Where kept probe batches go: the budgets, the host tier on a CPU-only machine, an allocation that fails."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from dse_monitor.capture.cache import BatchRecorder, CacheBudget, CachedBatches, Tier, describe_budget, plan_cache
from dse_monitor.functional.operator import available_memory

CPU = torch.device("cpu")


def test_on_the_cpu_batches_stay_in_host_memory_within_the_ram_budget():
    ram = available_memory("cpu")
    tier = plan_cache(2**20, CPU)
    assert tier.where == "host" and 0.2 * ram < tier.limit_bytes <= 0.25 * ram * 1.05
    assert plan_cache(int(0.3 * ram), CPU) is None  # over a quarter of the available RAM
    assert plan_cache(int(0.3 * ram), CPU, unlimited=True).limit_bytes is None  # cache_inputs=True
    # the host's processes share the budget
    assert plan_cache(int(0.2 * ram), CPU) is not None and plan_cache(int(0.2 * ram), CPU, host_processes=2) is None
    assert plan_cache(1000, CPU, CacheBudget(host_share=1e-9)) is None
    assert describe_budget(CPU).startswith("host: 25% of available RAM = ")


@dataclass(frozen=True)
class FailsOnSecondCopy(Tier):
    """A tier whose allocation fails on the second batch, as a full device would."""

    def keep(self, t):
        if t.numel() == 4 and t.dtype == torch.float32 and float(t[0]) == 4.0:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (in the test)")
        return super().keep(t)


def test_an_allocation_failure_drops_the_cache_and_the_pass_goes_on():
    loader = DataLoader(TensorDataset(torch.arange(10.0)), batch_size=4)
    recorder = BatchRecorder(loader, None, FailsOnSecondCopy("host", None, CPU))
    assert [b[0].tolist() for b in recorder] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]  # every batch still seen
    assert recorder.batches is None and isinstance(recorder.error, torch.cuda.OutOfMemoryError)


def test_kept_batches_keep_their_dtype_and_replays_are_copies():
    loader = DataLoader(TensorDataset(torch.arange(6, dtype=torch.uint8), torch.arange(6.0).double()), batch_size=4)
    recorder = BatchRecorder(loader, limit_bytes=None, tier=plan_cache(1024, CPU))
    list(recorder)
    cached = CachedBatches(recorder.batches, recorder.tier)
    for x, y in cached:
        assert (x.dtype, y.dtype) == (torch.uint8, torch.float64)
        x.zero_()  # a model that writes into its inputs
    assert torch.cat([x for x, _ in cached]).tolist() == list(range(6))
    moved = cached.moved(Tier("host", None, CPU))  # another tier: a copy, the batches are equal
    assert [b[0].tolist() for b in moved] == [[0, 1, 2, 3], [4, 5]] and moved.batches[0][0] is not cached.batches[0][0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the device and pinned tiers need CUDA")
def test_with_cuda_the_device_tier_comes_first_then_pinned_memory_and_replays_are_copies():
    gpu = torch.device("cuda", torch.cuda.current_device())
    assert plan_cache(2**20, gpu).where == "device"
    assert plan_cache(2**20, gpu, device_allowed=False).where == "pinned"  # before training has run
    assert plan_cache(2**20, gpu, CacheBudget(device_share=1e-12)).where == "pinned"
    x = torch.arange(8, dtype=torch.int16)
    for where in ("device", "pinned"):
        tier = Tier(where, None, gpu)
        kept = tier.keep(x)
        assert kept.dtype == torch.int16 and (kept.is_pinned() if where == "pinned" else kept.device == gpu)
        replay = tier.replay(kept)
        replay.zero_()  # the model writes into its inputs: the kept copy stays
        assert replay.device == gpu and kept.cpu().tolist() == list(range(8))
