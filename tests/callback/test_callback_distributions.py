"""Each callback works with the other Lightning distribution absent: a fresh interpreter
that blocks ``lightning`` (resp. ``pytorch_lightning``) trains a tiny model with a real
Trainer of the remaining one and a real TensorBoardLogger; the blocked class's import
says which ``pip install`` provides it."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# {blocked} is set to None in sys.modules: `import name` then raises ModuleNotFoundError and
# importlib.util.find_spec(name) returns None, as when the distribution is not installed.
SCRIPT = textwrap.dedent("""
    import json, sys
    for name in {blocked!r}:
        sys.modules[name] = None

    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import {distribution} as pl
    from {distribution}.loggers import TensorBoardLogger
    from {import_path} import DSEMonitor

    torch.set_num_threads(1)
    try:
        {other_class}
        other_error = None
    except ImportError as error:
        other_error = str(error)

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(48, 8), torch.arange(48) % 3)
    logger = TensorBoardLogger(sys.argv[1])
    monitor = DSEMonitor(probe=data, metrics=["dse", "dsmi_y"], batch_size=16)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=2, logger=logger, callbacks=[monitor],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(Tiny(), train_dataloaders=DataLoader(data, batch_size=16))

    events = EventAccumulator(logger.log_dir, size_guidance={{"scalars": 0}}).Reload()
    print("RESULT " + json.dumps({{
        "is_callback": isinstance(monitor, pl.Callback),
        "history": {{str(step): values for step, values in monitor.history.items()}},
        "logged_steps": [e.step for e in events.Scalars("dse/penultimate/dse")],
        "callback_metric": float(trainer.callback_metrics["dse/penultimate/dsmi_y"]),
        "loaded_blocked": sorted(m for m in sys.modules if sys.modules[m] is not None
                                 and m.split(".")[0] in {blocked!r}),
        "other_error": other_error,
    }}))
""")


def _run_without(blocked: tuple[str, ...], distribution: str, import_path: str, other_class: str, tmp_path):
    script = SCRIPT.format(blocked=blocked, distribution=distribution, import_path=import_path,
                           other_class=other_class)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(line[len("RESULT "):])


def _check_trained_and_logged(result):
    assert result["is_callback"]
    assert sorted(result["history"], key=int) == ["0", "1", "2"]  # at init, then after each epoch
    for values in result["history"].values():
        assert 0 <= values["dse/penultimate/dse"] <= math.log2(48) + 1e-9
        assert math.isfinite(values["dse/penultimate/dsmi_y"])
    assert result["logged_steps"] == [0, 2, 5]  # the trainer's steps: 48 samples in batches of 16
    assert result["callback_metric"] == pytest.approx(result["history"]["2"]["dse/penultimate/dsmi_y"])
    assert result["loaded_blocked"] == []


def test_pytorch_lightning_callback_without_lightning(tmp_path):
    result = _run_without(("lightning",), "pytorch_lightning", "dse_monitor.pytorch_lightning",
                          "import dse_monitor; dse_monitor.DSEMonitor", tmp_path)
    _check_trained_and_logged(result)
    assert "pip install lightning" in result["other_error"]
    assert "from dse_monitor.pytorch_lightning import DSEMonitor" in result["other_error"]


def test_lightning_callback_without_pytorch_lightning(tmp_path):
    # a `lightning`-only install has lightning.fabric but neither pytorch_lightning nor lightning_fabric
    result = _run_without(("pytorch_lightning", "lightning_fabric"), "lightning.pytorch", "dse_monitor",
                          "import dse_monitor.pytorch_lightning", tmp_path)
    _check_trained_and_logged(result)
    assert "pip install pytorch-lightning" in result["other_error"]
    assert "from dse_monitor import DSEMonitor" in result["other_error"]
