"""ImageClassifier: the paper's initialisation on real timm models, img_size only where a
backbone takes it, the warm-up + cosine schedule seen by a real Trainer, and the epoch-0
DSE figures of the shipped digits.yaml model (collapse at init_std 0.01, spread at 0.1)."""
from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from torch import nn

from dse_monitor import diffusion_spectral_entropy
from dse_monitor.train import ImageClassifier, ImageDataModule, paper_init_, warmup_cosine_factor
from dse_monitor.train.model import warmup_cosine_schedule

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_paper_init_on_a_timm_resnet():
    model = ImageClassifier("resnet18", num_classes=10, init_std=0.02,
                            backbone_kwargs={"channels": [16, 32, 64, 128], "stem_width": 16})
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert convs and bns and linears
    weights = torch.cat([c.weight.flatten() for c in convs])
    assert abs(weights.std().item() - 0.02) < 0.001 and abs(weights.mean().item()) < 0.001
    assert all(c.bias is None or not c.bias.any() for c in convs)
    # timm zero-initialises the last BN of each block; the paper's init sets every BN to 1/0
    assert all(torch.all(b.weight == 1) and not b.bias.any() for b in bns)
    w = linears[-1].weight
    assert abs(w.std().item() - 1e-3) < 2e-4 and not linears[-1].bias.any()


def test_init_std_none_keeps_timm_init_and_bad_std_fails():
    model = ImageClassifier("resnet18", num_classes=10, backbone_kwargs={"channels": [8, 8, 8, 8], "stem_width": 8})
    assert any(not torch.all(m.weight == 1) for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    with pytest.raises(ValueError, match="init_std must be positive"):
        paper_init_(nn.Conv2d(1, 1, 1), std=0.0)


def test_img_size_reaches_a_vit_and_is_ignored_by_a_resnet():
    vit = ImageClassifier("vit_tiny_patch16_224", num_classes=4, in_chans=1, img_size=32, init_std=0.02)
    assert vit(torch.zeros(2, 1, 32, 32)).shape == (2, 4)
    assert any(isinstance(m, nn.LayerNorm) for m in vit.modules())
    cnn = ImageClassifier("resnet10t", num_classes=4, in_chans=1, img_size=32,
                          backbone_kwargs={"channels": [8, 8, 8, 8], "stem_width": 8})
    assert cnn(torch.zeros(2, 1, 32, 32)).shape == (2, 4)


def test_warmup_then_cosine_as_a_real_trainer_steps_it(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 2, (16,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    model = ImageClassifier("resnet10t", num_classes=2, in_chans=1, lr=1e-2, warmup_epochs=1,
                            backbone_kwargs={"channels": [4, 4, 4, 4], "stem_width": 4})
    seen = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[Record()], default_root_dir=tmp_path)
    trainer.fit(model, loader, loader)
    assert len(seen) == 12  # 4 steps/epoch x 3 epochs
    expected = [1e-2 * warmup_cosine_factor(s, 4, 12) for s in range(12)]
    assert seen == pytest.approx(expected)
    assert seen[:4] == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2])  # linear warm-up over epoch 1
    assert all(a >= b for a, b in zip(seen[4:], seen[5:])) and seen[-1] < 1e-3  # then cosine down
    assert isinstance(trainer.optimizers[0], torch.optim.AdamW)


@pytest.mark.parametrize("init_std", [0.1, 0.01])
def test_digits_yaml_model_at_init_spreads_or_collapses_the_probe(init_std):
    """The embedded default's init figures, on the exact model of configs/digits.yaml."""
    cfg = yaml.safe_load((CONFIGS / "digits.yaml").read_text())
    monitor = cfg["trainer"]["callbacks"][0]["init_args"]
    data = ImageDataModule(**{**cfg["data"], "batch_size": 512})
    data.setup("fit")
    x = torch.stack([data.val_dataset[i][0] for i in range(len(data.val_dataset))])
    n = x.shape[0]
    assert monitor["num_samples"] is None and n >= 300  # the probe is the whole split
    for seed in (1, 2):
        pl.seed_everything(seed, verbose=False)
        model = ImageClassifier(**{**cfg["model"], "init_std": init_std}).eval()
        with torch.no_grad():
            z = model.backbone.forward_head(model.backbone.forward_features(x), pre_logits=True)
        dse = diffusion_spectral_entropy(z, sigma=monitor["sigma"]).item()
        target = math.log2(n) if init_std == 0.1 else 0.0
        assert abs(dse - target) < 0.1, (seed, dse, target)


def test_pretrained_offline_without_cached_weights_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network: only the local cache counts
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(RuntimeError, match="local cache"):
        ImageClassifier("resnet10t", num_classes=3, pretrained=True)
    with pytest.raises(ValueError, match="cannot be combined"):
        ImageClassifier("resnet10t", num_classes=3, pretrained=True, init_std=0.01)


@pytest.mark.parametrize("warmup,total,min_factor", [(2, 6, 0.0), (0, 5, 0.0), (1, 5, 0.0), (4, 12, 0.0),
                                                     (5, 5, 0.0), (3, 40, 0.1), (10, 400, 0.0), (7, 7, 0.05)])
def test_torch_schedulers_give_the_warmup_cosine_factor_at_every_step(warmup, total, min_factor):
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=3e-4)
    sched = warmup_cosine_schedule(opt, warmup, total, min_factor)
    seen = []
    for _ in range(total):
        seen.append(opt.param_groups[0]["lr"] / 3e-4)
        opt.step()
        sched.step()
    assert seen == pytest.approx([warmup_cosine_factor(s, warmup, total, min_factor) for s in range(total)],
                                 rel=1e-9, abs=1e-12)
    if warmup:
        assert isinstance(sched, torch.optim.lr_scheduler.SequentialLR)


def test_dse_weight_adds_the_dse_of_the_penultimate_batch_to_the_loss():
    from dse_monitor import DSELoss

    torch.manual_seed(0)
    model = ImageClassifier("resnet10t", num_classes=3, in_chans=1, dse_weight=0.5, dse_sigma=1.0,
                            backbone_kwargs={"channels": [4, 4, 4, 4], "stem_width": 4}).eval()
    x, y = torch.randn(12, 1, 8, 8), torch.randint(0, 3, (12,))
    loss = model.training_step((x, y), 0)
    z = model.backbone.forward_head(model.backbone.forward_features(x), pre_logits=True)
    expected = nn.functional.cross_entropy(model(x), y) + 0.5 * DSELoss(sigma=1.0)(z)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)
    assert ImageClassifier("resnet10t", num_classes=3, backbone_kwargs={"channels": [4, 4, 4, 4],
                                                                        "stem_width": 4}).dse_loss is None
