"""The slow reference for jets: nested first-order forward-mode JVPs.

With g(t) = f(x + t v), v = y − x, the Taylor coefficients of the jet are
c_j = g^{(j)}(0) / j!. Here g^{(j)} is obtained by nesting ``torch.func.jvp`` j times,
so computing c_0..c_k costs about 2^k forward passes: this is the oracle the Taylor-mode
engine (:mod:`jetex.jets.engine`) is tested and benchmarked against.

It runs under :class:`~jetex.jets.decompose.ElementaryOps` with ``layer_norm=True``:
PyTorch's forward-mode derivative of the fused layer norm is wrong from the second order
on (its JVP formula is not itself forward-differentiable correctly), and the fused SDPA
kernels have no forward-mode derivative, so the oracle nests JVPs through the elementary
form of those functions. ``F.rms_norm`` keeps torch's own kernel here (it is
forward-differentiable), so the engine's decomposition of it is checked independently.
``F.hardsigmoid`` is taken as relu6(x + 3)/6: torch's ``hardsigmoid_backward`` has no
forward-mode derivative, so its own kernel cannot be nested.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from jetex.jets._checks import check_inputs, check_output, factorials
from jetex.jets.decompose import ElementaryOps


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
    with torch.enable_grad(), ElementaryOps(rms_norm=False, layer_norm=True, hardsigmoid=True):
        tower = _derivative_tower(lambda s: f(x + s * v), t0, k)
    fact = factorials(k)
    return torch.stack([d / fact[j] for j, d in enumerate(tower)])


def jet_nested_jvp(f: Any, x: Any, y: Any, k: Any) -> Float[Tensor, "..."]:
    """J^k f(x)(y) = Σ_{j≤k} c_j, computed with nested JVPs (the slow reference)."""
    return jet_coefficients_nested_jvp(f, x, y, k).sum(0)
