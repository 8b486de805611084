"""Taylor rules: how each aten operation acts on truncated series (the RULES table).

``RULES[op](K, *args, **kwargs)`` receives the node's arguments, where every value that
depends on the variate is a :class:`~jetex.jets.series.Series` (coefficients c_0..c_{m−1}
stacked in front) and everything else is an ordinary constant, and returns the op's
result in the same form, truncated at K = k + 1 coefficients. Rules come in three kinds:

- *linear* ops (views, reshapes, indexing, concatenation, sums/means, casts, products with
  a constant operand): one batched call on the whole coefficient stack, with the op's
  dims shifted by one; constant addends (biases, masks) only enter c_0.
- *bilinear* ops between two series (mul, mm, bmm — e.g. q·kᵀ and p·v in attention):
  Cauchy products Σ_{i+j=n} a_i b_j (:func:`~jetex.jets.series.cauchy`).
- *non-linear* elementwise ops: composition with the op's scaled derivatives
  a_m = φ^{(m)}(x_0)/m! (:func:`~jetex.jets.series.compose`), or series division;
  softmax/log-softmax/LayerNorm/variance/max are built from these. Where the op's own
  kernel gives the primal value, c_0 is taken from it exactly.

Every rule registers sample functions (``SAMPLES[op]``) that use the op on a
variate-dependent value; the tests check each rule against nested float64 JVPs on them
and fail if a rule has no sample.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from jetex.jets.series import (
    Series,
    add_series,
    add_to_c0,
    align,
    cauchy,
    compose,
    is_series,
    pad,
    reciprocal,
    scale,
    scaled_derivative_stack,
)

aten = torch.ops.aten

Rule = Callable[..., Any]


@dataclass(frozen=True)
class Sample:
    """A function that uses an op on a value depending on its input, for testing its rule.

    ``shape`` is the input shape; ``positive`` asks for inputs in a positive range (log,
    square roots, fractional powers).
    """

    fn: Callable[[Tensor], Tensor]
    shape: tuple[int, ...]
    positive: bool = False


RULES: dict[Any, Rule] = {}
SAMPLES: dict[Any, list[Sample]] = {}


def register(op: Any, samples: Sequence[Sample]) -> Callable[[Rule], Rule]:
    """Register ``rule`` for ``op`` together with its test samples."""

    def deco(rule: Rule) -> Rule:
        RULES[op] = rule
        SAMPLES[op] = list(samples)
        return rule

    return deco


# ----------------------------------------------------------------------------- helpers
def _nd(dim: int, ndim: int) -> int:
    """Dim ``dim`` of a value with ``ndim`` dims, as a dim of its coefficient stack."""
    if ndim == 0:
        return 1 if dim in (0, -1) else dim + 1
    return dim % ndim + 1


def _dims(dims: Any, ndim: int) -> list[int]:
    """Reduction dims (None / [] meaning all) shifted to the stack."""
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        return list(range(1, ndim + 1))
    if isinstance(dims, int):
        dims = [dims]
    return [_nd(d, ndim) for d in dims]


def _linear(fn: Callable[[Tensor], Tensor]) -> Rule:
    """Rule for an op linear in its first argument: apply ``fn`` to the whole stack."""

    def rule(K: int, x: Series, *args: Any, **kwargs: Any) -> Series:
        return Series(fn(x, *args, **kwargs))

    return rule


def _const_from_primal(op: Any) -> Rule:
    """Rule for an op whose result is locally constant in its inputs (comparisons, *_like)."""

    def rule(K: int, *args: Any, **kwargs: Any) -> Any:
        args = tuple(a.c0 if is_series(a) else a for a in args)
        return op(*args, **kwargs)

    return rule


def _invfact(K: int) -> list[float]:
    out, f = [], 1.0
    for m in range(K):
        if m:
            f *= m
        out.append(1.0 / f)
    return out


def _col(values: Sequence[float], like: Tensor, ndim: int) -> Tensor:
    """A ``[len, 1, …, 1]`` tensor of ``values`` broadcasting against a stack of ``ndim`` dims."""
    return torch.tensor(list(values), dtype=like.dtype, device=like.device).reshape((len(values),) + (1,) * ndim)


def _binom(p: float, m: int) -> float:
    out = 1.0
    for i in range(m):
        out *= (p - i) / (i + 1)
    return out


def _with_c0(s: Series, c0: Tensor) -> Series:
    """Replace the primal coefficient by an exactly computed one."""
    rest = s.c[1:]
    if rest.dtype != c0.dtype:
        rest = rest.to(c0.dtype)
    return Series(torch.cat([c0.unsqueeze(0), rest]))


def _poly_derivs(base_deriv: list[float], K: int) -> list[list[float]]:
    """Derivatives of y as polynomials in y when y' = base_deriv(y) (a polynomial).

    Returns P_m (coefficients in powers of y) for m = 0..K−1 with P_0 = y.
    """
    polys = [[0.0, 1.0]]
    for _ in range(1, K):
        p = polys[-1]
        dp = [i * p[i] for i in range(1, len(p))]  # d/dy
        out = [0.0] * (len(dp) + len(base_deriv) - 1)
        for i, a in enumerate(dp):
            for j, b in enumerate(base_deriv):
                out[i + j] += a * b
        polys.append(out)
    return polys


def _scaled(polys: list[list[float]], K: int) -> list[list[float]]:
    inv = _invfact(K)
    return [[c * inv[m] for c in polys[m]] for m in range(K)]


def _hermite_prob(n: int) -> list[list[float]]:
    """Probabilists' Hermite polynomials He_0..He_n (coefficients in powers of x)."""
    hs = [[1.0], [0.0, 1.0]]
    for k in range(1, n):
        a, b = hs[k], hs[k - 1]
        nxt = [0.0] + a
        for i, c in enumerate(b):
            nxt[i] -= k * c
        hs.append(nxt)
    return hs[: n + 1]


def _hermite_phys(n: int) -> list[list[float]]:
    """Physicists' Hermite polynomials H_0..H_n."""
    hs = [[1.0], [0.0, 2.0]]
    for k in range(1, n):
        a, b = hs[k], hs[k - 1]
        nxt = [0.0] + [2.0 * c for c in a]
        for i, c in enumerate(b):
            nxt[i] -= 2.0 * k * c
        hs.append(nxt)
    return hs[: n + 1]


def _poly_add(a: list[float], b: list[float], sa: float = 1.0, sb: float = 1.0) -> list[float]:
    n = max(len(a), len(b))
    a = a + [0.0] * (n - len(a))
    b = b + [0.0] * (n - len(b))
    return [sa * u + sb * v for u, v in zip(a, b)]


# ----------------------------------------------------------------------------- samples
def _S(fn: Callable[[Tensor], Tensor], shape: tuple[int, ...] = (3, 4), positive: bool = False) -> Sample:
    return Sample(fn, shape, positive)


def _W(*shape: int, seed: int = 1) -> Tensor:
    g = torch.Generator().manual_seed(seed + 7 * len(shape) + sum(shape))
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _cast(w: Tensor, like: Tensor) -> Tensor:
    return w.to(like.dtype)


# ===================================================================== linear: shapes
@register(aten.view.default, [_S(lambda z: z.view(2, 6)), _S(lambda z: z.view(-1, 2, 3)[1])])
@register(aten._unsafe_view.default, [_S(lambda z: torch.ops.aten._unsafe_view.default(z, [12]))])
def _view(K: int, x: Series, size: Sequence[int]) -> Series:
    return Series(x.c.reshape([x.m, *size]))


