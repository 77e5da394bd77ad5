"""The twin for the ``pytorch_lightning`` package, with a real ``pytorch_lightning.Trainer``; YAML typing."""
from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from dse_callback_models import TinyCNN, make_data, trainer_kwargs
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

import dse_monitor
from dse_monitor.pytorch_lightning import DSEMonitor


class PLClassifier(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = TinyCNN()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def test_pytorch_lightning_trainer_with_its_twin(tmp_path):
    assert isinstance(DSEMonitor(), pl.Callback) and not isinstance(dse_monitor.DSEMonitor(), pl.Callback)
    pl.seed_everything(0)
    logger = TensorBoardLogger(str(tmp_path))
    monitor = DSEMonitor(probe=make_data(48, seed=2), metrics=["dse", "dsmi_y"], batch_size=16)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=2, logger=logger))
    trainer.fit(PLClassifier(), train_dataloaders=DataLoader(make_data(64, seed=1), batch_size=16))
    assert sorted(monitor.history) == [0, 1, 2]
    # same key as the lightning class, so checkpoints interchange
    assert monitor.state_key == dse_monitor.DSEMonitor(probe=make_data(8), metrics=["dse", "dsmi_y"]).state_key
    twin_state = monitor.state_dict()
    other = dse_monitor.DSEMonitor(probe=make_data(8))
    other.load_state_dict(twin_state)
    assert other.probe_indices == monitor.probe_indices and other.history == monitor.history
    acc = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "histograms": 0}).Reload()
    # at the trainer's step: 4 batches an epoch
    assert [e.step for e in acc.Scalars("dse/penultimate/dsmi_y")] == [0, 3, 7]
    assert [h.step for h in acc.Histograms("dse/penultimate/spectrum")] == [0, 3, 7]


def test_lightning_cli_builds_the_monitor_from_yaml(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["fit"])
    from lightning.pytorch.cli import LightningCLI
    from dse_callback_models import LitClassifier

    config = tmp_path / "config.yaml"
    config.write_text(
        "trainer:\n"
        "  callbacks:\n"
        "    - class_path: dse_monitor.DSEMonitor\n"
        "      init_args:\n"
        "        layers: [net.pool, penultimate]\n"
        "        num_samples: 500\n"
        "        metrics: [dse, csmi_y]\n"
        "        sigma: median\n"
        "        dtype: float32\n"
        "        x_size: null\n"
    )
    cli = LightningCLI(LitClassifier, run=False, args=["--config", str(config)], save_config_callback=None)
    (monitor,) = [c for c in cli.trainer.callbacks if isinstance(c, dse_monitor.DSEMonitor)]
    assert monitor.layers == ["net.pool", "penultimate"] and monitor.metrics == ["dse", "csmi_y"]
    assert monitor.sigma == "median" and monitor.dtype is torch.float32 and monitor.x_size is None
