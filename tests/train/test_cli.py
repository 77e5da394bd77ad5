"""`dse-monitor fit | sweep | compare` for real: LightningCLI on the shipped digits.yaml with
tiny overrides, a real Trainer with the real DSEMonitor, real event files read back; a sweep
of real subprocess runs (one of which fails) followed by compare writing PNG and CSV."""
from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from dse_monitor.train.cli import format_run_table, main
from dse_monitor.train.compare import read_run

REPO = Path(__file__).resolve().parents[2]
DIGITS = str(REPO / "configs" / "digits.yaml")
TINY = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.callbacks.init_args.num_samples", "100", "--data.image_size", "16"]


def test_fit_logs_every_epoch_from_0_and_prints_where_and_a_table(tmp_path, capsys):
    root = tmp_path / "run"
    main(["fit", "--config", DIGITS, "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "3",
          "--trainer.default_root_dir", str(root), "--model.init_std", "0.1", "--seed_everything", "3",
          "--model.backbone_kwargs", '{"channels": [8, 16, 32, 64], "stem_width": 8}', *TINY])
    printed = capsys.readouterr().out
    log_dir = root / "lightning_logs" / "version_0"
    assert f"dse-monitor: logs in {log_dir}" in printed
    assert f"tensorboard --logdir {root}" in printed
    run = read_run(log_dir)
    for metric in ("dse", "dsmi_y", "dsmi_x"):
        assert sorted(run.curves[f"dse/penultimate/{metric}"]) == [0, 1, 2]  # epoch 0 = at init
    assert sorted(run.curves["val_acc"]) == [1, 2]
    assert all(0 <= v <= math.log2(100) + 1e-6 for v in run.curves["dse/penultimate/dse"].values())
    assert format_run_table(run.curves) in printed  # the closing table is what was logged
    assert "epoch  DSE(Z)  DSMI(Z;Y)  DSMI(Z;X)  val_acc" in printed
    # overrides reached the model and the run records them as hyperparameters
    assert run.get("model.init_std") == 0.1 and run.get("seed_everything") == 3
    config = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert config["model"]["init_std"] == 0.1 and config["seed_everything"] == 3
    hparams = yaml.safe_load((log_dir / "hparams.yaml").read_text())
    assert hparams["num_classes"] == 10 and hparams["img_size"] == 16  # the model took them from the data
    assert hparams["in_chans"] == 3 and hparams["model.in_chans"] == 3
    assert hparams["model.init_std"] == 0.1 and hparams["data.dataset"] == "digits"


def test_closing_table_without_a_tensorboard_logger_comes_from_the_monitor_history():
    import lightning.pytorch as pl

    from dse_monitor import DSEMonitor
    from dse_monitor.train.cli import run_table

    monitor = DSEMonitor()
    monitor.history = {0: {"dse/penultimate/dse": 8.25}, 1: {"dse/penultimate/dse": 5.5}}
    trainer = pl.Trainer(logger=False, callbacks=[monitor], enable_progress_bar=False)
    table = run_table(trainer)
    assert "epoch  DSE(Z)" in table and "    0   8.250" in table and "    1   5.500" in table


def _console(*args: str) -> list[str]:
    return [sys.executable, "-m", "dse_monitor", *args]  # what the dse-monitor script runs


def test_overview_names_the_subcommands(capsys):
    assert main(["--help"]) == 0 and main([]) == 2
    out = capsys.readouterr().out
    assert "fit" in out and "sweep" in out and "compare" in out


def test_sweep_runs_the_grid_survives_a_failed_run_and_compare_draws_it(tmp_path, capsys):
    root = tmp_path / "init"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        _console("sweep", "--config", DIGITS, "--grid", "model.init_std=0.01,0.1,-1", "--seeds", "1",
                 "--root", str(root), "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", *TINY),
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr[-3000:]  # one run failed ...
    assert "[sweep 3/3] init_std=-1_seed=1: FAILED" in out
    assert "2 of 3 runs finished" in out and "failed runs: init_std=-1_seed=1" in out
    summary = json.loads((root / "sweep.json").read_text())
    assert [r["returncode"] == 0 for r in summary["runs"]] == [True, True, False]
    assert "--trainer.max_epochs" in summary["runs"][0]["command"]  # extra args passed through

    png, table = tmp_path / "fig.png", tmp_path / "fig.csv"
    assert main(["compare", str(root), "--metric", "dse,dsmi_y", "--group-by", "model.init_std",
                 "--out", str(png)]) == 0
    printed = capsys.readouterr().out
    assert "DSE(Z)" in printed and "model.init_std" in printed
    with Image.open(png) as im:
        assert im.format == "PNG"
    rows = list(csv.DictReader(open(table)))
    dse = {(r["group"], r["epoch"]): float(r["mean"]) for r in rows if r["metric"] == "dse/penultimate/dse"}
    assert set(dse) == {("0.01", "0"), ("0.01", "1"), ("0.1", "0"), ("0.1", "1")}
    assert dse[("0.01", "0")] < 0.1 and dse[("0.1", "0")] > dse[("0.01", "0")] + 3  # collapse vs spread
    assert any(r["metric"] == "val_acc" for r in rows)


