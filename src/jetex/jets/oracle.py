"""The slow reference for jets: nested first-order forward-mode JVPs.

With g(t) = f(x + t v), v = y − x, the Taylor coefficients of the jet are
c_j = g^{(j)}(0) / j!. Here g^{(j)} is obtained by nesting ``torch.func.jvp`` j times,
so computing c_0..c_k costs about 2^k forward passes: this is the oracle the Taylor-mode
engine (:mod:`jetex.jets.engine`) is tested and benchmarked against.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from jetex.jets._checks import check_inputs, check_output, factorials


def _layer_norm_composite(x: Tensor, normalized_shape: Any, weight: Any = None, bias: Any = None, eps: float = 1e-5) -> Tensor:
    dims = tuple(range(-len(tuple(normalized_shape)), 0))
    mean = x.mean(dims, keepdim=True)
    var = (x - mean).pow(2).mean(dims, keepdim=True)
    out = (x - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


class _ElementaryLayerNorm(torch.overrides.TorchFunctionMode):
    """Computes ``F.layer_norm`` from elementary ops.

    PyTorch's forward-mode derivative of the fused layer norm is wrong from the second
    order on (its JVP formula is not itself forward-differentiable correctly), so the
    oracle must not nest JVPs through it.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func is torch.nn.functional.layer_norm or func is torch.layer_norm:
            return _layer_norm_composite(*args, **kwargs)
        return func(*args, **kwargs)


def _derivative_tower(g: Callable[[Tensor], Tensor], t: Tensor, k: int) -> tuple[Tensor, ...]:
    """(g(t), g'(t), …, g^{(k)}(t)) by nesting ``torch.func.jvp`` k times."""

    def tower0(s: Tensor) -> tuple[Tensor, ...]:
        return (check_output(g(s)),)

    tower = tower0
    for _ in range(k):

        def nxt(s: Tensor, prev: Callable[[Tensor], tuple[Tensor, ...]] = tower) -> tuple[Tensor, ...]:
            # primal: (g, …, g^{(j)}), tangent along ds = 1: (g', …, g^{(j+1)})
            primal, tangent = torch.func.jvp(prev, (s,), (torch.ones_like(s),))
            return (primal[0], *tangent)

        tower = nxt
    return tower(t)


def jet_coefficients_nested_jvp(f: Any, x: Any, y: Any, k: Any) -> Float[Tensor, "k1 *out"]:
    """Taylor coefficients c_0..c_k of t ↦ f(x + t(y − x)) at t = 0, stacked ``[k+1, *f(x).shape]``.

    Reference implementation (nested JVPs, cost doubling with each order).
    """
    check_inputs(f, x, y, k)
    if k == 0:
        return check_output(f(x)).unsqueeze(0)
    v = y - x
    t0 = torch.zeros((), dtype=x.dtype, device=x.device)
    # under no_grad some composite backward formulas (e.g. silu_backward) lack forward-mode
    # derivatives; with grad mode on they decompose into differentiable ops.
    with torch.enable_grad(), _ElementaryLayerNorm():
        tower = _derivative_tower(lambda s: f(x + s * v), t0, k)
    fact = factorials(k)
    return torch.stack([d / fact[j] for j, d in enumerate(tower)])


def jet_nested_jvp(f: Any, x: Any, y: Any, k: Any) -> Float[Tensor, "..."]:
    """J^k f(x)(y) = Σ_{j≤k} c_j, computed with nested JVPs (the slow reference)."""
    return jet_coefficients_nested_jvp(f, x, y, k).sum(0)
