"""``DSELoss``: diffusion spectral entropy of a batch's features as a differentiable training term.

It wraps the exact path of :func:`~dse_monitor.functional.diffusion_spectral_entropy`
(and :func:`~dse_monitor.functional.diffusion_spectral_mutual_information` for
DSMI(Z;Y)): gradients reach the features through ``torch.linalg.eigvalsh``.

Gradient caveats:

- DSE is a symmetric function of the whole spectrum, so its gradient is well defined
  even where eigenvalues repeat; but it is not where an eigenvalue reaches 0 (the
  ``|lambda|^t`` of the definition), and it can be numerically large when eigenvalues
  are nearly repeated (features collapsed onto a few points). Clip gradients
  (``Trainer(gradient_clip_val=1.0)``) when DSE is part of a loss.
- The value depends on the batch size (DSE lies in [0, log2 N]): compare and weight it at
  one batch size, or pass ``normalize=True`` for DSE / log2 N in [0, 1].

Small batches are not tiled up to a minimum sample count (the paper's pipeline did):
tiling k exact copies leaves the value unchanged (the diffusion operator of the copies
is ``[[P, P], [P, P]] / 2``: the spectrum of P plus N zeros, and zeros carry no entropy),
so it only multiplies the cost of the eigen-solve by k^3 and puts N eigenvalues at 0,
exactly where the gradient is undefined. A batch below ``min_samples`` points raises.
"""
from __future__ import annotations

import math
from typing import Literal, Optional

import torch
from torch import nn

from .functional import diffusion_spectral_entropy, diffusion_spectral_mutual_information

__all__ = ["DSELoss"]


class DSELoss(nn.Module):
    """DSE(Z) (or DSMI(Z;Y)) of a batch of features, in bits, differentiable.

        DSE(Z) = -sum_i a_i log2 a_i,  a_i = |lambda_i|^t / sum_j |lambda_j|^t,

    ``lambda`` the eigenvalues of the diffusion operator of the rows of Z (Gaussian kernel
    of bandwidth ``sigma`` on raw distances, row-normalised). With ``measure="dsmi_y"``:
    DSMI(Z;Y) = sum_y p(y) [mean_r DSE(Z_r) - DSE(Z | Y = y)], labels given to ``forward``.

    Add it to a loss with a sign: ``loss = ce + w * dse(z)`` with ``w > 0`` compresses the
    representation (lower entropy), ``w < 0`` spreads it.

    Args:
        sigma: kernel bandwidth (a number on raw distances, ``"sqrt_dim"`` or ``"median"``).
        t: diffusion time.
        measure: ``"dse"`` (default) or ``"dsmi_y"`` (needs labels).
        normalize: divide by log2 N (the value at N far-apart points): [0, 1].
        num_repetitions, seed: DSMI's random subsets (a fixed seed: the same subsets each call).
        min_samples: fewer points in a batch raise (see the module notes on tiling).
        dtype: compute dtype (float64 by default; the result is cast to the features' dtype).

    Example:
        >>> z = (torch.eye(4) * 100).requires_grad_()
        >>> loss = DSELoss(sigma=10.0)
        >>> round(loss(z).item(), 6)                     # 4 points far apart: log2 4
        2.0
        >>> zd = torch.randn(16, 3, dtype=torch.float64)
        >>> bool(loss(zd) == diffusion_spectral_entropy(zd, sigma=10.0))
        True
        >>> z2 = torch.tensor([[0.0], [0.5], [3.0], [3.5]], requires_grad=True)
        >>> DSELoss(sigma=1.0, measure="dsmi_y")(z2, torch.tensor([0, 0, 1, 1])).backward()
        >>> z2.grad.shape
        torch.Size([4, 1])
    """

    def __init__(
        self,
        sigma: float | str = 10.0,
        t: float = 1.0,
        measure: Literal["dse", "dsmi_y"] = "dse",
        normalize: bool = False,
        num_repetitions: int = 5,
        seed: int = 0,
        min_samples: int = 2,
        dtype: Optional[torch.dtype] = torch.float64,
    ) -> None:
        super().__init__()
        if measure not in ("dse", "dsmi_y"):
            raise ValueError(f"measure must be 'dse' or 'dsmi_y', got {measure!r}")
        if min_samples < 2:
            raise ValueError(f"min_samples must be at least 2, got {min_samples}")
        self.sigma, self.t, self.measure, self.normalize = sigma, t, measure, normalize
        self.num_repetitions, self.seed, self.min_samples, self.dtype = num_repetitions, seed, min_samples, dtype

    def forward(self, z: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The measure of the rows of ``z`` [N, D] (a 0-dim tensor in ``z``'s dtype)."""
        if z.ndim != 2:
            raise ValueError(f"DSELoss takes features [N, D]; got shape {tuple(z.shape)} (flatten or pool first)")
        n = z.shape[0]
        if n < self.min_samples:
            raise ValueError(f"DSELoss needs at least min_samples={self.min_samples} points, got a batch of {n}; "
                             "use larger batches (tiling copies would not change the value, see dse_monitor.loss)")
        if self.measure == "dsmi_y":
            if labels is None:
                raise ValueError("DSELoss(measure='dsmi_y') needs the labels: loss(z, labels)")
            value = diffusion_spectral_mutual_information(
                z, labels, sigma=self.sigma, t=self.t, reference_discrete=True, num_repetitions=self.num_repetitions,
                seed=self.seed, dtype=self.dtype, max_n=None)
        else:
            value = diffusion_spectral_entropy(z, self.sigma, self.t, dtype=self.dtype, max_n=None, solver="exact")
        if self.normalize:
            value = value / math.log2(n)
        return value.to(z.dtype)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma!r}, t={self.t}, measure={self.measure!r}, normalize={self.normalize}"
