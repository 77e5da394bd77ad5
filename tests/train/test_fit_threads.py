"""`dse-monitor fit` gives torch one thread per core the process may use, unless the user chose."""
from __future__ import annotations

import os

import torch

from dse_monitor.train.fit import set_default_threads


def test_threads_follow_the_cores_the_process_may_use_unless_omp_num_threads_is_set(monkeypatch):
    before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0))
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
        torch.set_num_threads(cores + 3)  # a default that counts cores this process may not use
        assert set_default_threads() == cores and torch.get_num_threads() == cores
        assert set_default_threads() is None  # already right: nothing changed, nothing said
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        torch.set_num_threads(3)
        assert set_default_threads() is None and torch.get_num_threads() == 3  # the user's choice stays
    finally:
        torch.set_num_threads(before)
