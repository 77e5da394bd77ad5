"""The contrastive condition for real: the shipped configs/digits_simclr.yaml through the
`dse-monitor fit` LightningCLI with tiny overrides, real two-view augmentations, the real
DSEMonitor on the backbone's penultimate layer and the linear probe, read back from the
TensorBoard event files; the training losses do not depend on the labels."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from dse_monitor.train.cli import main
from dse_monitor.train.compare import read_run
from dse_monitor.train.simclr import SimCLRModule, nt_xent_loss

REPO = Path(__file__).resolve().parents[2]
SIMCLR = str(REPO / "configs" / "digits_simclr.yaml")
TINY = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.callbacks.init_args.num_samples", "100", "--data.image_size", "16", "--data.batch_size", "64",
        "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "3", "--trainer.log_every_n_steps", "1",
        "--model.linear_probe_every_n_epochs", "1", "--model.linear_probe_epochs", "5",
        "--model.backbone_kwargs", '{"channels": [8, 16, 32, 64], "stem_width": 8}']


def _fit(root: Path, *extra: str) -> Path:
    main(["fit", "--config", SIMCLR, "--trainer.default_root_dir", str(root), *TINY, *extra])
    return root / "lightning_logs" / "version_0"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("simclr")
    return _fit(base / "clean"), _fit(base / "permuted", "--data.label_noise", "permute")


def test_simclr_logs_the_monitor_on_the_backbone_and_the_probe_accuracy(runs, capsys):
    run = read_run(runs[0])
    for metric in ("dse", "dsmi_y", "dsmi_x"):
        assert sorted(run.curves[f"dse/penultimate/{metric}"]) == [0, 1, 2]
    assert all(0 <= v <= math.log2(100) + 1e-6 for v in run.curves["dse/penultimate/dse"].values())
    probe = run.curves["probe_acc"]
    assert sorted(probe) == [1, 2] and all(0.0 <= v <= 1.0 for v in probe.values())
    assert max(probe.values()) > 0.2  # chance is 0.1: the frozen features already separate digits
    assert run.get("model.temperature") == 0.5 and run.get("data.views") == 2
    config = yaml.safe_load((runs[0] / "config.yaml").read_text())
    assert config["model"]["class_path"] == "dse_monitor.train.SimCLRModule"
    hparams = yaml.safe_load((runs[0] / "hparams.yaml").read_text())
    assert hparams["num_classes"] == 10 and hparams["img_size"] == 16  # linked from the data


def test_training_losses_are_identical_under_permuted_labels(runs):
    clean, permuted = (read_run(r) for r in runs)
    assert clean.get("data.label_noise") == "none" and permuted.get("data.label_noise") == "permute"
    losses = {}
    for name, path in zip(("clean", "permuted"), runs):
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        losses[name] = [(e.step, e.value) for e in acc.Scalars("train_loss_step")]
    assert len(losses["clean"]) == 6  # 3 steps x 2 epochs, each logged
    assert losses["clean"] == losses["permuted"]  # bit for bit: the training step never reads a label
    # the representation is the same too: its label-free DSE on the (clean) validation probe
    assert clean.curves["dse/penultimate/dse"] == permuted.curves["dse/penultimate/dse"]


def test_nt_xent_matches_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g, dtype=torch.float64)
    u = F.normalize(torch.cat([z1, z2]), dim=1)
    s = u @ u.T / 0.5
    total = 0.0
    for i in range(6):
        positive = (i + 3) % 6
        denominator = sum(math.exp(s[i, k]) for k in range(6) if k != i)
        total += -math.log(math.exp(s[i, positive]) / denominator)
    assert nt_xent_loss(z1, z2, temperature=0.5).item() == pytest.approx(total / 6, rel=1e-12)
    with pytest.raises(ValueError, match="temperature must be positive"):
        nt_xent_loss(z1, z2, temperature=0.0)


def test_one_view_batches_are_a_clear_error():
    model = SimCLRModule("resnet10t", num_classes=2, in_chans=1, projection_dim=4,
                         backbone_kwargs={"channels": [4, 4, 4, 4], "stem_width": 4})
    with pytest.raises(ValueError, match="views=2"):
        model.training_step((torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)), 0)


def test_compare_draws_the_probe_accuracy_beside_the_curves(runs, tmp_path):
    from dse_monitor.train.compare import compare

    root = runs[0].parents[2]
    out = compare(root, ["dse"], "data.label_noise", out=tmp_path / "simclr.png", say=lambda *_: None)
    assert list(out["curves"]) == ["dse/penultimate/dse", "probe_acc"]
    probe = out["curves"]["probe_acc"]
    assert sorted(probe) == ["none", "permute"] and sorted(probe["none"]) == [1, 2]
    assert probe["none"][2][0] == pytest.approx(read_run(runs[0]).curves["probe_acc"][2])
