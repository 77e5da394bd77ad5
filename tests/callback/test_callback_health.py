"""The health metrics through the monitor: a real fit on the embedded default, TensorBoard, the closing
table, ``compare``, resume, the cases where a metric does not apply, and the README's EarlyStopping gate."""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F
from dse_callback_models import LitClassifier, trainer_kwargs
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dse_monitor import DSEMonitor
from dse_monitor.train.compare import compare
from dse_monitor.train.data import ImageDataModule
from dse_monitor.train.model import ImageClassifier
from dse_monitor.train.summary import run_table

HEALTH = ["rankme", "alpha_req", "alpha_req_r2", "knn_acc", "cka_prev"]
README = Path(__file__).resolve().parents[2] / "README.md"


def test_a_fit_on_the_embedded_default_logs_health_to_tensorboard_the_table_and_compare(tmp_path):
    L.seed_everything(1)
    data = ImageDataModule("digits", image_size=24, batch_size=128)
    model = ImageClassifier("resnet18", num_classes=10, lr=1e-3, warmup_epochs=1,
                            backbone_kwargs={"channels": [32, 64, 128, 256], "stem_width": 32})
    monitor = DSEMonitor(num_samples=200, metrics=["dse", "health"])
    logger = TensorBoardLogger(str(tmp_path), name="digits")
    trainer = L.Trainer(max_epochs=2, limit_train_batches=3, logger=logger, callbacks=[monitor], accelerator="cpu",
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, log_every_n_steps=1)
    trainer.fit(model, datamodule=data)

    assert monitor.config.metrics == ["dse", "rankme", "alpha_req", "knn_acc", "cka_prev"]
    keys = {name: f"dse/penultimate/{name}" for name in HEALTH}
    assert set(keys.values()) - {keys["cka_prev"]} <= set(monitor.history[0])
    assert keys["cka_prev"] not in monitor.history[0]  # nothing to compare the first measurement with
    for epoch in (1, 2):
        row = monitor.history[epoch]
        assert 1 <= row[keys["rankme"]] <= 200 and row[keys["alpha_req"]] > 0 and 0 < row[keys["alpha_req_r2"]] <= 1
        assert 0 <= row[keys["knn_acc"]] <= 1 and 0 < row[keys["cka_prev"]] < 1  # it moved, but not at random

    acc = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "tensors": 0}).Reload()
    for name, key in keys.items():
        measured = [s for s in sorted(monitor.history) if key in monitor.history[s]]
        events = acc.Scalars(key)
        assert [e.step for e in events] == [monitor.positions[s]["step"] for s in measured]
        assert [e.value for e in events] == pytest.approx([monitor.history[s][key] for s in measured], rel=1e-6)
    layout = layout_pb2.Layout.FromString(acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    sections = {cat.title: {chart.title: list(chart.multiline.tag) for chart in cat.chart} for cat in layout.category}
    assert sections["Health (dse)"]["RankMe(Z)"] == ["dse/penultimate/rankme$"]
    assert set(sections["Health (dse)"]) == {"RankMe(Z)", "alpha-ReQ(Z)", "alpha-ReQ fit R^2", "kNN accuracy(Z;Y)",
                                             "CKA(Z, Z_prev)"}
    assert set(sections["DSE monitor (dse)"]) == {"DSE(Z)"}

    table = run_table(trainer).splitlines()  # the closing table of `dse-monitor fit`
    header = table[1].split()
    assert header[:3] == ["epoch", "DSE(Z)", "RankMe(Z)"] and "CKA(Z," in header
    epoch0 = dict(zip(["epoch", "dse", "rankme", "alpha_req", "r2", "knn", "cka"], table[2].split()))
    assert float(epoch0["rankme"]) == pytest.approx(monitor.history[0][keys["rankme"]], abs=5e-4)
    assert epoch0["cka"] == "-"

    said: list[str] = []
    result = compare(tmp_path, metrics=["rankme"], group_by="lr", say=said.append)
    curve = result["curves"]["dse/penultimate/rankme"][0.001]
    assert {e: v[0] for e, v in curve.items()} == pytest.approx(
        {e: monitor.history[e][keys["rankme"]] for e in (0, 1, 2)}, rel=1e-6)
    assert said[0].startswith("RankMe(Z) [dse/penultimate/rankme]") and result["png"].stat().st_size > 0


def _matrices(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _matrices(v)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from _matrices(v)
    elif isinstance(tree, torch.Tensor) and tree.ndim >= 2:
        yield tree


def test_cka_prev_restarts_after_a_resume_because_the_previous_features_are_not_checkpointed(tmp_path):
    L.seed_everything(0)
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    first = DSEMonitor(num_samples=48, metrics=["dse", "cka_prev"], sigma="median")
    trainer = L.Trainer(callbacks=[first, ckpt], **trainer_kwargs(tmp_path, max_epochs=2, enable_checkpointing=True))
    trainer.fit(LitClassifier())
    assert [("dse/penultimate/cka_prev" in first.history[s]) for s in (0, 1, 2)] == [False, True, True]
    assert not any(_matrices(first.state_dict()))  # the checkpoint holds its values, never the features

    resumed = DSEMonitor(num_samples=48, metrics=["dse", "cka_prev"], sigma="median")
    trainer = L.Trainer(callbacks=[resumed], **trainer_kwargs(tmp_path, max_epochs=4))
    trainer.fit(LitClassifier(), ckpt_path=ckpt.last_model_path)
    assert [("dse/penultimate/cka_prev" in resumed.history[s]) for s in (1, 2, 3, 4)] == [True, True, False, True]


def test_a_metric_that_does_not_apply_is_not_logged_and_says_why_once(tmp_path, caplog):
    L.seed_everything(0)
    monitor = DSEMonitor(num_samples=48, metrics=["health", "dse_t", "spectral_gap"], sigma="median", knn_k=5,
                         t_values=[1, 3], solver="lanczos")
    with caplog.at_level(logging.INFO, logger="dse_monitor"):
        L.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=2)).fit(LitClassifier())
    last = monitor.history[2]
    assert {k.split("/")[-1] for k in last} == {"rankme", "knn_acc", "cka_prev", "sigma_ratio"}
    lines = [r.getMessage() for r in caplog.records]
    alpha = [m for m in lines if m.startswith("DSEMonitor: alpha_req of layer 'penultimate'")]
    assert len(alpha) == 1 and "min(N, D) = min(48, 16) < 110" in alpha[0]  # three measurements, said once
    assert sum("dse_t of layer" in m and "solver='exact'" in m for m in lines) == 1

    exact = DSEMonitor(num_samples=48, metrics=["dse_t", "spectral_gap"], sigma="median", t_values=[1, 3])
    L.Trainer(callbacks=[exact], **trainer_kwargs(tmp_path, max_epochs=1)).fit(LitClassifier())
    row = exact.history[1]
    assert set(row) == {"dse/penultimate/dse_t1", "dse/penultimate/dse_t3", "dse/penultimate/spectral_gap",
                        "dse/penultimate/sigma_ratio"}
    assert row["dse/penultimate/dse_t1"] > row["dse/penultimate/dse_t3"] > 0 and 0 < row[
        "dse/penultimate/spectral_gap"] < 1


