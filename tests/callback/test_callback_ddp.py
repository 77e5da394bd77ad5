"""DDP on 2 CPU processes (gloo): each rank probes its share, values equal the single-process run."""
from __future__ import annotations

import csv
import json

import lightning.pytorch as L
import pytest
import torch
from dse_callback_models import FailsOnRank1, LitClassifier, TinyCNN, trainer_kwargs
from dse_counting import CountedValidation, CountingImages, ReadLog
from lightning.pytorch.loggers import CSVLogger
from spawned import rerun_if_killed

from dse_monitor import DSEMonitor

METRICS = ["dse", "dsmi_y", "dsmi_x"]


def _model():
    torch.manual_seed(11)
    # lr=0 and frozen BatchNorm statistics: the model stays identical whatever the batch split
    # (under DDP each rank would otherwise update its own running statistics), so every epoch
    # of the two runs is comparable
    net = TinyCNN()
    net.features[1].momentum = 0.0
    return LitClassifier(net=net, n_train=64, n_val=64, lr=0.0)


def _fit(root, **kw):
    monitor = DSEMonitor(num_samples=41, batch_size=8, metrics=METRICS, sigma=1.0, save_raw=True)  # 41: uneven shares
    # a second monitor whose probe pass fails on rank 1 alone at step 1 (call 3: peek, step 0, step 1; no
    # validation reuse, whose hooks would call batch_fn too)
    flaky = DSEMonitor(num_samples=16, batch_size=8, metrics="dse", prefix="flaky", batch_fn=FailsOnRank1(3),
                       reuse_validation=False)
    # every optimizer step: each rank must decide identically, or the gather would hang
    steps = DSEMonitor(num_samples=16, batch_size=8, metrics="dse", prefix="steps", every_n_train_steps=1)
    logger = CSVLogger(str(root), name="csv")
    L.Trainer(callbacks=[monitor, flaky, steps], **trainer_kwargs(root, max_epochs=2, logger=logger, **kw)).fit(
        _model())


def _run(root, **kw):
    root = rerun_if_killed(lambda r: _fit(r, **kw), root)
    history = json.loads((root / "csv" / "version_0" / "dse_monitor" / "history.json").read_text())
    with open(root / "csv" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    flaky_epochs = [int(float(r["flaky/epoch"])) for r in rows if r.get("flaky/penultimate/dse")]
    step_cadence = [int(r["step"]) for r in rows if r.get("steps/penultimate/dse")]
    return flaky_epochs, history, [r for r in rows if r.get("dse/penultimate/dse")], step_cadence


def test_ddp_spawn_two_cpu_processes_match_single_process(tmp_path):
    flaky_single, single, single_rows, steps_single = _run(tmp_path / "single")
    flaky_ddp, ddp, rows, steps_ddp = _run(tmp_path / "ddp", strategy="ddp_spawn", devices=2)
    # logged once per measurement, by rank 0 only, at the trainer's step: 64 samples in batches of 32
    # make 2 optimizer steps an epoch on one process and 1 per rank under DDP
    assert [float(r["dse/epoch"]) for r in rows] == [0, 1, 2]
    assert [int(r["step"]) for r in single_rows] == [0, 1, 3] and [int(r["step"]) for r in rows] == [0, 0, 1]
    assert steps_single == [0, 0, 1, 2, 3] and steps_ddp == [0, 0, 1]  # at init, then after every step
    # a failure on one rank skips that step on all ranks (no deadlock, no dead run), then measuring resumes
    assert flaky_single == [0, 1, 2] and flaky_ddp == [0, 2]
    assert ddp["indices"] == single["indices"] and len(ddp["indices"]) == 41
    assert [r["step"] for r in ddp["history"]] == [0, 1, 2]
    for a, b in zip(single["history"], ddp["history"]):
        assert (a["epoch"], b["epoch"]) == (a["step"], b["step"])
        for key in (k for k in a if k.startswith("dse/")):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key


def _counted_model():
    torch.manual_seed(11)
    net = TinyCNN()
    net.features[1].momentum = 0.0  # as in _model(): identical whatever the batch split
    # 63 validation samples: DistributedSampler pads rank 1's shard with sample 0, which rank 0 also visits
    return CountedValidation(CountingImages.like(63), net=net, n_train=64, batch_size=16, lr=0.0)


def _fit_reuse(root, **kw):
    monitor = DSEMonitor(num_samples=None, metrics=["dse", "dsmi_y"], sigma=1.0, cache_inputs=False, save_raw=True)
    logger = CSVLogger(str(root), name="csv")
    L.Trainer(callbacks=[monitor, ReadLog(root / "reads")], **trainer_kwargs(root, max_epochs=3, logger=logger,
                                                                              **kw)).fit(_counted_model())


def _run_reuse(root, **kw):
    root = rerun_if_killed(lambda r: _fit_reuse(r, **kw), root)
    history = json.loads((root / "csv" / "version_0" / "dse_monitor" / "history.json").read_text())["history"]
    return history, {p.stem: json.loads(p.read_text()) for p in sorted((root / "reads").glob("*.json"))}


def test_ddp_reuse_reads_each_ranks_validation_shard_in_probe_order(tmp_path):
    single, reads = _run_reuse(tmp_path / "single")
    assert reads == {"rank0": [8, 63, 63, 0, 0]}  # peek, own passes at init and epoch 1 (verifying), then reuse
    ddp, reads = _run_reuse(tmp_path / "ddp", strategy="ddp_spawn", devices=2)
    # each rank: the peek, its half of the probe at init and at the verifying epoch; then no probe pass of its own
    assert reads == {"rank0": [8, 32, 32, 0, 0], "rank1": [8, 32, 32, 0, 0]}
    assert [r["epoch"] for r in ddp] == [r["epoch"] for r in single] == [0, 1, 2, 3]
    for a, b in zip(single, ddp):  # dsmi_y pairs rows with labels: rows out of probe order would change it
        for key in (k for k in a if k.startswith("dse/penultimate/")):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["epoch"], key)
