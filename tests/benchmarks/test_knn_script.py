"""benchmarks/knn.py stays runnable: --quick runs its cases on the CPU in seconds."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def test_quick_run_prints_the_cases_and_the_bounds_hold(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))
    import knn  # noqa: PLC0415

    before = torch.get_num_threads()
    try:
        assert knn.main(["--quick", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(before)
        sys.modules.pop("knn", None)
    out = capsys.readouterr().out
    assert "case=N=5000 D=16 cpu" in out and "peak_gib=" in out
    assert "contain=True" in out