@register(aten.permute.default, [_S(lambda z: z.view(3, 2, 2).permute(2, 0, 1) * 1.5)])
def _permute(K: int, x: Series, dims: Sequence[int]) -> Series:
    return Series(x.c.permute([0, *[_nd(d, x.ndim) for d in dims]]))


@register(aten.transpose.int, [_S(lambda z: z.view(3, 2, 2).transpose(0, -1) * 1.5)])
def _transpose(K: int, x: Series, d0: int, d1: int) -> Series:
    return Series(x.c.transpose(_nd(d0, x.ndim), _nd(d1, x.ndim)))


@register(aten.t.default, [_S(lambda z: z.t() * 2.0), _S(lambda z: z[0].t() * 2.0)])
def _t(K: int, x: Series) -> Series:
    return Series(x.c.transpose(1, 2) if x.ndim == 2 else x.c)


@register(aten.expand.default, [_S(lambda z: z[:1].expand(2, 3, 4) * 1.0), _S(lambda z: z.expand(2, -1, -1) * 1.0)])
def _expand(K: int, x: Series, size: Sequence[int], implicit: bool = False) -> Series:
    c = align(x.c, len(size))
    return Series(c.expand([x.m, *size]))


@register(aten.slice.Tensor, [_S(lambda z: z[1:, ::2] * 1.0), _S(lambda z: z[..., 1:3] * 1.0)])
def _slice(K: int, x: Series, dim: int = 0, start: Any = None, end: Any = None, step: int = 1) -> Series:
    return Series(aten.slice.Tensor(x.c, _nd(dim, x.ndim), start, end, step))


@register(aten.select.int, [_S(lambda z: z[1] * 1.0), _S(lambda z: z[:, -1] * 1.0)])
def _select(K: int, x: Series, dim: int, index: int) -> Series:
    return Series(x.c.select(_nd(dim, x.ndim), index))


@register(aten.unsqueeze.default, [_S(lambda z: z.unsqueeze(1) * 1.0), _S(lambda z: z[None] * 1.0)])
def _unsqueeze(K: int, x: Series, dim: int) -> Series:
    return Series(x.c.unsqueeze(dim % (x.ndim + 1) + 1))


@register(aten.squeeze.dim, [_S(lambda z: z[:1].squeeze(0) * 1.0)])
def _squeeze_dim(K: int, x: Series, dim: int) -> Series:
    return Series(x.c.squeeze(_nd(dim, x.ndim)) if x.ndim else x.c)


@register(aten.squeeze.dims, [_S(lambda z: z.view(1, 3, 1, 4).squeeze((0, 2)) * 1.0)])
def _squeeze_dims(K: int, x: Series, dims: Sequence[int]) -> Series:
    ds = [_nd(d, x.ndim) for d in dims] if x.ndim else []
    return Series(x.c.squeeze(ds) if ds else x.c)


@register(aten.squeeze.default, [_S(lambda z: z.view(1, 3, 1, 4).squeeze() * 1.0)])
def _squeeze_all(K: int, x: Series) -> Series:
    ds = [i + 1 for i, s in enumerate(x.shape) if s == 1]
    return Series(x.c.squeeze(ds) if ds else x.c)


@register(aten.clone.default, [_S(lambda z: z.t().contiguous() * 1.0), _S(lambda z: z.clone() * 1.0)])
def _clone(K: int, x: Series, memory_format: Any = None) -> Series:
    # series stacks are never mutated, so a clone need not copy
    return Series(x.c)


@register(aten.alias.default, [_S(lambda z: torch.ops.aten.alias.default(z) * 1.0)])
def _alias(K: int, x: Series) -> Series:
    return Series(x.c)


@register(aten.flip.default, [_S(lambda z: z.flip(-1) * 1.0)])
def _flip(K: int, x: Series, dims: Sequence[int]) -> Series:
    return Series(x.c.flip([_nd(d, x.ndim) for d in dims]))


@register(aten._to_copy.default, [_S(lambda z: z.to(torch.float32).to(torch.float64)), _S(lambda z: z.to(torch.float64) * 1.0)])
def _to_copy(K: int, x: Series, **kwargs: Any) -> Series:
    kwargs.pop("memory_format", None)
    return Series(aten._to_copy.default(x.c, **kwargs))


def _stack_parts(parts: Sequence[Any], m: int) -> list[Tensor]:
    """Coefficient stacks of a mix of series and constants, all padded to m."""
    out = []
    for p in parts:
        c = p.c if is_series(p) else p.unsqueeze(0)
        out.append(pad(c, m))
    return out


@register(
    aten.cat.default,
    [
        _S(lambda z, _w0=_W(2, 4): torch.cat([z, _cast(_w0, z)]) * 1.0),
        _S(lambda z: torch.cat([z[:, :2] ** 2, z, z.exp()], dim=-1) * 1.0),
    ],
)
def _cat(K: int, tensors: Sequence[Any], dim: int = 0) -> Series:
    series = [t for t in tensors if is_series(t)]
    m = max(s.m for s in series)
    ndim = series[0].ndim
    parts = _stack_parts([t for t in tensors if not (isinstance(t, Tensor) and t.dim() == 1 and t.numel() == 0)], m)
    return Series(torch.cat(parts, _nd(dim, ndim)))


@register(aten.stack.default, [_S(lambda z, _w0=_W(3, 4): torch.stack([z, _cast(_w0, z), z.sin()], dim=1) * 1.0)])
def _stack(K: int, tensors: Sequence[Any], dim: int = 0) -> Series:
    series = [t for t in tensors if is_series(t)]
    m = max(s.m for s in series)
    ndim = series[0].ndim + 1
    return Series(torch.stack(_stack_parts(tensors, m), dim % ndim + 1))


@register(aten.split.Tensor, [_S(lambda z: torch.cat(list(reversed(z.split(2, dim=-1))), -1) * 1.0)])
def _split(K: int, x: Series, split_size: int, dim: int = 0) -> list[Series]:
    return [Series(c) for c in x.c.split(split_size, _nd(dim, x.ndim))]


@register(aten.split_with_sizes.default, [_S(lambda z: z.split([1, 3], dim=1)[1] * 1.0)])
def _split_sizes(K: int, x: Series, split_sizes: Sequence[int], dim: int = 0) -> list[Series]:
    return [Series(c) for c in x.c.split(list(split_sizes), _nd(dim, x.ndim))]


@register(aten.unbind.int, [_S(lambda z: z.unbind(1)[2] * 1.0)])
def _unbind(K: int, x: Series, dim: int = 0) -> list[Series]:
    return [Series(c) for c in x.c.unbind(_nd(dim, x.ndim))]


@register(aten.index.Tensor, [_S(lambda z: z[torch.tensor([2, 0, 2])] * 1.0), _S(lambda z: z[:, torch.tensor([1, 3])] * 1.0)])
def _index(K: int, x: Series, indices: Sequence[Any]) -> Series:
    return Series(aten.index.Tensor(x.c, [None, *indices]))


@register(aten.index_select.default, [_S(lambda z: z.index_select(1, torch.tensor([3, 0])) * 1.0)])
def _index_select(K: int, x: Series, dim: int, index: Tensor) -> Series:
    return Series(x.c.index_select(_nd(dim, x.ndim), index))