def test_nan_features_log_nan_for_every_health_name_and_training_goes_on(tmp_path):
    class Diverges(LitClassifier):
        def on_train_epoch_end(self):
            if self.current_epoch == 0:
                with torch.no_grad():
                    self.net.features[0].weight.fill_(float("nan"))

    L.seed_everything(0)
    monitor = DSEMonitor(num_samples=48, metrics=["dse", "health", "dse_t"], sigma=1.0, knn_k=3)
    with pytest.warns(UserWarning, match="NaN/Inf features"):
        trainer = L.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=2))
        trainer.fit(Diverges())
    assert trainer.current_epoch == 2
    names = {"dse", "rankme", "alpha_req", "alpha_req_r2", "knn_acc", "cka_prev", "dse_t1", "dse_t2", "dse_t4",
             "dse_t8"}
    assert {k.split("/")[-1] for k, v in monitor.history[2].items() if math.isnan(v)} == names


def test_health_arguments_are_checked_when_the_monitor_is_built():
    assert DSEMonitor(metrics="health").config.metrics == ["rankme", "alpha_req", "knn_acc", "cka_prev"]
    assert DSEMonitor(metrics=["rankme", "health"]).config.metrics == ["rankme", "alpha_req", "knn_acc", "cka_prev"]
    assert DSEMonitor().config.metrics == ["dse", "dsmi_y", "dsmi_x"]
    with pytest.raises(ValueError, match=r"or a group \('health',\), got \['dse', 'helth'\]"):
        DSEMonitor(metrics=["dse", "helth"])
    with pytest.raises(ValueError, match=r"t_values must be distinct positive diffusion times .* got \[1, 0\]"):
        DSEMonitor(t_values=[1, 0])
    with pytest.raises(ValueError, match="knn_k must be a positive integer, got 0"):
        DSEMonitor(knn_k=0)


