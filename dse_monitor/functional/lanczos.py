"""Approximate DSE for large N: block Lanczos deflation + stochastic Lanczos quadrature.

With ``lambda_1..N`` the eigenvalues of the symmetric diffusion kernel K (PSD, in [0, 1]),
``S = sum_i lambda_i^t`` and ``eps`` = float64 machine epsilon (added as the reference
adds it), DSE is one spectral sum

    H = sum_i phi(lambda_i),   phi(x) = -(x^t / S + eps) log2(x^t / S + eps).

S is exact and cheap: ``tr K = sum_i 1/q_i`` for t = 1, ``||K||_F^2`` for t = 2 (so the
approximate path supports t in {1, 2}). The sum is split in two:

1. top part: k Ritz pairs ``(theta_j, u_j)`` of K found by block Lanczos with full
   reorthogonalisation (``U`` orthonormal, ``H = U^T K U``, residual ``R = (I - UU^T) K U``):
   ``sum_j phi(theta_j)``, theta the eigenvalues of H;
2. remainder: the compression ``B = W^T K W`` to the orthogonal complement (N - k
   eigenvalues), estimated by stochastic Lanczos quadrature with Rademacher probes
   projected off U, with the two exact moments below as control variates.

Guaranteed bounds. The remainder's first moments are known exactly:
``m0 = N - k``, ``m1 = tr B = tr K - tr H``, ``m2 = ||B||_F^2 = ||K||_F^2 - 2 ||K U||_F^2 + ||H||_F^2``,
and its eigenvalues lie in ``[0, c]``, ``c = min(1, sqrt(m2), m1)``. phi''' has one sign on
[0, c] (t = 1: > 0; t = 2: < 0), so the two Gauss-Radau rules matching m0, m1, m2 with a
fixed node at 0 and at c are the smallest and largest possible values of the remainder
(Markov-Krein; error term ``f[x, a, x1, x1] (x - a)(x - x1)^2``). Replacing K by its block
diagonal pinching ``U H U^T + W B W^T`` moves the sorted spectrum by at most
``||K - pinch||_1 <= 2 sum_j ||R e_j||`` in l1 (Lidskii), so H moves by at most
``2 L sum_j ||R e_j||``, ``L = max |phi'| <= t (53 + |log2 S| + 1/ln 2) / S``; that slack is
added to both bounds. The bounds hold for the operator as evaluated (float64 rounding adds
< 1e-9 bits, a further ``1e-9`` is added); with float32 kernel storage they hold for the
rounded float32 kernel. They use only the deflation (U, K U, H); the probes of part 2
feed the estimate alone, so they may use a float32 rounding of a float64 kernel
(``probe_dtype``) without touching the bounds.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import torch

from ._checks import EPS
from .operator import KernelOperator

LOG2E = 1.0 / math.log(2.0)

#: Defaults of :func:`approximate_entropy` that the cost model of ``solver="auto"`` uses.
DEFAULT_BLOCK = 32
DEFAULT_MAX_RANK = 256
DEFAULT_STEPS = 20
#: From this many points the N x k bookkeeping keeps the caller's threads too: each of its
#: products is then large enough that OpenMP's barriers cost little.
BOOKKEEPING_THREADS_N = 4096


@contextlib.contextmanager
def _one_thread():
    """Run small LAPACK calls (QR of N x b, eigh of the projected matrices) on one thread.

    They are too small to gain from a second thread, and on a busy machine OpenMP's
    barriers make them 10-100x slower with two (measured: eigh of 512 x 512 takes
    0.05 s on one thread and up to 10 s on two when other processes load the cores).
    The thread count is per calling thread and restored afterwards.
    """
    before = torch.get_num_threads()
    if before > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before > 1:
            torch.set_num_threads(before)


@dataclass(frozen=True)
class EntropyEstimate:
    """A DSE value with its standard error and guaranteed bounds (bits).

    ``lower <= exact DSE <= upper`` always holds (for the operator as evaluated);
    ``std_error`` is the Monte-Carlo standard error of ``value``. For the exact solver
    ``lower == value == upper`` and ``std_error == 0``.
    """

    value: float
    std_error: float
    lower: float
    upper: float
    solver: str
    rank: int = 0  # deflated eigenpairs k
    n_probes: int = 0
    lanczos_steps: int = 0
    storage: str = "exact"  # "exact", "dense-float64", "dense-float32", "streamed-float64", ...
    seconds: float = 0.0
    info: dict = field(default_factory=dict, compare=False)

    @property
    def width(self) -> float:
        """``upper - lower`` in bits."""
        return self.upper - self.lower

    def __float__(self) -> float:
        return self.value


def phi(x: torch.Tensor, s: float, t: float) -> torch.Tensor:
    """``-(x^t/S + eps) log2(x^t/S + eps)`` elementwise (x clamped at 0), float64.

    >>> round(float(phi(torch.tensor([0.5], dtype=torch.float64), 1.0, 1).sum()), 6)
    0.5
    """
    a = x.double().clamp_min(0) ** t / s + EPS
    return -(a * torch.log2(a))


def _phi_scalar(x: float, s: float, t: float) -> float:
    a = max(x, 0.0) ** t / s + EPS
    return -a * math.log2(a)


def radau_bounds(m0: float, m1: float, m2: float, c: float, s: float, t: float) -> tuple[float, float]:
    """Smallest and largest ``sum_i phi(x_i)`` over point sets in [0, c] with moments m0, m1, m2.

    Two-node Gauss-Radau rules with a fixed node at 0 and at c; valid because phi''' keeps
    one sign on [0, c] for t in {1, 2} (then the rules are the extremal measures).

    >>> x = torch.tensor([0.0, 0.01, 0.02, 0.3], dtype=torch.float64)
    >>> lo, hi = radau_bounds(4, float(x.sum()), float((x * x).sum()), 0.3, 1.0, 1)
    >>> lo <= float(phi(x, 1.0, 1).sum()) <= hi
    True
    """
    if m0 <= 0:
        return 0.0, 0.0
    c = max(c, 0.0)
    m1 = min(max(m1, 0.0), c * m0)
    m2 = min(max(m2, m1 * m1 / m0), c * m1)
    vals = []
    for a in (0.0, c):
        nu1 = m1 - a * m0
        nu2 = m2 - 2 * a * m1 + a * a * m0
        if abs(nu1) <= 1e-300 or nu2 <= 1e-300:
            vals.append(m0 * _phi_scalar(a if abs(nu1) <= 1e-300 else m1 / m0, s, t))
            continue
        w1 = min(nu1 * nu1 / nu2, m0)
        x1 = min(max(a + nu2 / nu1, 0.0), c)
        vals.append((m0 - w1) * _phi_scalar(a, s, t) + w1 * _phi_scalar(x1, s, t))
    return min(vals), max(vals)


def _lipschitz(s: float, t: float) -> float:
    # |phi'(x)| = (t x^(t-1) / S) |log2(x^t/S + eps) + 1/ln 2| on [0, 1]
    return t * (-math.log2(EPS) + abs(math.log2(s)) + LOG2E + 1.0) / s


# Vectors of length N are stored as rows ([b, N] tensors, a basis as [k, N]): projections
# ``x - (x B^T) B`` then multiply a short operand by a wide one, and measured 2.4x faster
# on a 2-core AMD EPYC (N = 6,000, 224 x 32: 3.1 ms vs 7.4 ms) than ``x - B (B^T x)`` on
# columns, whose long inner dimension MKL splits poorly. Kernel products are ``x K``.


def _orthonormalize(x: torch.Tensor, basis: torch.Tensor | None, gen: torch.Generator, passes: int = 2) -> torch.Tensor:
    """Orthonormal rows spanning x's rows minus their part in ``basis``'s rows; dependent rows refilled at random.

    ``passes`` Gram-Schmidt passes against ``basis`` (two: orthogonal to rounding, "twice is
    enough"; a caller that has already subtracted one projection asks for one).
    """
    for _ in range(3):
        if basis is not None and basis.shape[0]:
            for _ in range(passes):
                x = x - (x @ basis.T) @ basis
        scale = x.norm(dim=1)
        with _one_thread():
            q, r = torch.linalg.qr(x.T)  # x.T is column-major: LAPACK's layout, no copy
        bad = r.diagonal().abs() <= 1e-10 * scale.clamp_min(1e-300)
        if not bool(bad.any()):
            return q.T
        fresh = torch.randn(x.shape[1], int(bad.sum()), dtype=x.dtype, generator=gen).to(x.device)
        x = torch.cat([q.T[~bad], fresh.T], dim=0)
        passes = 2
    return q.T  # pragma: no cover - exhausted space


@dataclass
class _Deflation:
    u: torch.Tensor  # [k, N] orthonormal Ritz vectors (rows)
    ku: torch.Tensor  # [k, N] their products with K
    theta: torch.Tensor  # eigenvalues of u K u^T
    resid: torch.Tensor  # norms of the rows of (K u^T - u^T u K u^T)^T
    krylov_dim: int


def _ritz(q: torch.Tensor, aq: torch.Tensor, tmat: torch.Tensor, w: torch.Tensor, lock_tol: float,
          budget: float) -> _Deflation:
    """Lock the Ritz pairs with the smallest residuals: each <= lock_tol, their sum <= budget.

    ``q`` [j, N] is the Krylov basis, ``aq`` its products, ``tmat = q K q^T`` and ``w`` the
    residual block (``K q^T = q^T tmat + w^T E``, E the last block's rows). Every Ritz pair's
    residual is then ``||w^T y_last||`` (y_last: the eigenvector's last-block entries), so only
    the kept vectors are formed; their residuals are recomputed from the stored products.
    """
    with _one_thread():
        theta, y = torch.linalg.eigh(tmat)
    res = (y[-w.shape[0] :].T @ w).norm(dim=1)
    order = torch.argsort(res)
    cum = torch.cumsum(res[order], 0)
    keep = order[(res[order] <= lock_tol) & (cum <= budget)]
    keep = keep.sort().values
    yk = y[:, keep].T.contiguous()
    u, ku = yk @ q, yk @ aq
    # Exact Rayleigh-Ritz of the kept vectors against the stored products.
    h = ku @ u.T
    h = 0.5 * (h + h.T)
    with _one_thread():
        th, rot = torch.linalg.eigh(h)
    rot_t = rot.T.contiguous()
    u, ku = rot_t @ u, rot_t @ ku
    resid = (ku - (ku @ u.T) @ u).norm(dim=1)
    return _Deflation(u, ku, th, resid, q.shape[0])


def block_lanczos_deflation(
    op: KernelOperator,
    *,
    block: int,
    max_rank: int,
    lock_tol: float,
    budget: float,
    gen: torch.Generator,
    stop=None,
    check_every: int = 4,
) -> _Deflation:
    """Ritz pairs of K from block Lanczos with full reorthogonalisation.

    The Krylov basis grows by ``block`` vectors per product; every ``check_every``
    blocks the Ritz pairs whose estimated residual is <= ``lock_tol`` are formed and ``stop(defl)``
    decides whether to go on. Returns the locked pairs (ascending theta).
    """
    n = op.n
    dim_max = max(block, min(max_rank, n - 1))
    dev = op.device
    q = torch.empty(dim_max, n, dtype=torch.float64, device=dev)
    aq = torch.empty_like(q)
    tmat = torch.zeros(dim_max, dim_max, dtype=torch.float64, device=dev)
    x = _orthonormalize(torch.randn(n, block, dtype=torch.float64, generator=gen).to(dev).T, None, gen)
    j = 0
    it = 0
    while True:
        b = min(x.shape[0], dim_max - j)
        x = x[:b]
        q[j : j + b] = x
        w = op.rmatmat(x)
        aq[j : j + b] = w
        coeff = w @ q[: j + b].T
        tmat[j : j + b, : j + b] = coeff
        tmat[: j + b, j : j + b] = coeff.T
        j += b
        it += 1
        w = w - coeff @ q[:j]  # first Gram-Schmidt pass; the residual block of the Lanczos relation
        full = j >= dim_max
        if full or it % check_every == 0:
            t = tmat[:j, :j]
            defl = _ritz(q[:j], aq[:j], 0.5 * (t + t.T), w, lock_tol, budget)
            if full or (stop is not None and stop(defl)):
                return defl
        x = _orthonormalize(w, q[:j], gen, passes=1)


def _slq(
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
    with _one_thread():
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


def _control_variate(g: torch.Tensor, m1: torch.Tensor, m2: torch.Tensor, t1: float, t2: float) -> tuple[float, float]:
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


def approximate_entropy(
    op: KernelOperator,
    t: float = 1,
    *,
    seed: int = 0,
    n_probes: int = 32,
    lanczos_steps: int = DEFAULT_STEPS,
    block: int = DEFAULT_BLOCK,
    max_rank: int = DEFAULT_MAX_RANK,
    bound_tol: float = 0.05,
    lock_tol: float = 1e-3,
    slack: float = 2e-3,
    probe_dtype: torch.dtype | None = None,
) -> EntropyEstimate:
    """DSE (bits) of the operator ``op`` by deflated stochastic Lanczos quadrature, with bounds.

    Grows the deflated rank k (block Lanczos, ``block`` vectors per product, at most
    ``max_rank`` Krylov vectors) until the guaranteed bounds are ``bound_tol`` bits
    apart, then estimates the remainder with ``n_probes`` Rademacher probes of
    ``lanczos_steps`` Lanczos steps each. Ritz pairs with residual <= ``lock_tol`` are
    deflated while the bound slack they cost stays <= ``slack`` bits. See the module
    docstring for the math.

    ``probe_dtype=torch.float32`` with a dense float64 operator: after the deflation
    (which gives the bounds, in float64) the kernel is rounded to float32 in place
    (:meth:`~.operator.KernelOperator.round_to_float32`; ``op`` stays rounded) and the
    probes' products use it. The estimate moved by 1e-8 bits (N = 6,000, D = 256,
    standard error 1e-4), the bounds not at all; the 20 probe products cost about 0.6x.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.randn(600, 4, dtype=torch.float64, generator=g)
        >>> est = approximate_entropy(KernelOperator.build(z, 1.0))
        >>> from dse_monitor.functional import diffusion_spectral_entropy
        >>> exact = float(diffusion_spectral_entropy(z, 1.0))
        >>> est.lower <= exact <= est.upper and abs(est.value - exact) < 0.02
        True
    """
    if t not in (1, 2):
        raise ValueError(
            f"solver='lanczos' supports t = 1 and t = 2 (where sum lambda^t is an exact trace); got t={t!r}. "
            "Use solver='exact'."
        )
    if probe_dtype not in (None, torch.float32, torch.float64):
        raise ValueError(f"probe_dtype must be None, torch.float32 or torch.float64, got {probe_dtype!r}")
    if getattr(op, "indefinite", False):  # negative eigenvalues (the kNN kernel): other bounds
        from .indefinite import indefinite_entropy

        return indefinite_entropy(op, t, seed=seed, n_probes=n_probes, lanczos_steps=lanczos_steps, block=block,
                                  max_rank=max_rank, bound_tol=bound_tol, lock_tol=lock_tol, slack=slack)
    t = int(t)
    start = time.perf_counter()
    n = op.n
    gen = torch.Generator().manual_seed(seed)
    s = op.trace if t == 1 else op.frobenius_sq
    lip = _lipschitz(s, t)
    # Locking a Ritz pair with residual r widens both bounds by 2 L r: lock the best
    # converged pairs while that total stays below ``slack`` bits.
    budget = slack / (2 * lip)
    products0 = op.products

    def bounds(d: _Deflation, resid_sq: float | None = None) -> tuple[float, float, float, float, float]:
        k = d.theta.numel()
        top = float(phi(d.theta, s, t).sum())
        m1 = op.trace - float(d.theta.sum())
        m2 = op.frobenius_sq - 2 * float((d.ku**2).sum()) + float((d.theta**2).sum())
        m2 = max(m2, 0.0)
        c = min(1.0, math.sqrt(m2), max(m1, 0.0))
        lo, hi = radau_bounds(n - k, m1, m2, c, s, t)
        slack = 2 * lip * float(d.resid.sum()) + 1e-9 + 1e-12 * n
        return top + lo - slack, top + hi + slack, top, m1, m2

    def stop(d: _Deflation) -> bool:
        lo, hi, *_ = bounds(d)
        return hi - lo <= bound_tol

    if n <= 2 * block + 8:
        # Tiny problem: the Krylov space is the whole space; solve it exactly.
        kd = op.to_dense().double()
        with _one_thread():
            lam = torch.linalg.eigvalsh(0.5 * (kd + kd.T))
        val = float(phi(lam, float(lam.clamp_min(0).pow(t).sum()), t).sum())
        return EntropyEstimate(val, 0.0, val, val, "lanczos", n, 0, 0, f"{op.mode}-dense-solve",
                               time.perf_counter() - start)
    # The N x k bookkeeping (projections, reorthogonalisation, QR) runs on one thread:
    # it is a small share of the work and, on a loaded machine, OpenMP's barriers made it
    # 10-30x slower on two (N = 1,024: 0.04 s on one thread, 1.4 s on two). The kernel
    # products, the bulk of the work, keep the caller's threads.
    op.product_threads = torch.get_num_threads()
    with _one_thread() if n < BOOKKEEPING_THREADS_N else contextlib.nullcontext():
        defl = block_lanczos_deflation(
            op, block=block, max_rank=min(max_rank, n - 1), lock_tol=lock_tol, budget=budget, gen=gen, stop=stop
        )
        lo, hi, top, m1, m2 = bounds(defl)
        k = defl.theta.numel()
        storage = f"{op.mode}-{str(op.dtype).replace('torch.', '')}"
        if probe_dtype == torch.float32 and op.mode == "dense" and op.dtype == torch.float64:
            op.round_to_float32()
        g, gm1, gm2 = _slq(op, defl.u, n_probes, lanczos_steps, gen, s, t)
    rem, se = _control_variate(g, gm1, gm2, m1, m2)
    value = min(max(top + rem, lo), hi)
    info = {
        "probe_dtype": str(op.dtype).replace("torch.", ""),
        "krylov_dim": defl.krylov_dim,
        "products": op.products - products0,
        "remainder_mass": m1 / op.trace if op.trace else 0.0,
        "max_residual": float(defl.resid.max()) if k else 0.0,
        "raw_estimate": top + rem,
    }
    return EntropyEstimate(
        value, se, lo, hi, "lanczos", k, n_probes, lanczos_steps, storage, time.perf_counter() - start, info
    )
