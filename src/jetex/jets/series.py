"""Truncated Taylor series carried through the Taylor-mode engine.

A :class:`Series` is the jet of one intermediate value v(t) of ``f(x + t(y − x))``: its
coefficients v_0, v_1, …, v_{m−1} stacked in one tensor ``c`` of shape ``[m, *shape]``
(``v(t) = Σ_n v_n t^n``). Coefficients of degree ≥ m are known to be zero (the input
``x + t v`` has m = 2; a linear map keeps m; a product of series of lengths a and b has
length a + b − 1; a non-polynomial function fills all K = k + 1). The engine never
stores more than K coefficients: everything is truncated at degree k.

The helpers here implement the algebra of truncated series:

- :func:`cauchy` — product of two series, n-th coefficient Σ_{i+j=n} a_i ⊙ b_j, for any
  bilinear ``op`` (elementwise ``mul``, ``mm``, ``bmm``/``matmul``); computed as m_short
  shifted, batched calls of ``op`` so the temporary memory stays linear in K.
- :func:`compose` — φ ∘ x for an elementwise analytic φ given its scaled derivatives
  a_m = φ^{(m)}(x_0)/m!:  (φ∘x)_n = Σ_{m=1..n} a_m (u^m)_n, u = x − x_0.
- :func:`reciprocal` — 1/s by the recurrence r_n = −r_0 Σ_{j=1..n} s_j r_{n−j}.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(eq=False)
class Series:
    """Coefficients ``c[n]`` (n < m ≤ K) of a truncated series; shape ``[m, *shape]``."""

    c: Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.c, Tensor) or self.c.dim() < 1:
            raise ValueError("Series.c must be a tensor with a leading coefficient dimension")

    @property
    def m(self) -> int:
        """Number of stored coefficients (higher ones are zero)."""
        return int(self.c.shape[0])

    @property
    def shape(self) -> torch.Size:
        """Shape of each coefficient (the shape of the value in the traced function)."""
        return self.c.shape[1:]

    @property
    def ndim(self) -> int:
        return self.c.dim() - 1

    @property
    def dtype(self) -> torch.dtype:
        return self.c.dtype

    @property
    def c0(self) -> Tensor:
        """The primal value v_0 = v(0)."""
        return self.c[0]


def is_series(a: object) -> bool:
    return isinstance(a, Series)


def align(c: Tensor, ndim: int) -> Tensor:
    """View a stack ``[m, *s]`` as ``[m, 1, …, 1, *s]`` with ``ndim`` dims after the first.

    Needed before broadcasting a stack against a constant of higher rank, since the
    coefficient dim must stay in front.
    """
    extra = ndim - (c.dim() - 1)
    if extra <= 0:
        return c
    return c.reshape(c.shape[:1] + (1,) * extra + c.shape[1:])


def pad(c: Tensor, m: int) -> Tensor:
    """Zero-pad a stack ``[m0, …]`` to ``[m, …]`` (m ≥ m0)."""
    m0 = c.shape[0]
    if m0 >= m:
        return c
    return torch.cat([c, c.new_zeros((m - m0,) + tuple(c.shape[1:]))])


def add_to_c0(s: Series, const: Tensor | float, sign: float = 1.0) -> Series:
    """s + sign·const where const is constant: only c_0 changes (with broadcasting)."""
    c = s.c
    if isinstance(const, Tensor):
        out_shape = torch.broadcast_shapes(s.shape, const.shape)
        c = align(c, len(out_shape))
        c0 = c[:1] + const if sign == 1.0 else c[:1] - const if sign == -1.0 else c[:1] + sign * const
        rest = c[1:]
        if tuple(rest.shape[1:]) != tuple(out_shape):
            rest = rest.expand((rest.shape[0],) + tuple(out_shape))
        if c0.dtype != rest.dtype:
            rest = rest.to(c0.dtype)
        return Series(torch.cat([c0, rest]))
    c0 = c[:1] + sign * const
    return Series(torch.cat([c0, c[1:]]))


def add_series(a: Series, b: Series, alpha: float = 1.0) -> Series:
    """a + alpha·b for two series."""
    m = max(a.m, b.m)
    nd = max(a.ndim, b.ndim)
    ca, cb = align(a.c, nd), align(b.c, nd)
    if a.m < m:
        ca = pad(ca, m)
    if b.m < m:
        cb = pad(cb, m)
    if alpha == 1.0:
        return Series(ca + cb)
    return Series(ca + alpha * cb)


def scale(s: Series, const: Tensor | float) -> Series:
    """s ⊙ const (elementwise, const broadcast) on every coefficient."""
    if isinstance(const, Tensor):
        nd = max(s.ndim, const.dim())
        return Series(align(s.c, nd) * const)
    return Series(s.c * const)


def cauchy(a: Series, b: Series, K: int, op: Callable[[Tensor, Tensor], Tensor] = torch.mul) -> Series:
    """The truncated product series (a ⋆ b)_n = Σ_{i+j=n} op(a_i, b_j), n < K.

    ``op`` is bilinear and broadcasts over a leading coefficient dim of either operand:
    elementwise ``torch.mul`` (ranks are aligned here) or ``torch.matmul`` (for mm/bmm).
    The loop runs over the shorter series, out[j:] += op(long[:len], short_j), so the cost
    is min(m_a, m_b) batched calls and the temporaries stay linear in K.
    """
    m_out = min(K, a.m + b.m - 1)
    ca, cb = a.c, b.c
    if op is torch.mul:
        nd = max(a.ndim, b.ndim)
        ca, cb = align(ca, nd), align(cb, nd)
    if a.m == 1 and b.m == 1:
        return Series(op(ca[0], cb[0]).unsqueeze(0))
    terms: list[tuple[int, Tensor]] = []
    if b.m <= a.m:
        for j in range(min(b.m, m_out)):
            terms.append((j, op(ca[: min(a.m, m_out - j)], cb[j])))
    else:
        for j in range(min(a.m, m_out)):
            terms.append((j, op(ca[j], cb[: min(b.m, m_out - j)])))
    return Series(_accumulate(terms, m_out))


def _accumulate(terms: Sequence[tuple[int, Tensor]], m_out: int) -> Tensor:
    """Σ_j terms_j placed at coefficient offset j, as one ``[m_out, …]`` stack.

    The terms must be freshly computed tensors (the first one may be reused as the buffer).
    """
    j0, first = terms[0]
    shape = torch.broadcast_shapes(*[t.shape[1:] for _, t in terms])
    if j0 == 0 and first.shape[0] == m_out and tuple(first.shape[1:]) == tuple(shape):
        out, rest = first, terms[1:]
        for _, t in rest:
            if t.dtype != out.dtype:
                out = out.to(torch.promote_types(out.dtype, t.dtype))
    else:
        dtype = first.dtype
        for _, t in terms[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
        out = first.new_zeros((m_out,) + tuple(shape), dtype=dtype)
        rest = terms
    for j, t in rest:
        out[j : j + t.shape[0]].add_(t)
    return out


def shift_powers(u: Series, K: int) -> list[Tensor]:
    """Powers of a series u with u_0 = 0, truncated at K.

    Entry m (m = 1..K−1) holds the possibly non-zero coefficients (u^m)_m, (u^m)_{m+1}, …
    (at most K − m of them; fewer when u is a short series), stacked ``[len_m, *s]``;
    entry 0 is unused. Uses (u^m)_n = Σ_{j≥1} u_j (u^{m−1})_{n−j}.
    """
    powers: list[Tensor] = [u.c[:0]]
    if K <= 1 or u.m <= 1:
        return powers
    uc = u.c[1:K]  # u_1 .. u_{m-1}
    if uc.shape[0] == 1:
        # u = u_1 t: u^m = u_1^m t^m, all powers in one call
        e = torch.arange(1, K, dtype=uc.dtype, device=uc.device).reshape((K - 1,) + (1,) * (uc.dim() - 1))
        pw = torch.pow(uc, e)
        return powers + [pw[m - 1 : m] for m in range(1, K)]
    powers.append(uc)
    for m in range(2, K):
        prev = powers[m - 1]  # (u^{m-1})_{m-1 ...}
        length = min(K - m, prev.shape[0] + uc.shape[0] - 1)
        # (u^m)_{m+i} = Σ_j u_{1+j} (u^{m-1})_{m-1+i-j}
        terms = []
        for j in range(min(length, uc.shape[0])):
            ln = min(prev.shape[0], length - j)
            terms.append((j, prev[:ln] * uc[j]))
        powers.append(_accumulate(terms, length))
    return powers


def compose(a: Tensor, x: Series, K: int, y0: Tensor | None = None, powers: list[Tensor] | None = None) -> Series:
    """φ(x) for elementwise analytic φ, given ``a[m] = φ^{(m)}(x_0)/m!`` for m = 0..K−1.

    (φ∘x)_0 = ``y0`` if given (the exact primal from the op itself) else a_0, and
    (φ∘x)_n = Σ_{m=1..n} a_m (u^m)_n with u = x − x_0.
    """
    if y0 is None:
        y0 = a[0]
    if x.m == 1 or K == 1:
        return Series(y0.unsqueeze(0))
    if powers is None:
        powers = shift_powers(x, K)
    nd = x.ndim
    # degree ≥ 1 part: Σ_m a_m (u^m)_n for n = 1..K-1, offset by 1
    top = min(K, a.shape[0]) if isinstance(a, Tensor) else min(K, len(a))
    if top <= 1:
        return Series(torch.cat([y0.unsqueeze(0), y0.new_zeros((K - 1,) + tuple(y0.shape))]))
    terms = [(mm - 1, align(powers[mm], nd) * a[mm]) for mm in range(1, top) if powers[mm].shape[0]]
    higher = _accumulate(terms, K - 1)
    if higher.dtype != y0.dtype:
        higher = higher.to(y0.dtype)
    return Series(torch.cat([y0.unsqueeze(0), higher]))


def reciprocal(s: Series, K: int) -> Series:
    """1/s by the recurrence r_0 = 1/s_0, r_n = −r_0 Σ_{j=1..n} s_j r_{n−j}."""
    r0 = torch.reciprocal(s.c[0])
    if s.m == 1:
        return Series(r0.unsqueeze(0))
    sc = s.c
    rs = [r0]
    neg_r0 = -r0
    for n in range(1, K):
        top = min(n, s.m - 1)
        # Σ_{j=1..top} s_j r_{n-j}
        acc = sc[1 : top + 1] * torch.stack(rs[n - top : n][::-1]) if top > 1 else sc[1] * rs[n - 1]
        if top > 1:
            acc = acc.sum(0)
        rs.append(neg_r0 * acc)
    return Series(torch.stack(rs))


def scaled_derivative_stack(polys: Sequence[Sequence[float]], base: Tensor, K: int) -> Tensor:
    """``a[m] = Σ_i polys[m][i] · base^i`` for m < K, as a ``[K, *base.shape]`` stack.

    Used for functions whose derivatives are polynomials in a base value (tanh, sigmoid,
    Hermite-type derivatives of erf and GELU). Evaluated as (powers of base) × coefficients.
    """
    deg = max(len(p) for p in polys[:K])
    rows = [list(p) + [0.0] * (deg - len(p)) for p in polys[:K]]
    coef = torch.tensor(rows, dtype=base.dtype, device=base.device)  # [K, deg]
    exps = torch.arange(deg, dtype=base.dtype, device=base.device).reshape((deg,) + (1,) * base.dim())
    pw = torch.pow(base.unsqueeze(0), exps).reshape(deg, -1)  # [deg, N]
    return (coef @ pw).reshape((K,) + tuple(base.shape))