@register(aten.gather.default, [_S(lambda z: z.gather(1, torch.tensor([[0, 0], [3, 1], [2, 2]])) * 1.0)])
def _gather(K: int, x: Series, dim: int, index: Tensor, sparse_grad: bool = False) -> Series:
    idx = index.unsqueeze(0).expand((x.m, *index.shape))
    return Series(x.c.gather(_nd(dim, x.ndim), idx))


@register(aten.constant_pad_nd.default, [_S(lambda z: F.pad(z, (1, 2), value=0.5) * 1.0)])
def _constant_pad(K: int, x: Series, padding: Sequence[int], value: float = 0.0) -> Series:
    c0 = aten.constant_pad_nd.default(x.c[0], padding, value)
    rest = aten.constant_pad_nd.default(x.c[1:], padding, 0.0)
    return Series(torch.cat([c0.unsqueeze(0), rest]))


# ===================================================================== linear: arithmetic
@register(aten.neg.default, [_S(lambda z: -z)])
def _neg(K: int, x: Series) -> Series:
    return Series(-x.c)


@register(aten.sum.dim_IntList, [_S(lambda z: z.sum(-1)), _S(lambda z: z.sum((0, 1), keepdim=True))])
def _sum_dim(K: int, x: Series, dim: Any = None, keepdim: bool = False, dtype: Any = None) -> Series:
    return Series(x.c.sum(_dims(dim, x.ndim), keepdim=keepdim, dtype=dtype))


@register(aten.sum.default, [_S(lambda z: z.sum())])
def _sum_all(K: int, x: Series, dtype: Any = None) -> Series:
    return Series(x.c.sum(_dims(None, x.ndim), dtype=dtype) if x.ndim else x.c)


@register(aten.mean.dim, [_S(lambda z: z.mean(-1, keepdim=True)), _S(lambda z: z.mean(0))])
def _mean_dim(K: int, x: Series, dim: Any = None, keepdim: bool = False, dtype: Any = None) -> Series:
    return Series(x.c.mean(_dims(dim, x.ndim), keepdim=keepdim, dtype=dtype))


@register(aten.mean.default, [_S(lambda z: z.mean())])
def _mean_all(K: int, x: Series, dtype: Any = None) -> Series:
    return Series(x.c.mean(_dims(None, x.ndim), dtype=dtype) if x.ndim else x.c)


def _add(K: int, a: Any, b: Any, alpha: float = 1) -> Any:
    if is_series(a) and is_series(b):
        return add_series(a, b, alpha)
    if is_series(a):
        return add_to_c0(a, b if alpha == 1 else b * alpha)
    sb = b if alpha == 1 else scale(b, alpha)
    return add_to_c0(sb, a)


register(
    aten.add.Tensor,
    [
        _S(lambda z: z + z.sin()),
        _S(lambda z, _w0=_W(2, 3, 4): z + _cast(_w0, z)),
        _S(lambda z, _w0=_W(4): _cast(_w0, z) + z),
        _S(lambda z: z + 0.25),
        _S(lambda z: torch.add(z, z[0].exp(), alpha=-2.0)),
        _S(lambda z, _w0=_W(4): torch.add(_cast(_w0, z), z, alpha=3.0)),
    ],
)(_add)


@register(aten.add.Scalar, [_S(lambda z: torch.ops.aten.add.Scalar(z, 1.5, alpha=2))])
def _add_scalar(K: int, x: Series, other: float, alpha: float = 1) -> Series:
    return add_to_c0(x, other * alpha)


@register(
    aten.sub.Tensor,
    [
        _S(lambda z: z - z.cos()),
        _S(lambda z, _w0=_W(4): z - _cast(_w0, z)),
        _S(lambda z, _w0=_W(2, 3, 4): _cast(_w0, z) - z),
        _S(lambda z: 1.0 - z),
    ],
)
def _sub(K: int, a: Any, b: Any, alpha: float = 1) -> Any:
    if is_series(b):
        return _add(K, a, b, -alpha)
    return add_to_c0(a, b if alpha == 1 else b * alpha, sign=-1.0)


@register(aten.sub.Scalar, [_S(lambda z: torch.ops.aten.sub.Scalar(z, 0.5))])
def _sub_scalar(K: int, x: Series, other: float, alpha: float = 1) -> Series:
    return add_to_c0(x, -other * alpha)


@register(aten.rsub.Scalar, [_S(lambda z: torch.ops.aten.rsub.Scalar(z, 2.0))])
def _rsub_scalar(K: int, x: Series, other: float, alpha: float = 1) -> Series:
    return add_to_c0(scale(x, -alpha), other)


@register(aten.rsub.Tensor, [_S(lambda z, _w0=_W(4): torch.ops.aten.rsub.Tensor(z, _cast(_w0, z)))])
def _rsub_tensor(K: int, x: Any, other: Any, alpha: float = 1) -> Any:
    return _sub(K, other, x, alpha)


@register(
    aten.mul.Tensor,
    [
        _S(lambda z: z * z.exp()),
        _S(lambda z, _w0=_W(2, 3, 4): z * _cast(_w0, z)),
        _S(lambda z, _w0=_W(4): _cast(_w0, z) * z),
        _S(lambda z: z * 3.0),
        _S(lambda z: z[0] * z[:, :1]),
        _S(lambda z: (z * z) * (z * z)),
    ],
)
def _mul(K: int, a: Any, b: Any) -> Any:
    if is_series(a) and is_series(b):
        return cauchy(a, b, K)
    if is_series(a):
        return scale(a, b)
    return scale(b, a)


@register(aten.mul.Scalar, [_S(lambda z: torch.ops.aten.mul.Scalar(z, -1.5))])
def _mul_scalar(K: int, x: Series, other: float) -> Series:
    return Series(x.c * other)


@register(
    aten.div.Tensor,
    [
        _S(lambda z: z / 3.0),
        _S(lambda z, _w0=_W(2, 3, 4).abs() + 1: z / _cast(_w0, z)),
        _S(lambda z, _w0=_W(4): _cast(_w0, z) / z, positive=True),
        _S(lambda z: z.sin() / z, positive=True),
        _S(lambda z: z / z.sum(-1, keepdim=True), positive=True),
        # non-linear denominators: every Taylor coefficient of b is non-zero, so a reciprocal
        # that used only b's first two coefficients (a linear b) would be caught
        _S(lambda z: z / (z * z + 1.0)),
        _S(lambda z: z.sin() / (z.exp() + z * z), positive=True),
        _S(lambda z, _w0=_W(4): _cast(_w0, z) / z.tanh().exp()),
    ],
)
def _div(K: int, a: Any, b: Any) -> Any:
    if not is_series(b):
        if isinstance(b, Tensor):
            nd = max(a.ndim, b.dim())
            return Series(align(a.c, nd) / b)
        return Series(a.c / b)
    r = reciprocal(b, K)
    out = cauchy(a, r, K) if is_series(a) else scale(r, a)
    a0 = a.c0 if is_series(a) else a
    return _with_c0(out, aten.div.Tensor(a0, b.c0))


@register(aten.div.Scalar, [_S(lambda z: torch.ops.aten.div.Scalar(z, 4.0))])
def _div_scalar(K: int, x: Series, other: float) -> Series:
    return Series(x.c / other)


