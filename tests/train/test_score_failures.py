"""`dse-monitor score` when every model fails: the table and failures.csv, exit status 1 (no crash
on the files that describe the scored models)."""
from __future__ import annotations

import csv
from pathlib import Path

from dse_monitor.train.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_every_model_failing_writes_failures_csv_prints_the_table_and_exits_1(tmp_path, capsys):
    models = []
    for name in ("a.ckpt", "b.ckpt"):
        (tmp_path / name).write_bytes(b"not a checkpoint")  # a real file that torch cannot load
        models.append(str(tmp_path / name))
    out = tmp_path / "new" / "scores"  # a folder that does not exist yet
    status = main(["score", *models, "--config", str(REPO / "configs" / "digits.yaml"), "--out", str(out),
                   "--data.image_size", "8", "--num-samples", "40", "--x-size", "none", "--metrics", "dse,dsmi_y"])
    printed = capsys.readouterr()
    assert status == 1
    assert "Errno" not in printed.out + printed.err
    with open(out / "failures.csv", newline="") as f:
        failures = list(csv.DictReader(f))
    assert [r["model"] for r in failures] == models and all(r["error"] for r in failures)
    assert "accuracy" in printed.out and "DSMI(Z;Y)" in printed.out  # the table's header
    assert printed.out.count("FAILED") == 2 and "no model could be scored" in printed.out
    assert all(f"{m}: " in printed.err for m in models)
    assert not (out / "scores.csv").exists()
