"""Every shipped config is accepted by the real LightningCLI parser (classes, callback
init_args, links), and the paper's configs carry the paper's settings."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dse_monitor.train.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PAPER = ["mnist_resnet50", "cifar10_resnet50", "stl10_resnet50", "cifar10_vit_tiny", "cifar10_init_std"]
ALL = ["digits", "digits_overfit", "digits_simclr", "digits_dse_regularised", "cifar10_simclr", *PAPER]


@pytest.mark.parametrize("name", ALL)
def test_lightning_cli_accepts_the_config(name, capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(CONFIGS / f"{name}.yaml"), "--print_config"])
    assert done.value.code in (None, 0)
    resolved = yaml.safe_load(capsys.readouterr().out)
    callbacks = resolved["trainer"]["callbacks"]
    assert callbacks[0]["class_path"].endswith("DSEMonitor")
    assert callbacks[0]["init_args"]["at_init"] is True


@pytest.mark.parametrize("name", PAPER)
def test_paper_settings(name):
    cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    assert cfg["data"]["image_size"] == 224 and cfg["data"]["batch_size"] == 128
    assert cfg["model"]["warmup_epochs"] == 10 and cfg["model"]["lr"] == (1e-5 if name.startswith("mnist") else 1e-4)
    monitor = cfg["trainer"]["callbacks"][0]["init_args"]
    assert monitor["num_samples"] is None and monitor["sigma"] == 10.0  # probe = the whole validation split


def test_digits_configs_differ_only_in_labels():
    clean = yaml.safe_load((CONFIGS / "digits.yaml").read_text())
    noisy = yaml.safe_load((CONFIGS / "digits_overfit.yaml").read_text())
    assert clean["data"].pop("label_noise") == "none" and noisy["data"].pop("label_noise") == "permute"
    clean["trainer"].pop("default_root_dir"), noisy["trainer"].pop("default_root_dir")
    assert clean == noisy
    assert clean["trainer"]["max_epochs"] >= 20


def test_the_regularised_config_differs_from_digits_only_in_the_dse_term():
    clean = yaml.safe_load((CONFIGS / "digits.yaml").read_text())
    reg = yaml.safe_load((CONFIGS / "digits_dse_regularised.yaml").read_text())
    assert reg["model"].pop("dse_weight") > 0 and reg["model"].pop("dse_sigma") == 10.0
    clean["trainer"].pop("default_root_dir"), reg["trainer"].pop("default_root_dir")
    assert clean == reg


def test_simclr_configs_train_without_labels_on_two_views():
    for name in ("digits_simclr", "cifar10_simclr"):
        cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        assert cfg["model"]["class_path"] == "dse_monitor.train.SimCLRModule" and cfg["data"]["views"] == 2
        assert cfg["model"]["init_args"]["projection_dim"] == 128
        assert cfg["trainer"]["callbacks"][0]["init_args"]["metrics"] == ["dse", "dsmi_y", "dsmi_x"]