@register(aten.reciprocal.default, [_S(lambda z: z.reciprocal(), positive=True)])
def _reciprocal(K: int, x: Series) -> Series:
    return _with_c0(reciprocal(x, K), aten.reciprocal.default(x.c0))


@register(
    aten.where.self,
    [
        _S(lambda z, _w0=_W(3, 4): torch.where(z > 0, z, _cast(_w0, z))),
        _S(lambda z, _w0=_W(2, 3, 4): torch.where(torch.tensor([True, False, True, False]), _cast(_w0, z), z.exp())),
        _S(lambda z: torch.where(torch.tensor([[True], [False], [True]]), z, z * z)),
    ],
)
def _where(K: int, cond: Tensor, a: Any, b: Any) -> Any:
    if is_series(cond):
        cond = cond.c0
    m = max(s.m for s in (a, b) if is_series(s))
    ref = a if is_series(a) else b

    def as_series(v: Any) -> Series:
        if is_series(v):
            return v
        if not isinstance(v, Tensor):  # a Python scalar takes the series' dtype
            v = torch.tensor(v, dtype=ref.dtype, device=ref.c.device)
        return Series(v.unsqueeze(0))

    sa, sb = as_series(a), as_series(b)
    nd = max(sa.ndim, sb.ndim, cond.dim())
    ca, cb = align(pad(sa.c, m), nd), align(pad(sb.c, m), nd)
    return Series(torch.where(cond, ca, cb))


@register(
    aten.masked_fill.Scalar,
    [_S(lambda z: z.masked_fill(torch.tensor([True, False, False, True]), -3.0)), _S(lambda z: z.masked_fill(z < 0, 0.0))],
)
def _masked_fill(K: int, x: Series, mask: Any, value: Any) -> Series:
    if is_series(mask):
        mask = mask.c0
    nd = max(x.ndim, mask.dim())
    c = align(x.c, nd)
    c0 = c[0].masked_fill(mask, value)
    rest = c[1:].masked_fill(mask, 0.0)
    return Series(torch.cat([c0.unsqueeze(0), rest]))


@register(aten.masked_fill.Tensor, [_S(lambda z: z.masked_fill(torch.tensor([True, False, False, True]), torch.tensor(2.0)))])
def _masked_fill_t(K: int, x: Any, mask: Any, value: Any) -> Any:
    if is_series(value):
        return _where(K, mask, value, x)
    return _masked_fill(K, x, mask, value)


# ===================================================================== (bi)linear matrix products
def _matmul_const(a: Any, b: Any) -> Series:
    """a @ b with exactly one series operand (broadcast over the coefficient dim)."""
    if is_series(a):
        return Series(torch.matmul(a.c, b))
    return Series(torch.matmul(a, b.c))


def _mm(K: int, a: Any, b: Any) -> Series:
    if is_series(a) and is_series(b):
        return cauchy(a, b, K, torch.matmul)
    return _matmul_const(a, b)


register(
    aten.mm.default,
    [
        _S(lambda z, _w0=_W(4, 5): z @ _cast(_w0, z)),
        _S(lambda z, _w0=_W(2, 3): _cast(_w0, z) @ z),
        _S(lambda z: z @ z.t().exp()),
    ],
)(_mm)
register(
    aten.bmm.default,
    [
        _S(lambda z, _w0=_W(2, 4, 3): torch.bmm(z, _cast(_w0, z)), (2, 3, 4)),
        _S(lambda z, _w0=_W(2, 5, 3): torch.bmm(_cast(_w0, z), z), (2, 3, 4)),
        _S(lambda z: torch.softmax(z @ z.transpose(1, 2), -1) @ z, (2, 3, 4)),
    ],
)(_mm)


def _unsq(a: Any) -> Any:
    return Series(a.c.unsqueeze(-1)) if is_series(a) else a.unsqueeze(-1)


@register(
    aten.mv.default,
    [
        _S(lambda z, _w0=_W(4): torch.tanh(z @ _cast(_w0, z))),
        _S(lambda z, _w0=_W(5, 3): _cast(_w0, z) @ z[0, :3]),
        _S(lambda z: z @ z[1].exp()),
    ],
)
def _mv(K: int, a: Any, b: Any) -> Series:
    out = _mm(K, a, _unsq(b))
    return Series(out.c.squeeze(-1))


@register(aten.dot.default, [_S(lambda z: torch.dot(z[0], z[1].sin())), _S(lambda z, _w0=_W(4): torch.dot(_cast(_w0, z), z[2]))])
def _dot(K: int, a: Any, b: Any) -> Series:
    return Series(_mul(K, a, b).c.sum(-1))


@register(
    aten.addmm.default,
    [
        _S(lambda z, _w0=_W(5), _w1=_W(4, 5): torch.addmm(_cast(_w0, z), z, _cast(_w1, z))),
        _S(lambda z: torch.addmm(z[:, :1], z, z.t(), beta=0.5, alpha=2.0)),
    ],
)
def _addmm(K: int, bias: Any, a: Any, b: Any, beta: float = 1, alpha: float = 1) -> Any:
    prod = _mm(K, a, b)
    if alpha != 1:
        prod = scale(prod, alpha)
    bias = bias if beta == 1 else (scale(bias, beta) if is_series(bias) else bias * beta)
    return _add(K, prod, bias)


@register(
    aten.baddbmm.default,
    [_S(lambda z, _w0=_W(2, 3, 3): torch.baddbmm(_cast(_w0, z), z, z.transpose(1, 2), alpha=0.5), (2, 3, 4))],
)
def _baddbmm(K: int, bias: Any, a: Any, b: Any, beta: float = 1, alpha: float = 1) -> Any:
    return _addmm(K, bias, a, b, beta, alpha)


# ===================================================================== elementwise non-linear
def _powers_cols(base: Tensor, exps: Sequence[float]) -> Tensor:
    """``[len(exps), *base.shape]`` stack of base ** e (one pow call)."""
    e = _col(exps, base, base.dim())
    return torch.pow(base.unsqueeze(0), e)


def _pow_series(K: int, x: Series, p: float, y0: Tensor) -> Series:
    """x ** p for a real scalar p via a_m = C(p, m) x_0^{p−m}."""
    top = K
    if float(p).is_integer() and p >= 0:
        top = min(K, int(p) + 1)
    coeff = [_binom(p, m) for m in range(top)]
    a = _powers_cols(x.c0, [p - m for m in range(top)]) * _col(coeff, x.c0, x.ndim)
    return compose(a, x, K, y0=y0)


@register(
    aten.pow.Tensor_Scalar,
    [
        _S(lambda z: z**2),
        _S(lambda z: z**3),
        _S(lambda z: z**-1.5, positive=True),
        _S(lambda z: z**0.7, positive=True),
        _S(lambda z: z**1 * 2.0),
        _S(lambda z: z**0 + z),
        _S(lambda z: z**6),
    ],
)
def _pow(K: int, x: Series, p: Any) -> Any:
    y0 = aten.pow.Tensor_Scalar(x.c0, p)
    if p == 0:
        return y0
    if p == 1:
        return Series(x.c)
    if p == 2:
        return cauchy(x, x, K)
    return _pow_series(K, x, float(p), y0)


@register(aten.rsqrt.default, [_S(lambda z: z.rsqrt(), positive=True)])
def _rsqrt(K: int, x: Series) -> Series:
    return _pow_series(K, x, -0.5, aten.rsqrt.default(x.c0))


