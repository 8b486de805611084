"""Optimal jet weights (paper Remark 3): minimise the logit-space remainder over the simplex.

For one token position, with weight-free jets J_i = J^k γ_{L+1}(x_i)(h_L) (columns of
``J [d, n]``), target t = γ_{L+1}(h_L) and the Gram matrix G = UᵀU, the logit-space
remainder of the weighted expansion is

    ||U (t − J w)||² = wᵀ (JᵀGJ) w − 2 wᵀ JᵀG t + tᵀG t,

a convex quadratic in w. :func:`simplex_qp` minimises it over the simplex
{w ≥ 0, Σ w = 1} **exactly** with a primal active-set method (finite termination; each
step solves the equality-constrained problem on the free set through its KKT system).
A ridge of 1e-12·tr(Q)/n keeps KKT systems solvable when jets are collinear.

:func:`adam_simplex` is the gradient baseline (softmax-parametrised weights, Adam), used
in tests and benchmarks to check the exact solver is never worse.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from jetex.models.base import ResidualModel, tensor_digest
from jetex.models.load import cache_root
from jetex.results import write_atomic

_GRAMS: "weakref.WeakKeyDictionary[ResidualModel, tuple[tuple, Tensor]]" = weakref.WeakKeyDictionary()

#: below this many multiply-adds (V·d²) G is recomputed; above, it is also kept on disk
GRAM_DISK_MIN = 2e8


def unembedding_gram(model: ResidualModel) -> Float[Tensor, "d d"]:
    """G = UᵀU ``[d, d]`` in float64 on U's device, for the exact weights (Remark 3).

    Cached per model in memory (recomputed when U is changed in place or replaced) and, for
    real vocabularies (V·d² ≥ :data:`GRAM_DISK_MIN`), on disk in ``<cache>/grams/`` under
    the digest of U's values (:func:`jetex.models.base.tensor_digest`): the float64 product
    costs 0.75 s for SmolLM2 and ~5 s for Gemma 3 on 2 CPU cores, the digest ~30 ms / ~0.2 s,
    so a fresh process (each CLI call) reads G instead of recomputing it. The file is a
    safetensors file written atomically; one that cannot be read is recomputed and rewritten,
    one that cannot be written is skipped (the cache is an optimisation only).
    """
    U = model.unembedding_matrix
    key = (U.data_ptr(), U._version, tuple(U.shape), U.device)
    hit = _GRAMS.get(model)
    if hit is None or hit[0] != key:
        hit = (key, _gram_of(U.detach()))
        _GRAMS[model] = hit
    return hit[1]


def _gram_of(U: Tensor) -> Tensor:
    V, d = U.shape
    if V * d * d < GRAM_DISK_MIN:
        return U.T.double() @ U.double()
    from safetensors.torch import load, save

    path = cache_root() / "grams" / f"{tensor_digest(U)[:32]}.safetensors"
    try:
        G = load(path.read_bytes())["gram"]
        if tuple(G.shape) == (d, d) and G.dtype == torch.float64:
            return G.to(U.device)
    except Exception:  # missing, truncated or foreign file: recompute below
        pass
    G = U.T.double() @ U.double()
    _write_quietly(path, save({"gram": G.cpu().contiguous()}))
    return G


def _write_quietly(path: Path, data: bytes) -> None:
    """Write a cache file atomically; give up silently where the cache is not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
    except Exception:
        pass


