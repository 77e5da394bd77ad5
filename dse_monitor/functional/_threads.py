"""Torch thread counts for a block of code: one thread for small LAPACK calls, or a set count.

Both are per calling thread (torch keeps one count per thread) and restored afterwards.
"""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` torch threads (0: leave the count as it is).

    >>> with torch_threads(1):
    ...     torch.get_num_threads()
    1
    """
    before = torch.get_num_threads()
    if n and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n and n != before:
            torch.set_num_threads(before)


def one_thread():
    """Run small LAPACK calls (QR of N x b, eigh of the projected matrices) on one thread.

    They are too small to gain from a second thread, and on a busy machine OpenMP's
    barriers make them 10-100x slower with two (measured: eigh of 512 x 512 takes
    0.05 s on one thread and up to 10 s on two when other processes load the cores).
    """
    return torch_threads(1)
