"""The functional core on saved embeddings, the way the reference package (dse-dsmi) is used.

    python examples/numpy_api.py

Embeddings are any [N, D] array (numpy or torch) you saved from a model; labels are [N]
integers. Here the "embeddings" are scikit-learn's digits pixels and a noisy copy.

The reference package's calls and ours side by side:
    dse_dsmi.diffusion_spectral_entropy(embedding_vectors=Z, gaussian_kernel_sigma=10, t=1)
        -> dse_monitor.diffusion_spectral_entropy(Z, sigma=10, t=1)
    dse_dsmi.diffusion_spectral_mutual_information(embedding_vectors=Z, reference_vectors=Y)
        -> dse_monitor.diffusion_spectral_mutual_information(Z, Y)
"""
import tempfile
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from dse_monitor import (
    diffusion_spectral_entropy,
    diffusion_spectral_mutual_information,
    reference_groups,
)

digits = load_digits()
with tempfile.TemporaryDirectory() as tmp:
    # what you would have on disk after a forward pass over your probe set
    np.save(Path(tmp) / "embeddings.npy", digits.data.astype(np.float32))
    np.save(Path(tmp) / "labels.npy", digits.target)
    z = np.load(Path(tmp) / "embeddings.npy")
    y = np.load(Path(tmp) / "labels.npy")

n = len(z)
print(f"N = {n}, D = {z.shape[1]}, log2 N = {np.log2(n):.2f} bits")

# DSE(Z): sigma is absolute, on raw squared distances (the reference's default is 10).
for sigma in (1.0, 10.0, 100.0):
    print(f"DSE(Z), sigma = {sigma:>5}: {float(diffusion_spectral_entropy(z, sigma=sigma)):.3f} bits")

# DSMI(Z;Y) with the labels, and with labels that carry no information.
rng = np.random.default_rng(0)
print(f"DSMI(Z;Y) true labels     : {float(diffusion_spectral_mutual_information(z, y, sigma=10.0)):.3f} bits")
print(f"DSMI(Z;Y) permuted labels : {float(diffusion_spectral_mutual_information(z, rng.permutation(y), sigma=10.0)):.3f} bits")

# DSMI(Z;X) with X = inputs: cluster X once (spectral clustering), reuse the groups.
x = digits.images.reshape(n, -1) / 16.0
groups = reference_groups(x, n_clusters=10)
noisy = z + rng.normal(scale=4.0, size=z.shape)
print(f"DSMI(Z;X), Z = X          : {float(diffusion_spectral_mutual_information(z, groups=groups, sigma=10.0)):.3f} bits")
print(f"DSMI(Z;X), Z = X + noise  : {float(diffusion_spectral_mutual_information(noisy, groups=groups, sigma=10.0)):.3f} bits")
