"""Is sigma on the scale of your features? The numbers behind the README's sigma guidance.

    python examples/sigma_scale.py              # ~25 s on 2 free CPU cores, offline
    python examples/sigma_scale.py --all-sets   # part 2 on eight feature sets and a finer grid (~2 min)

1. The embedded default (configs/digits.yaml: a half-width ResNet-18 from scratch, the
   359 validation digits) at initialisation: the penultimate features' norm and median
   pairwise distance, and DSE at sigma = 10 (the paper's), at the median, at sqrt(D);
   then the paper's init_std 0.01 (collapsed) and 0.1 (spread), with the verdict and the
   warning the monitor prints for each.
2. Why the verdict needs a ratio below 1/3 or above 2: DSE / log2 N against the sigma
   ratio on three real feature sets.
3. t from the data: the knee of DSE(t), and the spectrum in log10 |lambda|.

The issue's sentence-embedding numbers (a pretrained MiniLM) cannot be rerun here: no
pretrained weights are on disk and nothing may be downloaded. Everything below is
offline: scikit-learn's bundled digits and timm models built from scratch.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import yaml

import dse_monitor.functional as F
from dse_monitor.functional.scale import HIGH_RATIO, LOW_RATIO
from dse_monitor.train.data import ImageDataModule
from dse_monitor.train.model import ImageClassifier

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "digits.yaml"


def penultimate_at_init(init_std: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe's penultimate features at initialisation, built as `dse-monitor fit --config configs/digits.yaml`."""
    cfg = yaml.safe_load(CONFIG.read_text())
    pl.seed_everything(cfg["seed_everything"], verbose=False)
    data = ImageDataModule(cfg["data"]["dataset"], image_size=cfg["data"]["image_size"],
                           in_chans=cfg["model"]["in_chans"], val_fraction=cfg["data"]["val_fraction"],
                           split_seed=cfg["data"]["split_seed"])
    data.setup("fit")
    m = cfg["model"]
    model = ImageClassifier(m["backbone"], num_classes=data.num_classes, in_chans=m["in_chans"],
                            img_size=cfg["data"]["image_size"], init_std=init_std,
                            backbone_kwargs=m["backbone_kwargs"]).eval()
    xs, ys = zip(*data.val_dataloader())
    with torch.no_grad():  # what the monitor reads for layers="penultimate" on a timm model
        net = model.backbone
        z = net.forward_head(net.forward_features(torch.cat(xs)), pre_logits=True)
    return z.double(), torch.cat(ys)


def scale_report(name: str, z: torch.Tensor) -> None:
    n = len(z)
    med = F.median_pairwise_distance(z)
    init = F.median_sigma(z)
    print(f"\n{name}: N = {n}, D = {z.shape[1]}, mean norm {float(z.norm(dim=1).mean()):.3g}, "
          f"median pairwise distance {med:.3g}; log2 N = {math.log2(n):.2f}")
    print(f"  {'sigma':24s} {'value':>9s} {'sigma_ratio':>12s} {'DSE bits':>9s} {'dse_norm':>9s}  verdict")
    for label, sigma in (("10 (paper, absolute)", 10.0), ("median_init", init.sigma),
                         ("sqrt_dim", math.sqrt(z.shape[1]))):
        dse = float(F.diffusion_spectral_entropy(z, sigma))
        ratio = med / sigma
        verdict = F.scale_diagnosis(dse, n, ratio)
        print(f"  {label:24s} {sigma:9.4g} {ratio:12.3g} {dse:9.4f} {F.normalised_entropy(dse, n):9.4f}  {verdict}")
        if verdict and label.startswith("10"):
            print("  warning: " + F.scale_warning(verdict, layer="penultimate", dse_bits=dse, n=n, median=med,
                                                 sigma=sigma, suggested_sigma=init.sigma if init.fell_back else None))
    if init.fell_back:
        print("  median_init: " + init.describe())


