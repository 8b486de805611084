"""Jets through ops outside the rule table: Taylor coefficients from nested first-order JVPs.

For an aten op φ without a rule in :data:`~jetex.jets.rules.RULES`, the engine uses
:func:`fallback_rule`: every argument that depends on the variate arrives as a truncated
series a(t) = Σ_{n<m} a_n tⁿ (m ≤ K = k + 1); the rule evaluates

    g(t) = φ(a(t), …, constants)

and takes c_j = g^{(j)}(0) / j! for j ≤ k by nesting ``torch.func.jvp`` k times along
dt = 1 (the input polynomials are evaluated by Horner's scheme, so the nested JVPs also
differentiate them). Truncating the inputs at degree k does not change g's coefficients
up to degree k, so the result is exact — as exact as torch's own forward-mode derivative
formulas for φ, nested k times — but costs about 2^k evaluations of φ and its derivative
formulas instead of one pass over a coefficient stack. The engine emits one
:class:`FallbackRuleWarning` per op per process naming the op.

The fallback is refused (:class:`~jetex.errors.UnsupportedOpError` saying why) for ops that
mutate their inputs, random ops (dropout, bernoulli, ``*rand*``: no fixed function to
expand), ops whose results are all integer or boolean (piecewise constant: no Taylor
series; comparisons and argmax have table rules), fused attention kernels (no
forward-mode derivative; load models with ``attn_implementation='eager'``), and, when it is
met, ops torch cannot differentiate k times in forward mode.

Caveat: the fallback trusts torch's derivative formulas. Checked against the elementary
forms, torch's forward-mode derivatives of the fused ``native_layer_norm`` and of
``native_batch_norm`` with batch statistics (training mode, ``F.instance_norm``) are wrong
from the second order on, so the fallback refuses them for k ≥ 2 (layer norm has a table
rule; batch statistics do not occur in the decoders jetex loads). Every other table op,
forced through the fallback, agrees with the nested-JVP oracle (tests).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_unflatten

from jetex.errors import UnsupportedOpError
from jetex.jets._checks import factorials
from jetex.jets.decompose import hint_for
from jetex.jets.series import Series, is_series

Rule = Callable[..., Any]


class FallbackRuleWarning(UserWarning):
    """An op without a Taylor rule is taken through by nested JVPs (exact, slower)."""


_warned: set[str] = set()
_warn_lock = threading.Lock()
_forced: contextvars.ContextVar[frozenset[Any]] = contextvars.ContextVar("jetex_forced_fallback", default=frozenset())


def warn_once(op: Any) -> None:
    """Emit the :class:`FallbackRuleWarning` for ``op`` unless already emitted in this process."""
    name = str(op)
    with _warn_lock:
        if name in _warned:
            return
        _warned.add(name)
    warnings.warn(
        f"no Taylor rule for {name}: its jet coefficients are computed by nested first-order JVPs of the op "
        "(exact, about 2^k times slower); this warning is shown once per op",
        FallbackRuleWarning,
        stacklevel=4,
    )


def forget_warnings() -> None:
    """Let every op warn again (for tests)."""
    with _warn_lock:
        _warned.clear()


@contextlib.contextmanager
def use_fallback(*ops: Any) -> Iterator[None]:
    """Within the block, the engine takes ``ops`` through the fallback even where a table rule exists.

    For comparing the fallback with table rules (tests, ``benchmarks/jets_fallback.py``).
    Traces made inside the block are cached apart from the ordinary ones.
    """
    token = _forced.set(_forced.get() | frozenset(ops))
    try:
        yield
    finally:
        _forced.reset(token)


def forced() -> frozenset[Any]:
    """The ops :func:`use_fallback` currently forces through the fallback."""
    return _forced.get()


def _is_floating(t: Any) -> bool:
    return isinstance(t, Tensor) and (t.is_floating_point() or t.is_complex())


def refusal(op: Any, out_dtypes: tuple[torch.dtype, ...] | None = None) -> str | None:
    """Why ``op`` cannot be taken through the fallback (None: it can be).

    ``out_dtypes``: the dtypes of the op's tensor results when it was traced (if known).
    """
    if not isinstance(op, torch._ops.OpOverload):
        return f"{op} is not an aten operation"
    hint = hint_for(op)
    if hint:
        return "it is a fused attention kernel" + hint
    if op._schema.is_mutable:
        return "it modifies its input in place (a jet needs a pure function)"
    if torch.Tag.nondeterministic_seeded in op.tags:
        return "it is random (dropout, sampling): there is no fixed function to expand; use eval mode"
    if out_dtypes is not None and not any(d.is_floating_point or d.is_complex for d in out_dtypes):
        names = ", ".join(sorted({str(d).replace("torch.", "") for d in out_dtypes})) or "no tensor"
        return (
            f"its result is {names}: integer and boolean results are piecewise constant and have no Taylor series "
            "(comparisons, sign and argmax have table rules)"
        )
    return None


def _wrong_from_order_2(op: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Ops whose nested forward-mode derivatives in torch are wrong from the second order on."""
    if op is torch.ops.aten.native_layer_norm.default:
        return True
    if op is torch.ops.aten.native_batch_norm.default:
        return bool(args[5] if len(args) > 5 else kwargs.get("training", False))  # batch statistics
    return False


def _horner(c: Tensor, s: Tensor) -> Tensor:
    """Σ_n c[n] sⁿ for a coefficient stack ``c`` ``[m, *shape]`` and a scalar tensor s."""
    acc = c[-1]
    for j in range(c.shape[0] - 2, -1, -1):
        acc = c[j] + s * acc
    return acc