@register(aten.sqrt.default, [_S(lambda z: z.sqrt(), positive=True)])
def _sqrt(K: int, x: Series) -> Series:
    return _pow_series(K, x, 0.5, aten.sqrt.default(x.c0))


@register(aten.exp.default, [_S(lambda z: z.exp()), _S(lambda z: (z * z).exp())])
def _exp(K: int, x: Series) -> Series:
    y0 = aten.exp.default(x.c0)
    a = y0.unsqueeze(0) * _col(_invfact(K), y0, x.ndim)
    return compose(a, x, K, y0=y0)


@register(aten.log.default, [_S(lambda z: z.log(), positive=True)])
def _log(K: int, x: Series) -> Series:
    y0 = aten.log.default(x.c0)
    if K == 1:
        return Series(y0.unsqueeze(0))
    inv = torch.reciprocal(x.c0)
    coeff = [0.0] + [(-1.0) ** (m - 1) / m for m in range(1, K)]
    a = _powers_cols(inv, list(range(K))) * _col(coeff, y0, x.ndim)
    return compose(a, x, K, y0=y0)


_SIGMOID_POLYS_CACHE: dict[int, list[list[float]]] = {}
_TANH_POLYS_CACHE: dict[int, list[list[float]]] = {}


def _sigmoid_polys(K: int) -> list[list[float]]:
    """σ^{(m)} as polynomials in σ (σ' = σ − σ²)."""
    if K not in _SIGMOID_POLYS_CACHE:
        _SIGMOID_POLYS_CACHE[K] = _poly_derivs([0.0, 1.0, -1.0], K)
    return _SIGMOID_POLYS_CACHE[K]


def _tanh_polys(K: int) -> list[list[float]]:
    """tanh^{(m)} as polynomials in T = tanh (T' = 1 − T²)."""
    if K not in _TANH_POLYS_CACHE:
        _TANH_POLYS_CACHE[K] = _poly_derivs([1.0, 0.0, -1.0], K)
    return _TANH_POLYS_CACHE[K]


@register(aten.sigmoid.default, [_S(lambda z: torch.sigmoid(z)), _S(lambda z: torch.sigmoid(3 * z))])
def _sigmoid(K: int, x: Series) -> Series:
    y0 = aten.sigmoid.default(x.c0)
    a = scaled_derivative_stack(_scaled(_sigmoid_polys(K), K), y0, K)
    return compose(a, x, K, y0=y0)


def _tanh_series(K: int, x: Series, y0: Tensor) -> Series:
    a = scaled_derivative_stack(_scaled(_tanh_polys(K), K), y0, K)
    return compose(a, x, K, y0=y0)


@register(aten.tanh.default, [_S(lambda z: torch.tanh(z)), _S(lambda z: 30.0 * torch.tanh(z / 30.0 * 20.0))])
def _tanh(K: int, x: Series) -> Series:
    return _tanh_series(K, x, aten.tanh.default(x.c0))


@register(aten.silu.default, [_S(lambda z: F.silu(z)), _S(lambda z: F.silu(z * z))])
def _silu(K: int, x: Series) -> Series:
    # silu^{(m)} = m σ^{(m−1)} + x σ^{(m)}
    sig = aten.sigmoid.default(x.c0)
    P = scaled_derivative_stack(_sigmoid_polys(K), sig, K)  # σ^{(m)}, unscaled
    inv = _invfact(K)
    if K == 1:
        return Series(aten.silu.default(x.c0).unsqueeze(0))
    ms = _col([m * inv[m] for m in range(1, K)], sig, x.ndim)
    hi = ms * P[:-1] + x.c0 * P[1:] * _col(inv[1:], sig, x.ndim)
    a = torch.cat([sig.unsqueeze(0), hi])  # a[0] is unused
    return compose(a, x, K, y0=aten.silu.default(x.c0))


_SQRT2 = math.sqrt(2.0)
_SQRT2PI = math.sqrt(2.0 * math.pi)


def _gelu_erf(K: int, x: Series) -> Series:
    y0 = aten.gelu.default(x.c0)
    if K == 1:
        return Series(y0.unsqueeze(0))
    x0 = x.c0
    phi = torch.exp(-0.5 * x0 * x0) / _SQRT2PI
    Phi = 0.5 * (1.0 + torch.erf(x0 / _SQRT2))
    he = _hermite_prob(K)
    inv = _invfact(K)
    polys: list[list[float]] = [[0.0], [0.0, 1.0]]  # a_1 = Φ + x φ: the x φ part here
    for m in range(2, K):
        q = _poly_add(he[m - 2], he[m], 1.0, -1.0)
        polys.append([((-1.0) ** m) * c * inv[m] for c in q])
    a = scaled_derivative_stack(polys, x0, K) * phi
    a = torch.cat([a[:1], (a[1] + Phi).unsqueeze(0), a[2:]])
    return compose(a, x, K, y0=y0)


_GELU_C = math.sqrt(2.0 / math.pi)


def _gelu_tanh(K: int, x: Series) -> Series:
    y0 = aten.gelu.default(x.c0, approximate="tanh")
    if K == 1:
        return Series(y0.unsqueeze(0))
    x3 = _pow(K, x, 3)
    w = scale(add_series(x, x3, 0.044715), _GELU_C)
    T = _tanh_series(K, w, torch.tanh(w.c0))
    onepT = add_to_c0(T, 1.0)
    y = scale(cauchy(x, onepT, K), 0.5)
    return _with_c0(y, y0)


@register(
    aten.gelu.default,
    [
        _S(lambda z: F.gelu(z)),
        _S(lambda z: F.gelu(z, approximate="tanh")),
        _S(lambda z: F.gelu(2 * z * z, approximate="tanh")),
    ],
)
def _gelu(K: int, x: Series, approximate: str = "none") -> Series:
    if approximate == "tanh":
        return _gelu_tanh(K, x)
    return _gelu_erf(K, x)


@register(aten.erf.default, [_S(lambda z: torch.erf(z)), _S(lambda z: torch.erf(z * z - 0.5))])
def _erf(K: int, x: Series) -> Series:
    y0 = aten.erf.default(x.c0)
    if K == 1:
        return Series(y0.unsqueeze(0))
    x0 = x.c0
    g = torch.exp(-x0 * x0) * (2.0 / math.sqrt(math.pi))
    H = _hermite_phys(K)
    inv = _invfact(K)
    polys: list[list[float]] = [[0.0]] + [[((-1.0) ** (m - 1)) * c * inv[m] for c in H[m - 1]] for m in range(1, K)]
    a = scaled_derivative_stack(polys, x0, K) * g
    return compose(a, x, K, y0=y0)


def _sincos(K: int, x: Series, shift: int, y0: Tensor) -> Series:
    s, c = torch.sin(x.c0), torch.cos(x.c0)
    cyc = torch.stack([s, c, -s, -c])
    idx = torch.tensor([(m + shift) % 4 for m in range(K)], device=x.c0.device)
    a = cyc[idx] * _col(_invfact(K), y0, x.ndim)
    return compose(a, x, K, y0=y0)


@register(aten.sin.default, [_S(lambda z: torch.sin(z))])
def _sin(K: int, x: Series) -> Series:
    return _sincos(K, x, 0, aten.sin.default(x.c0))


