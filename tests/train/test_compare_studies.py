"""`dse-monitor compare --plot info-plane | --plot layers | --correlate | --x step` on the event
files of real runs (the real LightningCLI, Trainer and DSEMonitor on the embedded digits, two
layers), their CSVs checked by hand; and the monitor's future layout (values at global steps
beside Lightning's `epoch` scalar) written with SummaryWriter, read like today's."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from dse_monitor.train.cli import main
from dse_monitor.train.compare import read_run

REPO = Path(__file__).resolve().parents[2]
DIGITS = str(REPO / "configs" / "digits.yaml")
LAYERS = ("dse/backbone.layer3", "dse/penultimate")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    base = tmp_path_factory.mktemp("study")
    for std in ("0.01", "0.1"):
        for seed in ("1", "2"):
            main(["fit", "--config", DIGITS, "--trainer.default_root_dir", str(base / f"std={std}_seed={seed}"),
                  "--model.init_std", std, "--seed_everything", seed, "--trainer.max_epochs", "2",
                  "--trainer.limit_train_batches", "2", "--trainer.log_every_n_steps", "1",
                  "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                  "--trainer.callbacks.init_args.num_samples", "100", "--data.image_size", "16",
                  "--trainer.callbacks.init_args.layers", "[backbone.layer3, penultimate]",
                  "--model.backbone_kwargs", '{"channels": [8, 16, 32, 64], "stem_width": 8}'])
    return base


def _runs(root):
    return {p.parent.parent.name: read_run(p) for p in sorted(root.glob("*/lightning_logs/version_0"))}


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_info_plane_is_the_mean_over_seeds_of_dsmi_x_and_dsmi_y(root, tmp_path, capsys):
    png = tmp_path / "plane.png"
    assert main(["compare", str(root), "--plot", "info-plane", "--group-by", "model.init_std",
                 "--layer", "penultimate", "--out", str(png)]) == 0
    assert "DSMI(Z;X)" in capsys.readouterr().out
    with Image.open(png) as im:
        assert im.format == "PNG"
    rows = _rows(tmp_path / "plane.csv")
    runs = _runs(root)
    assert len(rows) == 2 * 3  # two groups x epochs 0, 1, 2
    for row in rows:
        members = [r for name, r in runs.items() if name.startswith(f"std={row['group']}_")]
        assert len(members) == 2 and row["n_runs"] == "2" and row["layer"] == "dse/penultimate"
        e = int(row["epoch"])
        for axis in ("dsmi_x", "dsmi_y"):
            vals = [r.curves[f"dse/penultimate/{axis}"][e] for r in members]
            assert float(row[f"{axis}_mean"]) == pytest.approx(sum(vals) / 2, abs=1e-12)
            assert float(row[f"{axis}_std"]) == pytest.approx(abs(vals[0] - vals[1]) / math.sqrt(2), abs=1e-12)


def _pearson_by_hand(x, y):
    x, y = np.asarray(x, float), np.asarray(y, float)
    dx, dy = x - x.mean(), y - y.mean()
    r = float((dx * dy).sum() / math.sqrt((dx ** 2).sum() * (dy ** 2).sum()))
    t = r * math.sqrt((len(x) - 2) / (1 - r * r))
    return r, float(2 * stats.t.sf(abs(t), len(x) - 2))


def test_correlate_gives_pearson_and_spearman_over_all_points_and_per_group(root, tmp_path, capsys):
    out = tmp_path / "corr.csv"
    assert main(["compare", str(root), "--metric", "dse,dsmi_y", "--correlate", "val_acc",
                 "--group-by", "model.init_std", "--csv", str(out)]) == 0
    assert "pearson r" in capsys.readouterr().out
    points = _rows(tmp_path / "corr_points.csv")
    runs = {str(p.relative_to(root)): read_run(p) for p in root.glob("*/lightning_logs/version_0")}
    for p in points:  # every point is what the event files hold
        run = runs[p["run"]]
        assert float(p["value"]) == run.curves[p["metric"]][int(p["epoch"])]
        assert float(p["val_acc"]) == run.curves["val_acc"][int(p["epoch"])]
    coefficients = _rows(out)
    assert {(c["metric"], c["group"]) for c in coefficients} == {
        (f"{layer}/{m}", g) for layer in LAYERS for m in ("dse", "dsmi_y") for g in ("all", "0.01", "0.1")}
    for c in coefficients:
        sel = [p for p in points if p["metric"] == c["metric"] and c["group"] in ("all", p["group"])]
        assert int(c["n_points"]) == len(sel) == (8 if c["group"] == "all" else 4)  # runs x epochs 1, 2
        x, y = [float(p["value"]) for p in sel], [float(p["val_acc"]) for p in sel]
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            assert math.isnan(float(c["pearson_r"]))
            continue
        r, p_value = _pearson_by_hand(x, y)
        rho, rho_p = _pearson_by_hand(stats.rankdata(x), stats.rankdata(y))
        assert float(c["pearson_r"]) == pytest.approx(r, abs=1e-9)
        assert float(c["pearson_p"]) == pytest.approx(p_value, rel=1e-6, abs=1e-12)
        assert float(c["spearman_r"]) == pytest.approx(rho, abs=1e-9)
        assert float(c["spearman_p"]) == pytest.approx(rho_p, rel=1e-6, abs=1e-12)
    assert main(["compare", str(root), "--correlate", "probe_acc", "--group-by", "model.init_std"]) == 2
    assert "no run has the scalar 'probe_acc'" in capsys.readouterr().err


def test_layers_heat_map_has_one_row_per_layer(root, tmp_path):
    assert main(["compare", str(root), "--plot", "layers", "--metric", "dse,dsmi_y,dsmi_x",
                 "--group-by", "model.init_std", "--out", str(tmp_path / "layers.png")]) == 0
    rows = _rows(tmp_path / "layers.csv")
    runs = _runs(root)
    expected = {(lay, m) for lay in LAYERS for m in ("dse", "dsmi_y", "dsmi_x")}
    assert {(r["layer"], r["metric"]) for r in rows} == expected
    for row in rows:
        assert row["epoch"] == "2"  # the last epoch by default
        vals = [r.curves[f"{row['layer']}/{row['metric']}"][2] for n, r in runs.items()
                if n.startswith(f"std={row['group']}_")]
        assert float(row["mean"]) == pytest.approx(np.mean(vals), abs=1e-12)
    with Image.open(tmp_path / "layers.png") as im:
        assert im.format == "PNG"


def test_without_group_by_the_heat_map_is_one_panel_of_every_run_titled_by_its_axes(root, tmp_path):
    from dse_monitor.train.analyses import layer_heatmap

    out = layer_heatmap(root, ["dse", "dsmi_y"], None, out=tmp_path / "all.png", say=lambda *_: None)
    assert list(out["grids"]) == ["all runs"] and out["panels"] == ["4 run(s)"]  # no "model.init_std = None"
    assert "layers x metrics at epoch 2" in out["title"] and "by" not in out["title"].split(":")[0]
    assert out["grids"]["all runs"].shape == (len(LAYERS), 2)


def test_the_closing_table_of_a_two_layer_run_is_one_block_per_layer(root):
    from dse_monitor.train.summary import format_run_table

    lines = format_run_table(next(iter(_runs(root).values())).curves).splitlines()
    assert {line for line in lines if not line.startswith(" ")} == {"backbone.layer3", "penultimate"}
    assert sum(line.split() == ["epoch", "DSE(Z)", "DSMI(Z;Y)", "DSMI(Z;X)", "val_acc"] for line in lines) == 2


def test_x_step_plots_at_the_global_steps_where_lightning_logged_validation(root, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(["compare", str(root), "--metric", "dse", "--x", "step", "--group-by", "model.init_std",
                 "--out", str(tmp_path / "steps.png")]) == 0
    rows = _rows(tmp_path / "steps.csv")
    acc = EventAccumulator(str(next(root.glob("*/lightning_logs/version_0"))))
    acc.Reload()
    val_steps = sorted(e.step for e in acc.Scalars("val_acc"))
    assert len(val_steps) == 2 and val_steps[0] > 0
    for tag in ("dse/penultimate/dse", "val_acc"):
        steps = sorted({int(r["step"]) for r in rows if r["metric"] == tag})
        assert steps == ([0] if tag != "val_acc" else []) + val_steps


def test_monitor_values_at_global_steps_read_like_values_at_epochs(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    spe = 5  # steps per epoch
    old, new = tmp_path / "old", tmp_path / "new"
    dse = {0: 8.0, 1: 6.5, 2: 5.0, 3: 4.25}
    with SummaryWriter(str(old)) as w_old, SummaryWriter(str(new)) as w_new:
        for w in (w_old, w_new):
            for step in range(0, 3 * spe, 2):  # Lightning's training logs, with its epoch scalar
                w.add_scalar("train_loss_step", 1.0 / (step + 1), step)
                w.add_scalar("epoch", step // spe, step)
            for e in range(3):
                end = (e + 1) * spe - 1
                w.add_scalar("val_acc", 0.5 + 0.1 * e, end)
                w.add_scalar("epoch", e, end)
        for e, v in dse.items():
            w_old.add_scalar("dse/penultimate/dse", v, e)                                  # today: completed epochs
            w_new.add_scalar("dse/penultimate/dse", v, 0 if e == 0 else e * spe - 1)      # soon: global steps
    a, b = read_run(old), read_run(new)
    assert a.curves["dse/penultimate/dse"] == b.curves["dse/penultimate/dse"] == pytest.approx(dse)
    assert a.curves["val_acc"] == b.curves["val_acc"] == pytest.approx({1: 0.5, 2: 0.6, 3: 0.7})
    assert b.step_of_epoch == {0: 0, 1: 4, 2: 9, 3: 14}
