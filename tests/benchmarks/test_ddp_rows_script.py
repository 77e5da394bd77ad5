"""benchmarks/ddp_rows.py stays runnable: a small N on 2 spawned gloo processes, bounds checked."""
from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def test_small_run_splits_the_rows_and_matches_one_process(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))
    import ddp_rows  # noqa: PLC0415

    try:
        assert ddp_rows.main(["--n", "600", "--exact-max", "600"]) == 0
    finally:
        sys.modules.pop("ddp_rows", None)
    out = capsys.readouterr().out
    assert "| rows x2, rank 1 |" in out and "bounds contain it: True" in out
    res = json.loads(out.strip().splitlines()[-1])
    assert [r["operator_bytes"] for r in res["ranks"]] == [300 * 600 * 8 + 600 * 64 * 8 + 600 * 8] * 2
    assert abs(res["ranks"][0]["value"] - res["single"]["value"]) < 1e-8
