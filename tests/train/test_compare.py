"""`dse-monitor compare` on real TensorBoard event files written by Lightning's
TensorBoardLogger the way a run writes them: the monitor's curves stepped by epoch,
val_acc stepped by global step with Lightning's `epoch` scalar beside it."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from dse_monitor.train.cli import main
from dse_monitor.train.compare import compare, read_run

STEPS_PER_EPOCH = 7


def _value(std: float, seed: int, epoch: int) -> float:
    return (8.0 if std >= 0.1 else 0.0) + 0.5 * epoch + 0.1 * seed


def _write_run(root: Path, name: str, std: float, seed: int, epochs: int, config: bool = True) -> Path:
    logger = TensorBoardLogger(save_dir=str(root), name=name, version="")
    for e in range(epochs + 1):
        logger.log_metrics({"dse/penultimate/dse": _value(std, seed, e),
                            "dse/penultimate/dsmi_y": 0.1 * e * seed}, step=e)
    for e in range(epochs):  # val_acc logged at the end of epoch e (0-based), global step based
        logger.log_metrics({"val_acc": 0.5 + 0.1 * e + 0.01 * seed, "epoch": e}, step=(e + 1) * STEPS_PER_EPOCH - 1)
    logger.finalize("success")
    if config:
        with open(Path(logger.log_dir) / "config.yaml", "w") as f:
            yaml.safe_dump({"seed_everything": seed, "model": {"init_std": std, "backbone": "resnet18"}}, f)
    return Path(logger.log_dir)


@pytest.fixture
def root(tmp_path):
    for std in (0.01, 0.1):
        for seed in (1, 2, 3):
            _write_run(tmp_path, f"std={std}_seed={seed}", std, seed, epochs=3)
    return tmp_path


def test_read_run_maps_val_acc_to_completed_epochs(root):
    run = read_run(root / "std=0.1_seed=2", root)
    assert run.curves["dse/penultimate/dse"] == pytest.approx({e: _value(0.1, 2, e) for e in range(4)})
    assert run.curves["val_acc"] == pytest.approx({1: 0.52, 2: 0.62, 3: 0.72})
    assert run.get("model.init_std") == 0.1 and run.get("init_std") == 0.1 and run.get("seed_everything") == 2


def test_compare_groups_by_hyperparameter_mean_std_over_seeds(root, tmp_path):
    said = []
    out = compare(root, ["dse", "dsmi_y"], "model.init_std", out=tmp_path / "fig.png", say=said.append)
    curves = out["curves"]
    assert list(curves) == ["dse/penultimate/dse", "dse/penultimate/dsmi_y", "val_acc"]
    for std in (0.01, 0.1):
        for e in range(4):
            vals = [_value(std, s, e) for s in (1, 2, 3)]
            mean, sd, n = curves["dse/penultimate/dse"][std][e]
            assert (mean, sd, n) == pytest.approx((np.mean(vals), np.std(vals, ddof=1), 3))
    assert curves["val_acc"][0.1][3][0] == pytest.approx(0.72)
    rows = list(csv.DictReader(open(tmp_path / "fig.csv")))
    assert {r["group"] for r in rows} == {"0.01", "0.1"}
    dse0 = [r for r in rows if r["metric"] == "dse/penultimate/dse" and r["epoch"] == "0" and r["group"] == "0.1"]
    assert float(dse0[0]["mean"]) == pytest.approx(8.2) and dse0[0]["n_runs"] == "3"
    with Image.open(tmp_path / "fig.png") as im:
        assert im.format == "PNG" and im.size[0] > 2 * im.size[1]  # three panels side by side
    table = said[0]
    assert "DSE(Z)" in table and "model.init_std" in table and "8.200±0.100" in table


def test_unreadable_partial_and_unlabelled_runs_are_named_and_skipped(root, tmp_path):
    _write_run(root, "crashed_early", 0.1, 4, epochs=1)                 # partial
    _write_run(root, "no_config", 0.1, 5, epochs=3, config=False)       # no hyperparameter
    broken = root / "broken"
    broken.mkdir()
    (broken / "events.out.tfevents.123.host.0").write_bytes(b"\x00garbage, not a record")
    said = []
    out = compare(root, ["dse"], "model.init_std", out=tmp_path / "f.png", say=said.append)
    text = "\n".join(said)
    assert "skipped broken: unreadable" in text
    assert "skipped crashed_early: partial" in text
    assert "skipped no_config: no hyperparameter 'model.init_std'" in text
    assert len(out["runs"]) == 6


def test_a_rerun_with_the_same_hyperparameters_replaces_the_older_run(root, tmp_path):
    import os
    import time

    older = root / "std=0.1_seed=1"
    past = time.time() - 100
    for f in older.glob("events.out.tfevents.*"):
        os.utime(f, (past, past))
    rerun = _write_run(root, "rerun_of_std=0.1_seed=1", 0.1, 1, epochs=3)
    said = []
    out = compare(root, ["dse"], "model.init_std", out=tmp_path / "f.png", say=said.append)
    assert f"skipped std=0.1_seed=1: same hyperparameters as the newer {rerun.name}" in said
    assert out["curves"]["dse/penultimate/dse"][0.1][0][2] == 3


def test_compare_command_line(root, tmp_path, capsys):
    assert main(["compare", str(root), "--metric", "dse", "--group-by", "model.init_std",
                 "--out", str(tmp_path / "cli.png")]) == 0
    printed = capsys.readouterr().out
    assert (tmp_path / "cli.png").is_file() and (tmp_path / "cli.csv").is_file()
    assert "validation accuracy" in printed or "val_acc" in printed
    assert main(["compare", str(root), "--metric", "nonsense", "--group-by", "model.init_std"]) == 2
    assert "no run has the metric 'nonsense'" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "empty"), "--metric", "dse"]) == 2
