"""Shared test fixtures."""
from __future__ import annotations

import importlib
import warnings

import pytest
import torch


@pytest.fixture(scope="session")
def ref():
    """The published reference package ``dse-dsmi`` 1.1, the numerical oracle.

    Its import runs ``warnings.filterwarnings("ignore")`` globally; import it inside
    ``catch_warnings`` so that it cannot silence warnings elsewhere in the suite.
    """
    with warnings.catch_warnings():
        dse = importlib.import_module("dse_dsmi.dse")
        dsmi = importlib.import_module("dse_dsmi.dsmi")
    return dse, dsmi


@pytest.fixture(autouse=True)
def _two_threads():
    # The CI machine has 2 cores; keep BLAS threads pinned so timings and results are stable.
    n = torch.get_num_threads()
    torch.set_num_threads(min(n, 2))
    yield
    torch.set_num_threads(n)


def _count_hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture
def count_hooks():
    """``count_hooks(model)``: forward hooks and pre-hooks left on any module of ``model``."""
    return _count_hooks
