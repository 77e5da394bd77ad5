"""benchmarks/gpu.py stays runnable: it skips cleanly without CUDA and its logic runs on the CPU."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture()
def gpu_script(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import gpu  # noqa: PLC0415

    yield gpu
    for name in ("gpu", "approx", "_common"):
        sys.modules.pop(name, None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message printed without CUDA")
def test_skips_with_a_message_without_cuda(gpu_script, capsys):
    assert gpu_script.main([]) == 0
    assert "CUDA is not available" in capsys.readouterr().out


def test_dry_run_prints_the_table(gpu_script, capsys):
    before = torch.get_num_threads()
    try:
        assert gpu_script.main(["--dry-run", "--skip-monitor"]) == 0
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    for name in ("DSE N=300", "DSE N=600", "DSMI(Z;Y) N=600", "DSE lanczos N=1500"):
        assert name in out
    assert "contain=True" in out and "contain=False" not in out
    assert "nan" not in out.split("DSE lanczos N=1500")[1].split("|")[1]  # the large run produced a time