def saturation_table(sets: dict[str, torch.Tensor], ratios=(0.03, 0.1, 1 / 3, 1.0, 2.0, 3.0, 10.0, 30.0)) -> None:
    flat = []
    print("\nDSE / log2 N against the sigma ratio r = median distance / sigma (sigma = median / r):")
    print(f"  {'features':38s} " + " ".join(f"r={r:<6.3g}"[:8] for r in ratios))
    for name, z in sets.items():
        med, top = F.median_pairwise_distance(z), math.log2(len(z))
        row = [float(F.diffusion_spectral_entropy(z, med / r)) / top for r in ratios]
        print(f"  {name:38s} " + " ".join(f"{v:8.4f}" for v in row))
        flat += [f"{name} at r={r:.3g} ({v:.4f})" for r, v in zip(ratios, row)
                 if LOW_RATIO <= r <= HIGH_RATIO and (v <= 0.02 or v >= 0.98)]
    print(f"  Within 2% of 0 (<= 0.02) or of log2 N (>= 0.98) at a ratio inside [{LOW_RATIO:.3g}, {HIGH_RATIO:.3g}], "
          f"where scale_diagnosis blames the features, not sigma: {'; '.join(flat) or 'none'}.")


def diffusion_time_report(z: torch.Tensor) -> None:
    sigma = F.median_pairwise_distance(z)
    lam = F.diffusion_eigenvalues(z, sigma)
    t = F.diffusion_time_knee(lam, t_max=100)
    curve = F.entropy_curve(lam, [1, t, 100])
    logs = F.log_spectrum(lam)
    print(f"\nt from the data (embedded default at init, sigma = median {sigma:.3g}): knee of DSE(t), "
          f"t = 1..100, at t = {t}; DSE(1) = {curve[0]:.3f}, DSE({t}) = {curve[1]:.3f}, DSE(100) = {curve[2]:.3f} bits")
    print(f"  linear axis: {float((lam.abs() < 0.05).double().mean()):.0%} of the eigenvalues in the bin [0, 0.05); "
          "count of log10 |lambda| per decade (lo, hi]:")
    edges = list(range(0, -17, -1))
    counts = [int(((logs <= hi) & (logs > hi - 1)).sum()) for hi in edges[:-1]] + [int((logs <= -16).sum())]
    print("  " + " ".join(f"({hi - 1},{hi}]:{c}" for hi, c in zip(edges[:-1], counts) if c)
          + f"  at the floor (-16, zero modes): {counts[-1]}")


def eight_sets(features: torch.Tensor) -> dict[str, torch.Tensor]:
    """The sets behind scale_diagnosis's thresholds: real, projected, manifold, clustered, noise."""
    from sklearn.datasets import load_digits, make_blobs, make_swiss_roll

    digits = torch.tensor(load_digits().data[:1000], dtype=torch.float64)
    centred = digits - digits.mean(0)
    axes = torch.linalg.svd(centred, full_matrices=False).Vh
    blobs = {s: torch.tensor(make_blobs(1000, n_features=64, centers=10, cluster_std=s, random_state=0)[0])
             for s in (0.05, 1.0)}
    return {
        "embedded default at init (256-D, 359)": features,
        "digits pixels (64-D, 1000)": digits,
        "digits, 2 principal components": centred @ axes[:2].T,
        "digits, 1 principal component": centred @ axes[:1].T,
        "swiss roll (3-D, 1000)": torch.tensor(make_swiss_roll(1000, noise=0.1, random_state=0)[0]),
        "Gaussian noise (256-D, 1000)": torch.randn(1000, 256, generator=torch.Generator().manual_seed(0),
                                                    dtype=torch.float64),
        "10 tight clusters (64-D, 1000)": blobs[0.05],
        "10 loose clusters (64-D, 1000)": blobs[1.0],
    }


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--all-sets", action="store_true", help="part 2 on eight feature sets, finer grid")
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.perf_counter()
    z, _ = penultimate_at_init(None)
    scale_report("embedded default at init (timm's initialisation)", z)
    collapsed, _ = penultimate_at_init(0.01)
    scale_report("paper's init_std 0.01 (collapsed)", collapsed)
    spread, _ = penultimate_at_init(0.1)
    scale_report("paper's init_std 0.1 (spread)", spread)
    from sklearn.datasets import load_digits

    pixels = torch.tensor(load_digits().data[:359], dtype=torch.float64)
    centred = pixels - pixels.mean(0)
    plane = centred @ torch.linalg.svd(centred, full_matrices=False).Vh[:2].T
    if args.all_sets:
        saturation_table(eight_sets(z), ratios=(0.03, 0.1, 0.15, 0.22, 1 / 3, 1.0, 2.0, 3.0, 4.6, 10.0, 30.0))
    else:
        saturation_table({"digits pixels (64-D)": pixels, "digits, first 2 principal components": plane,
                          "embedded default at init (256-D)": z})
    diffusion_time_report(z)
    print(f"\n{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
