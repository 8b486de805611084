"""Float-safe accumulation of jet terms (issue 11, item 2; docs/trust.md).

At order k ≥ 2 a jet of the final norm around a small-norm centre is evaluated far outside
its radius of convergence: on SmolLM2 and Gemma 3 single terms reach 1e7–1e12 logits while
the model's largest logit is ~30, and the exact rewrite q = Σ terms + remainder (Eq. 11)
holds only through cancellation. Summed in float32 (unit roundoff u = 6e-8) a cancellation
level κ = Σ|terms| / |Σ terms| of 1e6 already costs ~0.1 logit, and κ reaches 1e11.
At k = 1 the joint lens's sums lose ~2e-5 × max|logit|, but the iterative lens centred at
the embedding (centre→variate distance ~2e3 on SmolLM2) already loses 1.2e-3 × max|logit|.

Policy: **for k ≥ 1 coefficient stacks are summed, and terms, remainders and their logits
are held, in float64** whatever the model's dtype (:func:`accumulation_dtype`); at k = 0
(no Taylor series: terms are f(x), bounded by the norm) the working dtype is kept. The jets themselves are still computed in the model's dtype
(each coefficient to the working precision, relative to its own size); what float64 buys is
that the sums — and so Eq. 11 — are exact to float64 rounding of those values. The logits of
float64 terms are computed with a float64 unembedding, a vocabulary chunk at a time
(:func:`unembed`), so no float64 copy of U is kept.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from jetex.models.base import ResidualModel

#: orders from which sums are accumulated in float64
FLOAT64_FROM_ORDER = 1

#: vocabulary rows of U converted to float64 at a time in :func:`unembed`
_CHUNK = 8192


def accumulation_dtype(dtype: torch.dtype, order: int) -> torch.dtype:
    """The dtype jet sums, terms and remainders are held in: float64 for k ≥ 1, else ``dtype``."""
    if order >= FLOAT64_FROM_ORDER and dtype != torch.float64:
        return torch.float64
    return dtype


#: exp() of anything below this is a float32 subnormal (e^−87.3 is the smallest normal float32)
EXP_FLOOR = -87.0


def logsumexp(x: Tensor, dim: int = -1, keepdim: bool = False, *, out: Tensor | None = None) -> Tensor:
    """log Σ exp(x) along ``dim``, as :func:`torch.logsumexp`, without its slow path.

    ``torch.logsumexp`` on the CPU slows down ~5× when many shifted terms x − max fall below
    −87 (their exp is subnormal: measured 0.40 s against 0.09 s for a [512, 49152] float32
    block of logits spread over ±100, as the lens rows and order-0 n-gram paths are). Here the
    shifted terms are floored at ``EXP_FLOOR`` before exp: each floored term then adds at most
    e^−87 = 1.6e−38 to a sum that is ≥ 1, so the result changes by ≤ V·1.6e−38 relative
    (nothing in float32 or float64 for any vocabulary). Rows that are all −inf give −inf,
    a +inf entry gives +inf and NaN propagates, as in torch. ``out`` (x's shape; may be x
    itself) is scratch for the shifted terms, so a caller in a loop allocates nothing.
    """
    m = x.amax(dim, keepdim=True)
    finite = torch.isfinite(m)
    m0 = torch.where(finite, m, torch.zeros_like(m))
    shifted = x - m0 if out is None else torch.sub(x, m0, out=out)
    s = shifted.clamp_(min=EXP_FLOOR).exp_().sum(dim, keepdim=True)
    res = torch.where(finite | torch.isnan(m), m0 + s.log(), m)
    return res if keepdim else res.squeeze(dim)


def unit_roundoff(dtype: torch.dtype) -> float:
    """u = eps/2 of a floating dtype (float32: 6.0e-8, float16: 4.9e-4, bfloat16: 3.9e-3)."""
    return float(torch.finfo(dtype).eps) / 2


def unembed(
    model: ResidualModel, x: Float[Tensor, "*b d"], *, bias: bool = False, tokens: Tensor | None = None
) -> Float[Tensor, "*b v"]:
    """U x (+ the unembedding bias if ``bias``), in x's dtype; ``tokens`` (ids) keeps only those
    vocabulary rows (then the last dim has ``len(tokens)`` entries).

    Float64 ``x`` on a lower-precision model is multiplied by U in float64, one vocabulary
    chunk at a time (U itself is never copied whole); otherwise this is the plain matmul.
    """
    U = model.unembedding_matrix
    b = model.unembedding_bias if bias else None
    if tokens is not None:
        tokens = torch.as_tensor(tokens, dtype=torch.long, device=U.device)
        U = U[tokens]
        b = None if b is None else b[tokens]
    if x.dtype == U.dtype or x.dtype != torch.float64:
        out = x.to(U.dtype) @ U.T
        return out if b is None else out + b
    flat = x.reshape(-1, x.shape[-1])
    out = torch.empty(flat.shape[0], U.shape[0], dtype=torch.float64, device=x.device)
    for i in range(0, U.shape[0], _CHUNK):
        out[:, i : i + _CHUNK] = flat @ U[i : i + _CHUNK].detach().double().T
    if b is not None:
        out += b.detach().double()
    return out.reshape(*x.shape[:-1], U.shape[0])


__all__ = ["FLOAT64_FROM_ORDER", "accumulation_dtype", "unembed", "unit_roundoff"]
