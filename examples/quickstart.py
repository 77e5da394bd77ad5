"""Add DSEMonitor to your own LightningModule and Trainer: the few lines that matter.

    python examples/quickstart.py            # about a minute on 2 CPU cores, no download
    tensorboard --logdir runs/quickstart     # the DSE(Z), DSMI(Z;Y), DSMI(Z;X) curves

The model below is yours; nothing in it knows about dse-monitor. The monitor finds the
"penultimate" layer (the input of the last nn.Linear that runs in forward), probes 300
fixed validation images at initialisation and after every epoch, and logs
dse/penultimate/dse, dse/penultimate/dsmi_y and dse/penultimate/dsmi_x.
"""
import lightning.pytorch as pl
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dse_monitor import DSEMonitor


class SmallCNN(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.features(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def loaders():
    digits = load_digits()  # 1,797 8x8 images shipped with scikit-learn
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, val = order[:1400], order[1400:]
    return (DataLoader(TensorDataset(x[train], y[train]), batch_size=64, shuffle=True),
            DataLoader(TensorDataset(x[val], y[val]), batch_size=128))


if __name__ == "__main__":
    pl.seed_everything(0)
    train_loader, val_loader = loaders()
    # sigma is absolute (on raw distances): pick it for the scale of your features (the
    # paper used 10 for ResNet-50), or sigma="median" to adapt it to each epoch.
    monitor = DSEMonitor(layers="penultimate", num_samples=300, metrics=["dse", "dsmi_y", "dsmi_x"], sigma=1.0)
    trainer = pl.Trainer(max_epochs=5, callbacks=[monitor], default_root_dir="runs/quickstart", accelerator="cpu")
    trainer.fit(SmallCNN(), train_loader, val_loader)
    for epoch, values in sorted(monitor.history.items()):
        print(epoch, {k.split("/")[-1]: round(v, 3) for k, v in values.items()})
    print("tensorboard --logdir runs/quickstart")