def _derivative_tower(g: Callable[[Tensor], tuple[Tensor, ...]], n_out: int, t: Tensor, k: int) -> tuple[Tensor, ...]:
    """(g, g', …, g^{(k)}) at t, each of g's ``n_out`` outputs in turn (``(k+1)·n_out`` tensors)."""
    tower: Callable[[Tensor], tuple[Tensor, ...]] = g
    for _ in range(k):

        def nxt(s: Tensor, prev: Callable[[Tensor], tuple[Tensor, ...]] = tower) -> tuple[Tensor, ...]:
            primal, tangent = torch.func.jvp(prev, (s,), (torch.ones_like(s),))
            return (*primal[:n_out], *tangent)

        tower = nxt
    return tower(t)


def _differentiable_outputs(op: Any, primal_leaves: list[Any], pos: list[int], spec: Any, fpos: list[int]) -> list[int]:
    """The floating results torch can differentiate with respect to the series arguments.

    ``torch.func.jvp`` silently returns zero tangents for ops torch declares
    non-differentiable (e.g. ``special_bessel_j0``), which would be a wrong jet: such ops
    are refused. Results torch itself declares non-differentiable next to differentiable
    ones (saved buffers, say) are kept as constants.
    """
    with torch.enable_grad():
        ls = list(primal_leaves)
        for i in pos:
            ls[i] = primal_leaves[i].detach().requires_grad_()
        a, kw = tree_unflatten(ls, spec)
        o = op(*a, **kw)
    o = list(o) if isinstance(o, (tuple, list)) else [o]
    ok = [i for i in fpos if o[i].requires_grad]
    if not ok:
        raise UnsupportedOpError(
            f"no Taylor rule for {op} and no nested-JVP fallback: torch defines no derivative for it "
            "(its result does not depend differentiably on its input)"
        )
    return ok


def taylor_by_nested_jvp(op: Any, K: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The op's result as series truncated at K coefficients (floating results; others as constants).

    ``args``/``kwargs`` hold :class:`Series` for the variate-dependent values (possibly
    inside lists), constants elsewhere — as every rule receives them.
    """
    if K > 2 and _wrong_from_order_2(op, args, kwargs):
        raise UnsupportedOpError(
            f"no Taylor rule for {op} and no nested-JVP fallback at order {K - 1}: torch's forward-mode derivative "
            "of this fused normalisation is wrong from the second order on; write it with elementary ops (mean, var, rsqrt)"
        )
    leaves, spec = tree_flatten((args, kwargs))
    pos = [i for i, a in enumerate(leaves) if is_series(a)]
    primal_leaves = [a.c0 if is_series(a) else a for a in leaves]
    pargs, pkwargs = tree_unflatten(primal_leaves, spec)
    primal = op(*pargs, **pkwargs)
    multi = isinstance(primal, (tuple, list))
    outs = list(primal) if multi else [primal]
    fpos = [i for i, o in enumerate(outs) if _is_floating(o)]
    if not fpos:
        why = refusal(op, tuple(o.dtype for o in outs if isinstance(o, Tensor)))
        raise UnsupportedOpError(f"no Taylor rule for {op} and no nested-JVP fallback: {why}")
    fpos = _differentiable_outputs(op, primal_leaves, pos, spec, fpos)
    m = max((leaves[i].m for i in pos), default=1)
    if K == 1 or m == 1:
        series = {i: Series(outs[i].unsqueeze(0)) for i in fpos}
    else:
        stacks = [leaves[i].c[:K] for i in pos]
        s_dtype = stacks[0].dtype if stacks[0].is_floating_point() else torch.float64

        def g(s: Tensor) -> tuple[Tensor, ...]:
            ls = list(primal_leaves)
            for i, c in zip(pos, stacks):
                ls[i] = _horner(c, s)
            a, kw = tree_unflatten(ls, spec)
            o = op(*a, **kw)
            o = list(o) if isinstance(o, (tuple, list)) else [o]
            return tuple(o[i] for i in fpos)

        k = K - 1
        t0 = torch.zeros((), dtype=s_dtype, device=stacks[0].device)
        try:
            # grad mode on: some derivative formulas (e.g. of *_backward ops) decompose into
            # forward-differentiable ops only then
            with torch.enable_grad():
                tower = _derivative_tower(g, len(fpos), t0, k)
        except (RuntimeError, NotImplementedError) as e:
            first = " ".join(str(e).split("\n")[0].split())[:200]
            raise UnsupportedOpError(
                f"no Taylor rule for {op} and no nested-JVP fallback: torch cannot differentiate it {k} times "
                f"in forward mode ({first})"
            ) from e
        fact = factorials(k)
        n = len(fpos)
        series = {}
        for r, i in enumerate(fpos):
            coeffs = [outs[i]] + [tower[j * n + r] / fact[j] for j in range(1, K)]
            coeffs = [c.to(outs[i].dtype) if c.dtype != outs[i].dtype else c for c in coeffs]
            series[i] = Series(torch.stack(coeffs))
    result = [series.get(i, o) for i, o in enumerate(outs)]
    return (type(primal)(result) if isinstance(primal, tuple) else result) if multi else result[0]


def fallback_rule(op: Any) -> Rule:
    """A rule for ``op`` computed by nested first-order JVPs of the op alone (exact, ~2^k × slower)."""

    def rule(K: int, *args: Any, **kwargs: Any) -> Any:
        return taylor_by_nested_jvp(op, K, args, kwargs)

    rule.__name__ = f"fallback[{op}]"
    return rule


__all__ = [
    "FallbackRuleWarning",
    "fallback_rule",
    "forced",
    "forget_warnings",
    "refusal",
    "taylor_by_nested_jvp",
    "use_fallback",
    "warn_once",
]