class _Collapsing(L.LightningModule):
    """A network trained to map every input to one point: its features' effective rank falls towards 1."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(16, 32)
        self.head = nn.Linear(32, 2)

    def forward(self, x):
        return self.head(self.body(x))

    def training_step(self, batch, batch_idx):
        z = self.body(batch[0])
        return ((z - z.mean(dim=0).detach()) ** 2).sum(dim=1).mean() + 0 * self.head(z).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.4)


class _Data(L.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.train = TensorDataset(torch.randn(64, 16, generator=g), torch.arange(64) % 2)
        self.val = TensorDataset(torch.randn(40, 16, generator=g), torch.arange(40) % 2)

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=32)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=40)


def test_the_readme_early_stopping_gate_stops_a_collapsing_run_as_written(tmp_path, monkeypatch):
    text = README.read_text()
    section = text[text.index("### Gating training on collapse"):]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)  # the snippet's Trainer writes its logs and checkpoints to the working directory
    L.seed_everything(0)
    scope = {"model": _Collapsing(), "dm": _Data()}
    exec(compile(snippet, str(README), "exec"), scope)
    trainer, monitor = scope["trainer"], scope["monitor"]
    assert "dse/penultimate/rankme" in trainer.callback_metrics
    ranks = [monitor.history[e]["dse/penultimate/rankme"] for e in sorted(monitor.history)]
    # EarlyStopping checks from the first epoch on (index 1); the rank only fell from there: no improvement for
    # `patience` measurements stopped the run, 96 epochs early
    assert all(a > b for a, b in zip(ranks[1:], ranks[2:])) and ranks[-1] < ranks[1] / 3
    assert scope["collapse"].stopped_epoch == trainer.current_epoch - 1 == 3 and trainer.current_epoch < 100


def test_score_computes_the_health_metrics_through_the_registry():
    from dse_monitor.functional import knn_accuracy, rankme
    from dse_monitor.train.score import score

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(60, 4, generator=g), torch.arange(60) % 3)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    rows = score([("net", net)], data, metrics=["dse", "rankme", "alpha_req", "knn_acc"], x_size=None,
                 num_samples=None, progress=False, dtype="float64")
    with torch.no_grad():
        z = net[1](net[0](data.tensors[0]))  # the penultimate features: the input of the last Linear
    assert rows[0]["rankme"] == pytest.approx(float(rankme(z)), rel=1e-5)
    assert rows[0]["knn_acc"] == float(knn_accuracy(z, data.tensors[1]))
    assert rows[0]["alpha_req"] is None and rows[0]["alpha_req_r2"] is None  # D = 8 < 110: no value (empty cell)