@register(aten.cos.default, [_S(lambda z: torch.cos(z))])
def _cos(K: int, x: Series) -> Series:
    return _sincos(K, x, 1, aten.cos.default(x.c0))


def _masked(x: Series, y0: Tensor, mask: Tensor) -> Series:
    """A piecewise-linear op: c_0 = y0, higher coefficients pass where ``mask``, else 0."""
    rest = x.c[1:] * mask.to(x.c.dtype)
    return Series(torch.cat([y0.unsqueeze(0), rest.to(y0.dtype)]))


@register(aten.clamp.default, [_S(lambda z: z.clamp(-0.5, 0.8)), _S(lambda z: z.clamp(min=0.1)), _S(lambda z: z.clamp(max=0.1))])
def _clamp(K: int, x: Series, min: Any = None, max: Any = None) -> Series:
    x0 = x.c0
    mask = torch.ones_like(x0, dtype=torch.bool)
    if min is not None:
        mask = mask & (x0 >= min)
    if max is not None:
        mask = mask & (x0 <= max)
    return _masked(x, aten.clamp.default(x0, min, max), mask)


@register(aten.clamp_min.default, [_S(lambda z: torch.ops.aten.clamp_min.default(z, 0.2))])
def _clamp_min(K: int, x: Series, min: Any) -> Series:
    return _masked(x, aten.clamp_min.default(x.c0, min), x.c0 >= min)


@register(aten.clamp_max.default, [_S(lambda z: torch.ops.aten.clamp_max.default(z, 0.2))])
def _clamp_max(K: int, x: Series, max: Any) -> Series:
    return _masked(x, aten.clamp_max.default(x.c0, max), x.c0 <= max)


@register(aten.relu.default, [_S(lambda z: F.relu(z)), _S(lambda z: F.relu(z) ** 2)])
def _relu(K: int, x: Series) -> Series:
    return _masked(x, aten.relu.default(x.c0), x.c0 > 0)


@register(aten.abs.default, [_S(lambda z: z.abs() * z)])
def _abs(K: int, x: Series) -> Series:
    return Series(torch.cat([aten.abs.default(x.c0).unsqueeze(0), (x.c[1:] * torch.sign(x.c0)).to(x.dtype)]))


# ===================================================================== activations (transformers' ACT2FN, torch)
def _elu_series(K: int, x: Series, alpha: float, scale_: float, input_scale: float, y0: Tensor) -> Series:
    """scale·x for x > 0, scale·alpha·(exp(input_scale·x) − 1) otherwise (torch's elu)."""
    if K == 1 or x.m == 1:
        return Series(y0.unsqueeze(0))
    x0 = x.c0
    inv = _invfact(K)
    # the exponential branch evaluated at min(x0, 0) only: no overflow where it is not used
    e = torch.exp(x0.clamp(max=0) * input_scale) * (scale_ * alpha)
    a_neg = e.unsqueeze(0) * _col([input_scale**m * inv[m] for m in range(K)], x0, x.ndim)
    a_pos = _col([0.0, scale_] + [0.0] * (K - 2), x0, x.ndim)
    return compose(torch.where(x0 > 0, a_pos, a_neg), x, K, y0=y0)


@register(
    aten.elu.default,
    [
        _S(lambda z: F.elu(z)),
        _S(lambda z: F.elu(2 * z * z - 1, alpha=0.5)),
        _S(lambda z: F.selu(z)),
        _S(lambda z: torch.ops.aten.elu.default(z, 1.3, 0.7, 2.0)),
    ],
)
def _elu(K: int, x: Series, alpha: float = 1, scale: float = 1, input_scale: float = 1) -> Series:
    y0 = aten.elu.default(x.c0, alpha, scale, input_scale)
    return _elu_series(K, x, float(alpha), float(scale), float(input_scale), y0)


@register(aten.celu.default, [_S(lambda z: F.celu(z)), _S(lambda z: F.celu(z * 3, alpha=2.0))])
def _celu(K: int, x: Series, alpha: float = 1.0) -> Series:
    y0 = aten.celu.default(x.c0, alpha)
    return _elu_series(K, x, float(alpha), 1.0, 1.0 / float(alpha), y0)


def _softplus_series(K: int, x: Series, beta: float, threshold: float | None, y0: Tensor) -> Series:
    """(1/β) log(1 + exp(βx)); linear (x) where βx > threshold, as torch (None: nowhere)."""
    if K == 1 or x.m == 1:
        return Series(y0.unsqueeze(0))
    x0 = x.c0
    sig = aten.sigmoid.default(x0 * beta)
    P = scaled_derivative_stack(_sigmoid_polys(K), sig, K)  # σ^{(j)}(βx0), unscaled
    inv = _invfact(K)
    # softplus^{(m)} = β^{m−1} σ^{(m−1)}(βx)
    hi = P[:-1] * _col([beta ** (m - 1) * inv[m] for m in range(1, K)], x0, x.ndim)
    a = torch.cat([y0.unsqueeze(0), hi])
    if threshold is not None:
        lin = _col([0.0, 1.0] + [0.0] * (K - 2), x0, x.ndim)
        a = torch.where(x0 * beta > threshold, lin, a)
    return compose(a, x, K, y0=y0)


@register(
    aten.softplus.default,
    [
        _S(lambda z: F.softplus(z)),
        _S(lambda z: F.softplus(3 * z, beta=2.0, threshold=3.0)),
        _S(lambda z: F.softplus(z * z, beta=0.5).sqrt()),
    ],
)
def _softplus(K: int, x: Series, beta: float = 1, threshold: float = 20) -> Series:
    y0 = aten.softplus.default(x.c0, beta, threshold)
    return _softplus_series(K, x, float(beta), float(threshold), y0)


@register(aten.log_sigmoid_forward.default, [_S(lambda z: F.logsigmoid(z)), _S(lambda z: F.logsigmoid(4 * z * z - 2))])
def _log_sigmoid(K: int, x: Series) -> tuple[Series, Tensor]:
    y0, buffer = aten.log_sigmoid_forward.default(x.c0)
    if K == 1 or x.m == 1:
        return Series(y0.unsqueeze(0)), buffer
    # (log σ)^{(m)}(x) = (−1)^{m−1} σ^{(m−1)}(−x)
    s = aten.sigmoid.default(-x.c0)
    P = scaled_derivative_stack(_sigmoid_polys(K), s, K)
    inv = _invfact(K)
    hi = P[:-1] * _col([(-1.0) ** (m - 1) * inv[m] for m in range(1, K)], s, x.ndim)
    return compose(torch.cat([y0.unsqueeze(0), hi]), x, K, y0=y0), buffer


@register(aten.mish.default, [_S(lambda z: F.mish(z)), _S(lambda z: F.mish(3 * z * z - 2))])
def _mish(K: int, x: Series) -> Series:
    y0 = aten.mish.default(x.c0)
    if K == 1 or x.m == 1:
        return Series(y0.unsqueeze(0))
    # mish(x) = x · tanh(softplus(x)) (torch: no linear region in softplus here)
    sp = _softplus_series(K, x, 1.0, None, F.softplus(x.c0))
    T = _tanh_series(K, sp, torch.tanh(sp.c0))
    return _with_c0(cauchy(x, T, K), y0)