def simplex_qp(Q: np.ndarray, c: np.ndarray, *, tol: float = 1e-12, max_iter: int | None = None) -> np.ndarray:
    """argmin_w ½ wᵀQw − cᵀw  subject to  w ≥ 0, Σ w = 1  (Q symmetric PSD, float64).

    Primal active-set method started at the best vertex. Returns w ``[n]``.
    """
    Q = np.asarray(Q, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    n = c.shape[0]
    if n == 1:
        return np.ones(1)
    scale = max(float(np.trace(Q)) / n, 1e-300)
    Q = Q + 1e-12 * scale * np.eye(n)
    i0 = int(np.argmin(0.5 * np.diag(Q) - c))
    w = np.zeros(n)
    w[i0] = 1.0
    free = np.zeros(n, dtype=bool)
    free[i0] = True
    max_iter = max_iter or 20 * n + 50
    gtol = tol * max(scale, float(np.abs(c).max(initial=0.0)), 1e-300) * 1e3
    for _ in range(max_iter):
        F = np.flatnonzero(free)
        m = F.size
        K = np.zeros((m + 1, m + 1))
        K[:m, :m] = Q[np.ix_(F, F)]
        K[:m, m] = -1.0
        K[m, :m] = 1.0
        rhs = np.concatenate([c[F], [1.0]])
        try:
            sol = np.linalg.solve(K, rhs)
        except np.linalg.LinAlgError:
            sol = np.linalg.lstsq(K, rhs, rcond=None)[0]
        v, lam = sol[:m], sol[m]
        if np.all(v >= -1e-14):
            w = np.zeros(n)
            w[F] = np.clip(v, 0.0, None)
            w /= w.sum()
            g = Q @ w - c
            mu = g - lam
            mu[free] = np.inf
            j = int(np.argmin(mu))
            if mu[j] >= -gtol:
                return w
            free[j] = True
        else:
            p = v - w[F]
            neg = p < 0
            ratios = np.where(neg, -w[F] / np.where(neg, p, -1.0), np.inf)
            alpha = float(min(1.0, ratios.min()))
            w[F] = w[F] + alpha * p
            drop = F[(w[F] <= 1e-15) & neg]
            if drop.size == 0:
                drop = F[[int(np.argmin(ratios))]]
            w[drop] = 0.0
            free[drop] = False
            w = np.clip(w, 0.0, None)
            w /= w.sum()
    return w


def logit_remainder_quadratic(
    J: Float[Tensor, "n p d"], target: Float[Tensor, "p d"], G: Float[Tensor, "d d"]
) -> tuple[Float[Tensor, "p n n"], Float[Tensor, "p n"], Float[Tensor, "p"]]:
    """Q_p = J_pᵀ G J_p, b_p = J_pᵀ G t_p, c_p = t_pᵀ G t_p for each position p (float64)."""
    J = J.detach().double()
    t = target.detach().to(device=J.device, dtype=torch.float64)
    G = G.detach().to(device=J.device, dtype=torch.float64)
    JG = torch.einsum("npd,de->npe", J, G)  # [n, p, d]
    Q = torch.einsum("npe,mpe->pnm", JG, J)
    b = torch.einsum("npe,pe->pn", JG, t)
    c = torch.einsum("pd,de,pe->p", t, G, t)
    return Q, b, c


def optimal_weights(
    J: Float[Tensor, "n p d"], target: Float[Tensor, "p d"], G: Float[Tensor, "d d"]
) -> Float[Tensor, "n p"]:
    """Per-position simplex weights minimising ||U(t_p − Σ_i w_ip J_ip)||² exactly (Remark 3).

    The quadratics are formed where ``J`` lives (e.g. on the GPU), solved on the CPU in float64
    (the active-set solver is NumPy), and the weights returned on ``J``'s device in ``J``'s dtype.
    """
    Q, b, _ = logit_remainder_quadratic(J, target, G)
    Qn, bn = Q.cpu().numpy(), b.cpu().numpy()
    W = np.stack([simplex_qp(2.0 * Qn[p], 2.0 * bn[p]) for p in range(Qn.shape[0])], axis=1)
    return torch.from_numpy(W).to(device=J.device, dtype=J.dtype)


def remainder_loss(
    w: Float[Tensor, "n p"], J: Float[Tensor, "n p d"], target: Float[Tensor, "p d"], G: Float[Tensor, "d d"]
) -> Float[Tensor, "p"]:
    """||U(t_p − Σ_i w_ip J_ip)||² per position, via G = UᵀU."""
    r = target - torch.einsum("np,npd->pd", w.to(J.dtype), J)
    return torch.einsum("pd,de,pe->p", r, G.to(r.dtype), r)


def adam_simplex(
    J: Float[Tensor, "n p d"],
    target: Float[Tensor, "p d"],
    G: Float[Tensor, "d d"],
    steps: int = 100,
    lr: float = 0.1,
) -> Float[Tensor, "n p"]:
    """Baseline: simplex weights by Adam on softmax logits (uniform start), ``steps`` steps.

    Runs in float64 on ``J``'s device; returns float64 weights there."""
    J, target, G = J.detach().double(), target.detach().double(), G.detach().to(device=J.device, dtype=torch.float64)
    theta = torch.zeros(J.shape[0], J.shape[1], dtype=torch.float64, device=J.device, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = remainder_loss(torch.softmax(theta, 0), J, target, G).sum()
        loss.backward()
        opt.step()
    return torch.softmax(theta.detach(), 0)