def test_closing_table_takes_the_accuracy_from_the_run_and_the_epoch_an_entry_carries():
    import lightning.pytorch as pl

    from dse_monitor import DSEMonitor
    from dse_monitor.train.cli import run_table
    from dse_monitor.train.scalars import EpochScalars

    monitor = DSEMonitor()
    # today's entries (step = completed epochs) and an entry at a global step that says its epoch
    monitor.history = {0: {"dse/penultimate/dse": 8.25}, 70: {"epoch": 1, "dse/penultimate/dse": 5.5}}
    scalars = EpochScalars()
    scalars.history = {"val_acc": {1: 0.75}}
    trainer = pl.Trainer(logger=False, callbacks=[monitor, scalars], enable_progress_bar=False)
    lines = run_table(trainer).splitlines()
    assert lines[1:] == ["epoch  DSE(Z)  val_acc", "    0   8.250        -", "    1   5.500    0.750"]


def test_closing_table_of_many_layers_and_metrics_keeps_lines_under_120_columns():
    from dse_monitor.registry import METRICS

    layers = ["backbone.layer2", "backbone.layer3", "backbone.layer4", "penultimate"]
    curves = {f"dse/{lay}/{m}": {0: 8.49, 1: -0.0001, 20: 12.345} for lay in layers for m in METRICS}
    curves.update({"dse/penultimate/sigma_ratio": {0: 0.5}, "val_acc": {1: 0.5, 20: 0.99}, "probe_acc": {20: 0.9}})
    lines = format_run_table(curves).splitlines()
    assert max(len(line) for line in lines) < 120
    assert [line for line in lines if not line.startswith(" ")] == layers  # one block per layer, in order
    # each layer's columns, wrapped onto several tables that each lead with the epochs
    per_layer = [b for b in re.split(r"^(?! )", "\n".join(lines), flags=re.M) if b.strip()]
    assert len(per_layer) == len(layers)
    for block in per_layer:
        headers = [re.split(r"\s{2,}", line.strip()) for line in block.splitlines() if line.strip().startswith("epoch")]
        assert all(h[0] == "epoch" for h in headers) and len(headers) > 1
        assert [c for h in headers for c in h[1:]] == [*(m.title for m in METRICS.values()), "val_acc", "probe_acc"]
    assert "sigma_ratio" not in "\n".join(lines) and "-0.000" not in "\n".join(lines)


def test_recorded_accuracies_are_only_those_logged_in_each_validation(tmp_path):
    import lightning.pytorch as pl
    import torch

    from dse_monitor.train.scalars import EpochScalars

    class EveryOther(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).pow(2).mean()

        def validation_step(self, batch, batch_idx):
            self.log("val_acc", 0.1 * (self.current_epoch + 1))
            if self.current_epoch % 2 == 1:
                self.log("probe_acc", 0.5 + self.current_epoch)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=4)
    scalars = EpochScalars()
    trainer = pl.Trainer(max_epochs=4, logger=False, callbacks=[scalars], enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(EveryOther(), data, data)
    assert scalars.history["val_acc"] == pytest.approx({1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4})
    assert scalars.history["probe_acc"] == pytest.approx({2: 1.5, 4: 3.5})  # not carried over to 3


def test_fit_under_ddp_relaunches_the_command_in_each_process(tmp_path):
    # Lightning's DDP launcher starts rank 1 as `python <sys.argv[0]> <args>`: the console script's own
    # path must still be argv[0] while LightningCLI runs (it was "dse-monitor", a file in no folder)
    root = tmp_path / "ddp"
    exe = Path(sys.executable).with_name("dse-monitor")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [str(exe), "fit", "--config", DIGITS, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
         "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
         "--trainer.default_root_dir", str(root), "--model.backbone_kwargs",
         '{"channels": [8, 16, 32, 64], "stem_width": 8}', *TINY],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    run = read_run(root / "lightning_logs" / "version_0")
    for metric in ("dse", "dsmi_y", "dsmi_x"):
        assert sorted(run.curves[f"dse/penultimate/{metric}"]) == [0, 1]
    assert "epoch  DSE(Z)  DSMI(Z;Y)  DSMI(Z;X)  val_acc" in done.stdout
