"""benchmarks/gpu.py stays runnable: it skips cleanly without CUDA and its logic runs on the CPU."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture()
def gpu_script(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import gpu  # noqa: PLC0415

    before = torch.get_num_threads()
    yield gpu
    torch.set_num_threads(before)
    for name in ("gpu", "approx", "_common"):
        sys.modules.pop(name, None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message printed without CUDA")
def test_skips_with_a_message_without_cuda(gpu_script, capsys):
    assert gpu_script.main([]) == 0
    assert "CUDA is not available" in capsys.readouterr().out


def test_dry_run_measures_the_protocol_and_writes_the_table(gpu_script, capsys, tmp_path):
    out = tmp_path / "gpu.json"
    assert gpu_script.main(["--dry-run", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert {"device", "torch", "cuda", "lightning"} <= set(result)
    assert [r["setting"] for r in result["protocol"]] == ["dataset", "val_workers", "reuse"]
    for row in result["protocol"]:
        # at init and after each of the 2 epochs; each epoch holds its measurement
        assert len(row["monitor_s"]) == 3 and len(row["epoch_s"]) == 2 and row["measurements"] == 3
        assert all(0 < share < 1 for share in row["share"]) and f"| {row['setting']:11s} |" in printed
        assert any(note.startswith("keeping the probe batches in host memory") for note in row["notes"])
    assert any("checked once" in note for note in result["protocol"][2]["notes"])  # reuse took over
    assert "| reuse " in (tmp_path / "gpu.md").read_text()


def test_dry_run_prints_the_solvers_table(gpu_script, capsys):
    assert gpu_script.main(["--dry-run", "--settings", "solvers"]) == 0
    out = capsys.readouterr().out
    for name in ("DSE N=300", "DSE N=600", "DSMI(Z;Y) N=600 D=16 equal groups", "DSMI(Z;Y) N=600 D=16 unequal groups",
                 "eigvalsh 100 x 100", "eigvalsh 200 x 200"):
        assert f"| {name}" in out
    assert "contain=True" in out and "contain=False" not in out
    large = [line for line in out.splitlines() if line.startswith("| DSE lanczos N=1500")]
    assert [line.split("|")[1].split("D=16")[1].strip() for line in large] == [
        "default plan", "dense float32", "streamed float32", "streamed float64"]
    for line in large:  # each storage produced a time and its storage
        assert "nan" not in line.split("|")[2]
    assert "dense-float32" in large[1] and "streamed-float32" in large[2] and "streamed-float64" in large[3]
    with pytest.raises(SystemExit):
        gpu_script.main(["--dry-run", "--settings", "reuse,nope"])
