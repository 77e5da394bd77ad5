"""The entropy of a spectrum, and Shannon entropy in bits.

    a_i = |lambda_i|^t / sum_j |lambda_j|^t
    H   = -sum_i (a_i + eps) log2 (a_i + eps)       (bits)

``eps`` is float64 machine epsilon, added as the reference package adds it, so
that values agree with it to 1e-8 bits. Imported from :mod:`.spectrum` by most callers.
"""
from __future__ import annotations

import torch

from ._checks import EPS


def entropy_of_spectrum(eigenvalues: torch.Tensor, t: float = 1) -> torch.Tensor:
    """Spectral entropy in bits: ``-sum a log2 a`` with ``a = |lambda|^t / sum |lambda|^t``.

    Works along the last dimension, so a batch of spectra gives a batch of entropies.

    >>> round(float(entropy_of_spectrum(torch.tensor([1.0, 1.0, 1.0, 1.0]))), 6)
    2.0
    >>> round(float(entropy_of_spectrum(torch.tensor([1.0, 0.0, 0.0]))), 6)
    0.0
    """
    lam = eigenvalues.abs()
    if t != 1:
        lam = lam**t
    return shannon_bits(lam / lam.sum(dim=-1, keepdim=True))


def shannon_bits(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in bits along the last dimension, ``-sum (p + eps) log2 (p + eps)``.

    ``eps`` (float64 machine epsilon) is added as the reference package adds it; every
    entropy of the package (spectra, bin counts, matrix entries) goes through here.

    >>> round(float(shannon_bits(torch.tensor([0.5, 0.5]))), 6)
    1.0
    """
    q = p + EPS
    return -(q * torch.log2(q)).sum(dim=-1)
