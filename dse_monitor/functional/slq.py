"""Stochastic Lanczos quadrature of the deflated remainder, with two control variates.

The remainder ``B = P K P`` (``P = I - u^T u``, u the locked Ritz vectors as rows): for
each Rademacher probe z, Gauss quadrature of ``z^T P phi(B) P z`` with a few Lanczos
steps, and the two quadratic forms ``z^T B z`` and ``||B z||^2`` whose means (tr B and
``||B||_F^2``) are known exactly, which correct the mean of the first.
"""
from __future__ import annotations

import math

import torch

from ._threads import one_thread
from .entropy_bounds import phi
from .operator import KernelOperator


def slq_quadratic_forms(
    op: KernelOperator, u: torch.Tensor, n_probes: int, steps: int, gen: torch.Generator, s: float, t: float,
    fn=None, passes: int = 2,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-probe quadratic forms of the deflated operator B = P K P, P = I - u^T u (u: rows).

    Returns (g, m1, m2): ``g_p ~ z_p^T P phi(B) P z_p`` (Gauss quadrature with ``steps``
    nodes), ``m1_p = z_p^T P K P z_p`` and ``m2_p = ||P K P z_p||^2`` (exact).
    """
    n = op.n
    dev = op.device
    z = (torch.randint(0, 2, (n, n_probes), generator=gen).to(torch.float64) * 2 - 1).T.contiguous().to(dev)

    def proj(v: torch.Tensor) -> torch.Tensor:
        return v - (v @ u.T) @ u if u.shape[0] else v

    x = proj(z)
    norm0 = x.norm(dim=1)
    x = x / norm0[:, None]
    steps = max(1, min(steps, n - u.shape[0]))
    basis = torch.empty(n_probes, steps, n, dtype=torch.float64, device=dev)  # per-probe Krylov bases
    alpha = torch.zeros(steps, n_probes, dtype=torch.float64, device=dev)
    beta = torch.zeros(steps, n_probes, dtype=torch.float64, device=dev)
    for i in range(steps):
        basis[:, i] = x
        w = proj(op.rmatmat(x))
        alpha[i] = (x * w).sum(dim=1)
        if i == steps - 1:
            break
        # Full reorthogonalisation of every probe against its own basis (batched, twice).
        bi = basis[:, : i + 1]
        wr = w.unsqueeze(1)
        for _ in range(passes):
            wr = wr - (wr @ bi.transpose(1, 2)) @ bi
        w = proj(wr.squeeze(1))
        bnorm = w.norm(dim=1)
        alive = bnorm > 1e-12
        beta[i] = torch.where(alive, bnorm, torch.zeros_like(bnorm))
        x = torch.where(alive[:, None], w / bnorm.clamp_min(1e-300)[:, None], torch.zeros_like(w))
    tri = torch.diag_embed(alpha.T) + torch.diag_embed(beta.T[:, :-1], 1) + torch.diag_embed(beta.T[:, :-1], -1)
    with one_thread():
        nodes, vecs = torch.linalg.eigh(tri)
    weights = vecs[:, 0, :] ** 2
    sq = norm0**2
    if fn is not None:  # other functionals of the nodes (.indefinite): fn(nodes, weights) [P, m]
        g = sq[:, None] * fn(nodes, weights)
    else:
        g = sq * (weights * phi(nodes.clamp(0, 1), s, t)).sum(dim=1)
    m1 = sq * alpha[0]
    m2 = sq * (alpha[0] ** 2 + beta[0] ** 2)
    return g, m1, m2


def control_variate_mean(
    g: torch.Tensor, m1: torch.Tensor, m2: torch.Tensor, t1: float, t2: float
) -> tuple[float, float]:
    """Mean of g corrected with the exactly known means of m1, m2; and its standard error."""
    p = g.numel()
    if p < 8:
        return float(g.mean()), float(g.std() / math.sqrt(p)) if p > 1 else float("inf")
    xm = torch.stack([m1 - t1, m2 - t2], dim=1)
    xc = xm - xm.mean(dim=0)
    gc = g - g.mean()
    scale = xc.abs().amax(dim=0).clamp_min(1e-300)
    coef = torch.linalg.lstsq(xc / scale, gc[:, None]).solution.flatten() / scale
    est = float(g.mean() - (xm.mean(dim=0) * coef).sum())
    resid = gc - xc @ coef
    se = float(math.sqrt(float((resid**2).sum()) / (p - 3) / p))
    return est, se
