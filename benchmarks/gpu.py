"""GPU benchmark: the paper's protocol with the monitor on (and the solvers' rows, on request).

    PYTHONPATH=. python3 benchmarks/gpu.py --out gpu.json   # with CUDA: prints each setting, writes the table
    python benchmarks/gpu.py --settings reuse --epochs 2     # a subset of the settings
    python benchmarks/gpu.py --dry-run                       # the same code on the CPU, tiny sizes, seconds

The protocol (issue 22): a timm ResNet-50 from scratch, ``--probe`` (10,000) synthetic
images at 224 px as the probe, ``metrics=["dse", "dsmi_y"]``, bf16-mixed, ``--train-batches``
(40) training batches of 128 an epoch, ``--epochs`` (2) epochs. The images are made
like a real split's: a bank of 256-pixel JPEGs (uint8), decoded (torchvision, when
present), shifted per sample, resized to 224 and normalised in ``__getitem__``, so that
loading costs what it costs. Settings (``--settings``, comma-separated):

- ``dataset``: the probe given as a Dataset; no validation loader; the monitor loads it
  with the training loader's workers, then keeps it (``cache_inputs="auto"``);
- ``val_workers``: ``probe="val"``, the validation loader with ``--workers`` workers,
  ``reuse_validation=False``: the monitor's own pass, kept after the first;
- ``reuse``: the same with ``reuse_validation=True`` (the default): validation's rows;
- ``solvers`` (not in the default set): DSE exact / Lanczos at N = 10k-40k, DSMI(Z;Y)
  at N = 10,000, Lanczos at N = 100,000 (D = 512, clustered data).

Printed per setting as soon as it is done: the monitor's seconds per measurement (init,
epoch 1, epoch 2, ...), the epochs' seconds (train + validation + monitor) and the
monitor's share of them; with the device, torch, CUDA and Lightning versions. ``--out
PATH`` writes the rows as JSON to PATH and as a markdown table to PATH with ``.md``.
Needs torch, lightning and timm (not jsonargparse, not ``dse_monitor.train``). Without
CUDA (and without ``--dry-run``) it prints why and exits 0.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_solvers import solver_rows  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SyntheticImages(torch.utils.data.Dataset):
    """``n`` images decoded from a bank of 16 JPEGs of ``raw`` px (uint8; raw bytes without torchvision),
    shifted per sample, with a class-dependent brightness, resized to ``size`` and normalised."""

    def __init__(self, n: int, raw: int, size: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        bank = torch.randint(0, 200, (16, 3, raw // 8, raw // 8), generator=g, dtype=torch.uint8)
        bank = torch.nn.functional.interpolate(bank.float(), size=(raw, raw), mode="bilinear").to(torch.uint8)
        try:
            from torchvision.io import decode_jpeg, encode_jpeg

            self.bank, self.decode = [encode_jpeg(img, quality=90) for img in bank], decode_jpeg
        except ImportError:
            self.bank, self.decode = list(bank), lambda img: img
        self.n, self.size = n, size
        self.mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
        self.std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        y = i % 10
        img = self.decode(self.bank[(i // 10) % len(self.bank)])  # uint8 [3, raw, raw]
        img = torch.roll(img, shifts=(i % 97, i % 89), dims=(1, 2))
        x = torch.nn.functional.interpolate(img[None].float(), size=(self.size, self.size), mode="bilinear",
                                            antialias=True)[0]
        x = (x / 255.0 + 0.05 * (y - 4.5) - self.mean) / self.std
        return x, y


SETTINGS = ("dataset", "val_workers", "reuse")


def monitor_setting(setting: str, cfg: dict, device: torch.device) -> dict:
    """One fit of the protocol under ``setting``; the monitor's and the epochs' seconds."""
    import lightning.pytorch as L
    import timm
    import torch.nn.functional as F

    from dse_monitor import DSEMonitor

    workers, batch = cfg["workers"], cfg["batch"]
    loader = dict(num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda")
    val_data = SyntheticImages(cfg["probe"], cfg["raw"], cfg["size"], 2)
    train_data = SyntheticImages(cfg["train_batches"] * batch, cfg["raw"], cfg["size"], 1)

    class Task(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = timm.create_model(cfg["model"], pretrained=False, num_classes=10)

        def forward(self, x):
            return self.net(x)

        def training_step(self, b, _):
            return F.cross_entropy(self(b[0]), b[1])

        def validation_step(self, b, _):
            self.log("val_loss", F.cross_entropy(self(b[0]), b[1]))

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-4)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(train_data, batch_size=batch, shuffle=True, **loader)

    class WithValidation(Task):
        def val_dataloader(self):
            return torch.utils.data.DataLoader(val_data, batch_size=2 * batch, **loader)

    class Clock(L.Callback):
        """The monitor's seconds at init and each epoch end; each epoch's seconds (listed after the monitor)."""

        def __init__(self) -> None:
            self.monitor, self.epochs = [], []

        def on_train_start(self, trainer, pl_module):
            self.monitor.append(monitor.last_duration_s)

        def on_train_epoch_start(self, trainer, pl_module):
            _sync(device)
            self._t = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            _sync(device)
            self.epochs.append(time.perf_counter() - self._t)
            self.monitor.append(monitor.last_duration_s)

    probe = val_data if setting == "dataset" else "val"
    monitor = DSEMonitor(probe=probe, num_samples=cfg["probe"], metrics=["dse", "dsmi_y"], log_spectrum=False,
                         batch_size=2 * batch, reuse_validation=setting == "reuse")
    clock = Clock()
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_epochs=cfg["epochs"],
        precision=cfg["precision"], callbacks=[monitor, clock], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(WithValidation() if setting != "dataset" else Task())
    # the monitor's info lines (where it kept the probe, whether it reused), as it said them on rank 0
    notes = [m.replace("DSEMonitor: ", "") for kind, m in monitor._reporter.said if kind == "info"]
    epochs = clock.epochs
    later = clock.monitor[1:]
    return dict(setting=setting, monitor_s=[round(m, 3) for m in clock.monitor], epoch_s=[round(e, 3) for e in epochs],
                share=[round(m / e, 4) for m, e in zip(later, epochs)], measurements=len(monitor.history),
                notes=notes)


def versions(device: torch.device) -> dict:
    import lightning

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    return dict(device=name, torch=torch.__version__, cuda=torch.version.cuda, lightning=lightning.__version__)


def protocol_line(row: dict) -> str:
    fmt = lambda xs, f: ", ".join(f.format(x) for x in xs)  # noqa: E731
    return (f"| {row['setting']:11s} | {fmt(row['monitor_s'], '{:.2f}')} | {fmt(row['epoch_s'], '{:.1f}')} | "
            f"{fmt(row['share'], '{:.1%}')} |")


PROTOCOL_HEAD = ("| setting | monitor s per measurement (init, epoch 1, ...) | epoch s (train + val + monitor) "
                 "| monitor share of the epoch |\n|---|---|---|---|")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (checks the logic)")
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help=f"comma-separated among {SETTINGS + ('solvers',)} (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--probe", type=int, default=10_000)
    parser.add_argument("--train-batches", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=1, help="repeats of the solvers' rows")
    parser.add_argument("--out", help="write the rows as JSON here (and a markdown table next to it, .md)")
    args = parser.parse_args(argv)
    settings = [s for s in args.settings.split(",") if s]
    unknown = sorted(set(settings) - set(SETTINGS + ("solvers",)))
    if unknown:
        parser.error(f"--settings: unknown {unknown}; choose among {SETTINGS + ('solvers',)}")
    if args.dry_run:
        device = torch.device("cpu")
        torch.set_num_threads(1)
        cfg = dict(sizes=(300, 600), d=16, f64_max=600, dsmi_n=600, large_n=1500, small_sizes=(100, 200), model="resnet18", probe=48,
                   raw=40, size=32, train_batches=2, batch=8, workers=1, epochs=args.epochs, precision="bf16-mixed")
    else:
        if not torch.cuda.is_available():
            print("benchmarks/gpu.py: CUDA is not available on this machine; nothing was measured. "
                  "Run it where a GPU is, or use --dry-run to exercise the script on the CPU.")
            return 0
        device = torch.device("cuda")
        cfg = dict(sizes=(10_000, 20_000, 40_000), d=512, f64_max=20_000, dsmi_n=10_000, large_n=100_000,
                   model="resnet50", probe=args.probe, raw=256, size=224, train_batches=args.train_batches,
                   batch=128, workers=args.workers, epochs=args.epochs, precision="bf16-mixed")
    info = versions(device)
    print(", ".join(f"{k}: {v}" for k, v in info.items()), flush=True)
    result: dict = dict(info, config={k: v for k, v in cfg.items() if k not in ("sizes",)}, protocol=[], solvers=[])
    if any(s in SETTINGS for s in settings):
        print(PROTOCOL_HEAD, flush=True)
    for setting in (s for s in settings if s in SETTINGS):
        row = monitor_setting(setting, cfg, device)
        result["protocol"].append(row)
        print(protocol_line(row) + "".join(f"\n    {note[:160]}" for note in row["notes"]), flush=True)
    if "solvers" in settings:
        rows = solver_rows(cfg, device, args.repeats)
        result["solvers"] = [list(r) for r in rows]
        print()
        print(f"| {'benchmark':42s} | {'ours s':>8s} | {'exact f32 s / base':>18s} | {'exact f64 s':>11s} | note |")
        print(f"|{'-' * 44}|{'-' * 10}|{'-' * 20}|{'-' * 13}|------|")
        for bench, ours, b32, b64, note in rows:
            print(f"| {bench:42s} | {ours:8.4f} | {b32:18.4f} | {b64:11.4f} | {note} |")
    if args.out:
        out = Path(args.out)
        out.write_text(json.dumps(result, indent=1))
        lines = [", ".join(f"{k}: {v}" for k, v in info.items()), "", PROTOCOL_HEAD]
        lines += [protocol_line(r) for r in result["protocol"]]
        out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
