"""Jets (paper Sec. 3, METHODS.md §2), computed exactly in Taylor mode.

For f smooth, centre x, variate y and order k,

    J^k f(x)(y) = f(x) + Σ_{j=1..k} (1/j!) D^j f(x)[y − x, …, y − x],

the degree-k Taylor polynomial of g(t) = f(x + t(y − x)) evaluated at t = 1. Its
degree-j coefficient is c_j = g^{(j)}(0)/j!.

- :func:`jet` returns J^k f(x)(y) (shape of f(x)); :func:`jet_coefficients` returns
  c_0..c_k stacked ``[k+1, *f(x).shape]`` (their sum over dim 0 is the jet).
- f is any callable Tensor → Tensor made of supported torch operations: a function, a
  lambda, an ``nn.Module`` such as a residual block γ_l of :mod:`jetex.models` (Hugging
  Face attention/MLP sub-layers with their norms, rotary embeddings and causal masks).
  Leading dims are batch dims; the result is exact (no finite differences), and
  differentiable: gradients flow to x, y and to every parameter f uses.
- k = 0 is the plain forward call f(x).
- :func:`jet_nested_jvp` / :func:`jet_coefficients_nested_jvp` compute the same numbers by
  nesting first-order forward-mode JVPs k times (cost doubling per order); they are the
  reference the engine is tested and benchmarked against.

How it is computed (:mod:`jetex.jets.engine`): f is traced once per (function, input
shape, dtype, device) to an aten-level FX graph; every variate-dependent node must have a
rule in :data:`RULES` (else :class:`~jetex.errors.UnsupportedOpError` names the op before
anything is computed); the graph is then interpreted on truncated Taylor series — a
coefficient stack ``[k+1, *shape]`` per value, constants evaluated once, known-zero
high coefficients skipped, linear ops batched over all coefficients in one call,
products as Cauchy products, non-linear elementwise ops by composition with their
scaled derivatives — and that interpretation is itself traced into one flat,
straight-line aten graph per order k, which later calls run directly.

Fused functions: ``F.rms_norm`` (and ``nn.RMSNorm``) and ``F.scaled_dot_product_attention``
(Hugging Face's ``"sdpa"`` attention) are traced as the elementary ops they compute
(:mod:`jetex.jets.decompose`): rms_norm as x·rsqrt(mean(x²) + eps)·w, SDPA as
softmax(q kᵀ · scale + mask) v with its boolean/additive ``attn_mask``, ``is_causal``,
``scale`` and ``enable_gqa`` (``dropout_p > 0`` is refused: dropout is random). Fused
attention kernels reached any other way (``flash_attention_2``, ``flex_attention``, a
direct ``aten._scaled_dot_product_*`` call) have no rule; the error says to use
``attn_implementation="eager"``, which :func:`jetex.load` and
:meth:`~jetex.models.hf.HFResidualModel.from_hf` always select.

Design decision — ``jet-for-pytorch``: the issue asked to evaluate this PyPI library
(Taylor-mode AD for PyTorch on ``torch.fx``). Its two releases (0.0.1 and 1.0.0) declare
``Requires-Python >=3.12`` and ``torch>=2.10``; jetex supports Python 3.11, so
``pip install``/``pip index versions jet-for-pytorch`` find no installable version here.
The 1.0.0 wheel (downloaded for inspection only) registers rules for about forty aten ops
aimed at MLPs/CNNs and Laplacian-type operators (sin, cos, tanh, sigmoid, relu, exp, log,
pow, add, sub, mul, div, mm, addmm, cat, stack, views, sum/mean, log-softmax, conv,
pooling, batch norm) and none for ops every transformer block here needs: bmm, softmax,
rsqrt, erf/GELU, SiLU, where/masked_fill, dtype casts, expand/transpose/permute/slice.
jetex therefore ships its own engine (written from scratch; the rules-table design
follows JAX's ``jax.experimental.jet``) with no extra dependency. Taking the library
later would need Python ≥ 3.12 and those rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jaxtyping import Float
from torch import Tensor

from jetex.jets._checks import MAX_ORDER, check_max_order
from jetex.jets.engine import clear_cache, taylor_coefficients
from jetex.jets.oracle import jet_coefficients_nested_jvp, jet_nested_jvp
from jetex.jets.rules import RULES


def jet_coefficients(f: Any, x: Any, y: Any, k: Any) -> Float[Tensor, "k1 *out"]:
    """Taylor coefficients c_0..c_k of t ↦ f(x + t(y − x)) at t = 0, stacked ``[k+1, *f(x).shape]``.

    ``x`` (centre) and ``y`` (variate) are floating tensors of the same shape, dtype and
    device; ``k`` ≥ 0 is an int. c_0 = f(x); Σ_j c_j = J^k f(x)(y).
    """
    return taylor_coefficients(f, x, y, k)


def jet(f: Any, x: Any, y: Any, k: Any) -> Float[Tensor, "..."]:
    """J^k f(x)(y) = f(x) + Σ_{j=1..k} (1/j!) D^j f(x)[y − x]^j, with the shape of f(x)."""
    return taylor_coefficients(f, x, y, k).sum(0)


__all__ = [
    "MAX_ORDER",
    "RULES",
    "check_max_order",
    "clear_cache",
    "jet",
    "jet_coefficients",
    "jet_coefficients_nested_jvp",
    "jet_nested_jvp",
]