@register(aten.hardtanh.default, [_S(lambda z: F.hardtanh(z)), _S(lambda z: F.relu6(4 * z + 3)), _S(lambda z: F.hardtanh(z * z, -0.5, 0.7))])
def _hardtanh(K: int, x: Series, min_val: float = -1, max_val: float = 1) -> Series:
    x0 = x.c0
    return _masked(x, aten.hardtanh.default(x0, min_val, max_val), (x0 > min_val) & (x0 < max_val))


@register(aten.leaky_relu.default, [_S(lambda z: F.leaky_relu(z)), _S(lambda z: F.leaky_relu(z * z.exp() - 0.3, 0.2))])
def _leaky_relu(K: int, x: Series, negative_slope: float = 0.01) -> Series:
    x0 = x.c0
    y0 = aten.leaky_relu.default(x0, negative_slope)
    slope = torch.where(x0 > 0, torch.ones_like(x0), torch.full_like(x0, float(negative_slope)))
    return Series(torch.cat([y0.unsqueeze(0), (x.c[1:] * slope).to(y0.dtype)]))


@register(
    aten._prelu_kernel.default,
    [
        _S(lambda z, _w0=_W(4): F.prelu(z, _cast(_w0, z))),
        _S(lambda z: F.prelu(z, z[0, :1].exp()), (3, 4)),
    ],
)
def _prelu(K: int, x: Any, weight: Any) -> Any:
    # x for x > 0, weight·x otherwise
    x0 = x.c0 if is_series(x) else x
    out = _where(K, x0 > 0, x, _mul(K, x, weight))
    return _with_c0(out, aten._prelu_kernel.default(x0, _primal(weight)))


@register(aten.hardswish.default, [_S(lambda z: F.hardswish(4 * z)), _S(lambda z: F.hardswish(2 * z * z - 3))])
def _hardswish(K: int, x: Series) -> Series:
    x0 = x.c0
    y0 = aten.hardswish.default(x0)
    if K == 1 or x.m == 1:
        return Series(y0.unsqueeze(0))
    # 0 for x < −3, x(x + 3)/6 for −3 ≤ x ≤ 3, x above (torch's branches)
    mid = (x0 >= -3) & (x0 <= 3)
    a1 = torch.where(x0 < -3, torch.zeros_like(x0), torch.where(mid, (2 * x0 + 3) / 6, torch.ones_like(x0)))
    a2 = torch.where(mid, torch.full_like(x0, 1.0 / 6.0), torch.zeros_like(x0))
    return compose(torch.stack([y0, a1, a2]), x, K, y0=y0)


@register(aten.hardsigmoid.default, [_S(lambda z: F.hardsigmoid(4 * z)), _S(lambda z: F.hardsigmoid(3 * z * z - 2) * z)])
def _hardsigmoid(K: int, x: Series) -> Series:
    x0 = x.c0
    y0 = aten.hardsigmoid.default(x0)
    slope = ((x0 > -3) & (x0 < 3)).to(x.c.dtype) / 6.0
    return Series(torch.cat([y0.unsqueeze(0), (x.c[1:] * slope).to(y0.dtype)]))


@register(aten.expm1.default, [_S(lambda z: torch.expm1(z)), _S(lambda z: torch.expm1(z * z))])
def _expm1(K: int, x: Series) -> Series:
    y0 = aten.expm1.default(x.c0)
    a = torch.exp(x.c0).unsqueeze(0) * _col(_invfact(K), y0, x.ndim)
    return compose(a, x, K, y0=y0)


@register(aten.log1p.default, [_S(lambda z: torch.log1p(z), positive=True), _S(lambda z: torch.log1p(z * z))])
def _log1p(K: int, x: Series) -> Series:
    y0 = aten.log1p.default(x.c0)
    if K == 1:
        return Series(y0.unsqueeze(0))
    inv = torch.reciprocal(1 + x.c0)
    coeff = [0.0] + [(-1.0) ** (m - 1) / m for m in range(1, K)]
    a = _powers_cols(inv, list(range(K))) * _col(coeff, y0, x.ndim)
    return compose(a, x, K, y0=y0)


def _pick(K: int, a: Any, b: Any, take_a: Tensor, y0: Tensor) -> Any:
    return _with_c0(_where(K, take_a, a, b), y0)


@register(
    aten.minimum.default,
    [
        _S(lambda z: torch.minimum(z, z.sin() * 2)),
        _S(lambda z, _w0=_W(4): torch.minimum(_cast(_w0, z), z * z)),
        _S(lambda z: torch.expm1(torch.minimum(z, torch.tensor(-1e-6, dtype=z.dtype)))),
    ],
)
def _minimum(K: int, a: Any, b: Any) -> Any:
    a0, b0 = _primal(a), _primal(b)
    return _pick(K, a, b, a0 <= b0, aten.minimum.default(a0, b0))


@register(
    aten.maximum.default,
    [_S(lambda z: torch.maximum(z, z.cos())), _S(lambda z, _w0=_W(3, 4): torch.maximum(z.exp(), _cast(_w0, z)))],
)
def _maximum(K: int, a: Any, b: Any) -> Any:
    a0, b0 = _primal(a), _primal(b)
    return _pick(K, a, b, a0 >= b0, aten.maximum.default(a0, b0))


# ===================================================================== reductions, normalisations
def _exp_u(K: int, x: Series) -> Series:
    """exp(x − x_0) as a series with constant term 1 (a_m = 1/m!)."""
    ones = torch.ones_like(x.c0)
    a = ones.unsqueeze(0) * _col(_invfact(K), ones, x.ndim)
    return compose(a, x, K, y0=ones)


@register(
    aten._softmax.default,
    [_S(lambda z: torch.softmax(z, -1)), _S(lambda z: torch.softmax(z * z, 0)), _S(lambda z: torch.softmax(z, 1), (2, 3, 4))],
)
def _softmax(K: int, x: Series, dim: int, half_to_float: bool = False) -> Series:
    y0 = aten._softmax.default(x.c0, dim, half_to_float)
    if K == 1 or x.m == 1:
        return Series(y0.unsqueeze(0))
    d = _nd(dim, x.ndim)
    E = _exp_u(K, x)  # softmax(x_0 + u) = y_0 e^u / Σ y_0 e^u
    N = scale(E, y0)
    S = Series(N.c.sum(d, keepdim=True))
    R = reciprocal(S, K)
    return _with_c0(cauchy(N, R, K), y0)


@register(aten._log_softmax.default, [_S(lambda z: torch.log_softmax(z, -1)), _S(lambda z: torch.log_softmax(z * z, 0))])
def _log_softmax(K: int, x: Series, dim: int, half_to_float: bool = False) -> Series:
    y0 = aten._log_softmax.default(x.c0, dim, half_to_float)
    if K == 1 or x.m == 1:
        return Series(y0.unsqueeze(0))
    d = _nd(dim, x.ndim)
    p0 = torch.exp(y0)
    E = _exp_u(K, x)
    S = Series(scale(E, p0).c.sum(d, keepdim=True))  # S_0 = Σ p_0 = 1
    logS = _log(K, S)
    u = Series(torch.cat([torch.zeros_like(x.c[:1]), x.c[1:]]))
    return _with_c0(add_series(u, logS, -1.0), y0)


