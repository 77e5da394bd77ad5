"""Under DDP each rank computes its share of the metrics; every rank ends with one process's values."""
from __future__ import annotations

import json
import math

import lightning.pytorch as L
import pytest
import torch
from dse_callback_models import LitClassifier, WritesLastMeasurement, deep_mlp, trainer_kwargs
from spawned import rerun_if_killed

from dse_monitor import DSEMonitor

LAYERS = ["net.2", "net.4", "net.6", "net.8"]  # the four ReLUs


def _fit(root, split=True, layers=LAYERS, metrics=("dse", "dse_norm", "dsmi_y"), **kw):
    torch.manual_seed(5)
    # lr=0: the model stays identical whatever the batch split, so every run measures the same network
    model = LitClassifier(net=deep_mlp(), n_train=64, n_val=64, lr=0.0)
    monitor = DSEMonitor(layers=layers, num_samples=48, metrics=list(metrics), sigma="median_init",
                         split_over_ranks=split, at_init=False)
    L.Trainer(callbacks=[monitor, WritesLastMeasurement(monitor, root / "last")],
              **trainer_kwargs(root, max_epochs=1, **kw)).fit(model)


def _run(root, **kw):
    root = rerun_if_killed(lambda r: _fit(r, **kw), root)
    return {p.stem: json.loads(p.read_text()) for p in sorted((root / "last").glob("*.json"))}


def test_ranks_split_the_units_and_every_rank_holds_the_single_process_values(tmp_path):
    single = _run(tmp_path / "single")["rank0"]
    split = _run(tmp_path / "split", strategy="ddp_spawn", devices=2)
    alone = _run(tmp_path / "alone", split=False, strategy="ddp_spawn", devices=2)["rank0"]
    assert set(split) == {"rank0", "rank1"}
    # both ranks computed units (4 layers x dse, dsmi_y dealt by cost), and they agree on who did what
    assert split["rank0"]["computed_by"] == split["rank1"]["computed_by"]
    assert set(split["rank0"]["computed_by"].values()) == {0, 1}
    assert sorted(split["rank0"]["computed_by"]) == sorted(f"{layer}/{m}" for layer in LAYERS
                                                           for m in ("dse", "dsmi_y"))
    assert set(alone["computed_by"].values()) == {0}
    # every rank holds the same values, in the same order, as rank 0 computing all of them alone (up to
    # LAPACK rounding: each process measures which library solves a kind fastest, functional/backend.py)
    assert split["rank0"]["values"] == split["rank1"]["values"]
    assert list(split["rank0"]["values"]) == list(alone["values"])
    for key, value in alone["values"].items():
        assert split["rank0"]["values"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    keys = [f"dse/{layer}/{name}" for layer in LAYERS for name in ("dse", "dse_norm", "dsmi_y", "sigma_ratio")]
    assert sorted(k for k in single["values"] if not k.endswith("/sigma")) == sorted(keys)
    for key, value in single["values"].items():  # the forward pass on another batch split: float32 rounding
        assert math.isfinite(value)
        assert split["rank0"]["values"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_one_layers_dsmi_is_computed_by_both_ranks_each_solving_its_share_of_the_subsets(tmp_path):
    kw = dict(layers=["net.8"], metrics=("dsmi_y", "cse"))
    single = _run(tmp_path / "single", **kw)["rank0"]
    split = _run(tmp_path / "split", strategy="ddp_spawn", devices=2, **kw)
    # two units on two ranks: DSMI (costlier) shared out beats dealing whole units
    assert split["rank0"]["computed_by"] == split["rank1"]["computed_by"]
    assert split["rank0"]["computed_by"]["net.8/dsmi_y"] == -1 and split["rank0"]["computed_by"]["net.8/cse"] in (0, 1)
    assert split["rank0"]["values"] == split["rank1"]["values"]
    assert sorted(split["rank0"]["values"]) == sorted(single["values"])
    for key, value in single["values"].items():
        assert split["rank0"]["values"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
