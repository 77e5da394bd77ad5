"""The monitor does not change training: losses, modes, gradients, hooks, random streams."""
from __future__ import annotations

import random

import lightning.pytorch as L
import numpy as np
import torch
from dse_callback_models import LitClassifier, trainer_kwargs
from lightning.pytorch.callbacks import Callback

from dse_monitor import DSEMonitor


class RandomUser(LitClassifier):
    """Dropout, a shuffled loader, BatchNorm, plus numpy/python randomness in every step."""

    def __init__(self):
        super().__init__(n_train=96, batch_size=16)
        self.net.features[1].eval()  # a frozen BatchNorm: must stay in eval mode
        self.net.features[1].requires_grad_(False)
        self.probe_calls: list[tuple[bool, bool]] = []

    def forward(self, x):
        if not self.training:
            self.probe_calls.append((self.net.drop.training, torch.is_grad_enabled()))
        return super().forward(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        noise = float(np.random.rand()) * 1e-3 + random.random() * 1e-3
        return super().training_step((x + noise, y), batch_idx)


class ModeCheck(Callback):
    """Runs after the monitor: the model is back in its own modes, with no hooks left."""

    def __init__(self, count_hooks):
        self.ok: list[bool] = []
        self.count_hooks = count_hooks

    def _check(self, pl_module):
        hooks = self.count_hooks(pl_module)
        modes = pl_module.training and pl_module.net.drop.training and not pl_module.net.features[1].training
        self.ok.append(hooks == 0 and modes)

    def on_train_start(self, trainer, pl_module):
        self._check(pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        self._check(pl_module)


def _run(tmp_path, monitor, count_hooks):
    L.seed_everything(7)
    model = RandomUser()
    check = ModeCheck(count_hooks)
    callbacks = [monitor, check] if monitor is not None else [check]
    L.Trainer(callbacks=callbacks, **trainer_kwargs(tmp_path, max_epochs=3)).fit(model)
    after = (torch.rand(3), np.random.rand(3), random.random())
    return model, check, after


def test_losses_identical_with_and_without_monitor(tmp_path, count_hooks):
    base, _, base_after = _run(tmp_path / "a", None, count_hooks)
    monitor = DSEMonitor(num_samples=48, batch_size=16)
    watched, check, watched_after = _run(tmp_path / "b", monitor, count_hooks)
    assert sorted(monitor.history) == [0, 1, 2, 3]
    assert len(base.losses) == 18
    assert watched.losses == base.losses  # bit for bit
    for a, b in zip(base.state_dict().values(), watched.state_dict().values()):
        assert torch.equal(a, b)
    # the random streams continue as if the monitor had not drawn anything
    assert torch.equal(base_after[0], watched_after[0]) and np.array_equal(base_after[1], watched_after[1])
    assert base_after[2] == watched_after[2]
    assert check.ok == [True] * 4
    # the probe passes ran in eval mode without autograd (forward is also called by validation)
    assert watched.probe_calls and all(calls == (False, False) for calls in watched.probe_calls[:3])
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in watched.parameters())