def _argmax_gather(x: Series, dims: Sequence[int], keepdim: bool) -> tuple[Tensor, Series]:
    """max over ``dims`` of a series: c_0 is the max of x_0, higher coefficients are read at its argmax."""
    nd = x.ndim
    ds = sorted({d % nd for d in dims}) if nd else []
    x0 = x.c0
    y0 = aten.amax.default(x0, ds, keepdim) if ds else x0
    if not ds:
        return y0, x
    keep = [i for i in range(nd) if i not in ds]
    perm = keep + ds
    c = x.c.permute([0] + [i + 1 for i in perm])
    flat = c.reshape(c.shape[: 1 + len(keep)] + (-1,))
    idx = flat[0].argmax(-1, keepdim=True)  # first maximiser
    hi = flat[1:].gather(-1, idx.unsqueeze(0).expand((x.m - 1,) + tuple(idx.shape))).squeeze(-1)
    if keepdim:
        for d in ds:
            hi = hi.unsqueeze(d + 1)
    return y0, Series(torch.cat([y0.unsqueeze(0), hi.to(y0.dtype)]))


@register(aten.amax.default, [_S(lambda z: z.amax(-1)), _S(lambda z: z.amax((0, 1), keepdim=True)), _S(lambda z: z.amax(0, keepdim=True) * z)])
def _amax(K: int, x: Series, dim: Sequence[int] = (), keepdim: bool = False) -> Series:
    dims = list(dim) if len(dim) else list(range(x.ndim))
    return _argmax_gather(x, dims, keepdim)[1]


@register(aten.max.dim, [_S(lambda z: z.max(-1).values), _S(lambda z: z.max(0, keepdim=True).values * z)])
def _max_dim(K: int, x: Series, dim: int, keepdim: bool = False) -> tuple[Series, Tensor]:
    values, indices = aten.max.dim(x.c0, dim, keepdim)
    s = _argmax_gather(x, [dim], keepdim)[1]
    return _with_c0(s, values), indices


def _centred_square_mean(K: int, x: Series, dims: list[int], denom_correction: float) -> tuple[Series, Series]:
    """(Σ (x − x̄)² / (N − correction), x̄) over ``dims`` (keepdim)."""
    mean = Series(x.c.mean(dims, keepdim=True))
    d = add_series(x, mean, -1.0)
    n = 1
    for i in dims:
        n *= x.c.shape[i]
    sq = cauchy(d, d, K)
    var = Series(sq.c.sum(dims, keepdim=True) / max(n - denom_correction, 0))
    return var, mean


@register(
    aten.var.correction,
    [_S(lambda z: z.var(-1)), _S(lambda z: z.var((0, 1), keepdim=True, correction=0)), _S(lambda z: torch.var(z * z, 0))],
)
def _var(K: int, x: Series, dim: Any = None, *, correction: Any = None, keepdim: bool = False) -> Series:
    dims = _dims(dim, x.ndim)
    corr = 1.0 if correction is None else float(correction)
    var, _ = _centred_square_mean(K, x, dims, corr)
    c = var.c if keepdim else var.c.squeeze(dims)
    y0 = aten.var.correction(x.c0, dim, correction=correction, keepdim=keepdim)
    return _with_c0(Series(c), y0)


@register(aten.var_mean.correction, [_S(lambda z: torch.var_mean(z, -1)[0] + torch.var_mean(z, -1)[1])])
def _var_mean(K: int, x: Series, dim: Any = None, *, correction: Any = None, keepdim: bool = False) -> tuple[Series, Series]:
    dims = _dims(dim, x.ndim)
    corr = 1.0 if correction is None else float(correction)
    var, mean = _centred_square_mean(K, x, dims, corr)
    if not keepdim:
        var, mean = Series(var.c.squeeze(dims)), Series(mean.c.squeeze(dims))
    v0, m0 = aten.var_mean.correction(x.c0, dim, correction=correction, keepdim=keepdim)
    return _with_c0(var, v0), _with_c0(mean, m0)


@register(
    aten.native_layer_norm.default,
    [
        _S(lambda z, _w0=_W(4), _w1=_W(4, seed=3): F.layer_norm(z, (4,), _cast(_w0, z), _cast(_w1, z))),
        _S(lambda z: F.layer_norm(z, (3, 4)), (2, 3, 4)),
    ],
)
def _layer_norm(K: int, x: Series, normalized_shape: Sequence[int], weight: Any, bias: Any, eps: float) -> tuple[Any, Any, Any]:
    dims = list(range(x.ndim - len(normalized_shape) + 1, x.ndim + 1))
    var, mean = _centred_square_mean(K, x, dims, 0.0)
    rstd = _pow_series(K, add_to_c0(var, eps), -0.5, aten.rsqrt.default(var.c0 + eps))
    out = cauchy(add_series(x, mean, -1.0), rstd, K)
    if weight is not None:
        out = _mul(K, out, weight)
    if bias is not None:
        out = _add(K, out, bias)
    o0, m0, r0 = aten.native_layer_norm.default(x.c0, normalized_shape, _primal(weight), _primal(bias), eps)
    return _with_c0(out, o0), _with_c0(mean, m0), _with_c0(rstd, r0)


def _primal(a: Any) -> Any:
    return a.c0 if is_series(a) else a


# ===================================================================== locally constant results
_CONSTANT_OPS = [
    (aten.gt.Tensor, _S(lambda z: torch.where(z > z[0], z, 0.0 * z))),
    (aten.gt.Scalar, _S(lambda z: torch.where(z > 0.1, z, z * z))),
    (aten.lt.Tensor, _S(lambda z: torch.where(z < z[0], z, 0.0 * z))),
    (aten.lt.Scalar, _S(lambda z: torch.where(z < 0.1, z, z * z))),
    (aten.ge.Tensor, _S(lambda z: torch.where(z >= z[0], z, 0.0 * z))),
    (aten.ge.Scalar, _S(lambda z: torch.where(z >= 0.1, z, z * z))),
    (aten.le.Tensor, _S(lambda z: torch.where(z <= z[0], z, 0.0 * z))),
    (aten.le.Scalar, _S(lambda z: torch.where(z <= 0.1, z, z * z))),
    (aten.eq.Scalar, _S(lambda z: torch.where(z == 0.1, z * z, z))),
    (aten.ne.Scalar, _S(lambda z: torch.where(z != 0.1, z * z, z))),
    (aten.zeros_like.default, _S(lambda z: torch.zeros_like(z) + z)),
    (aten.ones_like.default, _S(lambda z: torch.ones_like(z) * z)),
    (aten.full_like.default, _S(lambda z: torch.full_like(z, 2.0) * z)),
    (aten.new_zeros.default, _S(lambda z: z.new_zeros((3, 4)) + z)),
    (aten.new_ones.default, _S(lambda z: z.new_ones((3, 4)) * z)),
    (aten.sign.default, _S(lambda z: torch.sign(z) * z)),
    (aten.argmax.default, _S(lambda z: z.gather(1, z.argmax(1, keepdim=True)) * 1.0)),
]
for _op, _sample in _CONSTANT_OPS:
    register(_op, [_sample])(_const_from_primal(_op))

#: ops whose result is a constant even when an argument depends on the variate
CONSTANT_RESULT_OPS = frozenset(op for op, _ in _CONSTANT_OPS)

# operator.getitem on the list results of split/unbind is handled by the interpreter.
GETITEM = operator.getitem


__all__ = ["CONSTANT_RESULT_OPS", "RULES", "SAMPLES", "Sample", "register"]
