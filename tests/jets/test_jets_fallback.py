"""Jets through ops outside the rule table (nested-JVP fallback) and the activation rules.

Oracles: nested float64 JVPs of the whole function (:func:`jet_coefficients_nested_jvp`)
and, independent of torch's derivative formulas, mpmath's Taylor coefficients of the
scalar function at 30 digits.
"""

from __future__ import annotations

import operator
import warnings

import mpmath
import pytest
import torch
import torch.nn.functional as F

from jet_helpers import assert_coefficients_close, inputs
from jetex.errors import UnsupportedOpError
from jetex.jets import RULES, jet, jet_coefficients, jet_coefficients_nested_jvp
from jetex.jets.engine import clear_cache, variate_ops
from jetex.jets.fallback import FallbackRuleWarning, forget_warnings, use_fallback
from jetex.jets.rules import SAMPLES

aten = torch.ops.aten
D = torch.float64

# functions through ops that have no table rule (each reaches its op with a full series)
FALLBACK_CASES = {
    "lgamma": (lambda z: torch.lgamma(z.exp()), aten.lgamma.default),
    "digamma": (lambda z: torch.digamma(z * z + 1), aten.digamma.default),
    "atan2 (two series)": (lambda z: torch.atan2(z.sin(), z.exp()), aten.atan2.default),
    "topk (values + int64 indices)": (lambda z: torch.topk(z.tanh(), 2, -1).values * 2, aten.topk.default),
    "cumprod (not elementwise)": (lambda z: torch.cumprod(z.sin() + 1.5, -1), aten.cumprod.default),
    "logsumexp": (lambda z: torch.logsumexp(z * z, -1), aten.logsumexp.default),
    "hypot": (lambda z: torch.hypot(z, z.cos() + 2), aten.hypot.default),
    "softshrink": (lambda z: F.softshrink(z * 2, 0.3), aten.softshrink.default),
}


@pytest.fixture(autouse=True)
def _quiet_fallback():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackRuleWarning)
        yield


@pytest.mark.parametrize("name", list(FALLBACK_CASES))
def test_fallback_matches_nested_jvp(name):
    f, op = FALLBACK_CASES[name]
    assert op not in RULES  # else this would test a table rule
    x, y = inputs((3, 4), seed=3)
    assert op in variate_ops(f, x)
    for k in range(5):
        got = jet_coefficients(f, x, y, k)
        assert_coefficients_close(got, jet_coefficients_nested_jvp(f, x, y, k), 1e-9, what=f"{name} k={k}")


def _mp_taylor(fn, x0: float, k: int) -> list[float]:
    with mpmath.workdps(30):
        return [float(c) for c in mpmath.taylor(fn, mpmath.mpf(x0), k)]


MP_CASES = {
    # fallbacks (no table rule)
    "lgamma": (torch.lgamma, mpmath.loggamma, True),
    "digamma": (torch.digamma, mpmath.digamma, True),
    "atan": (torch.atan, mpmath.atan, False),
    "asinh": (torch.asinh, mpmath.asinh, False),
    "erfc": (torch.erfc, mpmath.erfc, False),
    # new table rules
    "elu": (F.elu, lambda t: t if t > 0 else mpmath.expm1(t), False),
    "celu(alpha=2)": (lambda z: F.celu(z, 2.0), lambda t: t if t > 0 else 2 * mpmath.expm1(t / 2), False),
    "selu": (F.selu, lambda t: 1.0507009873554804934193349852946 * (t if t > 0 else 1.6732632423543772848170429916717 * mpmath.expm1(t)), False),
    "softplus": (F.softplus, lambda t: mpmath.log1p(mpmath.exp(t)), False),
    "mish": (F.mish, lambda t: t * mpmath.tanh(mpmath.log1p(mpmath.exp(t))), False),
    "logsigmoid": (F.logsigmoid, lambda t: -mpmath.log1p(mpmath.exp(-t)), False),
    "expm1": (torch.expm1, mpmath.expm1, False),
    "log1p": (torch.log1p, mpmath.log1p, True),
}


@pytest.mark.parametrize("name", list(MP_CASES))
def test_against_mpmath_taylor(name):
    """c_j = φ^{(j)}(x0) v^j / j! for elementwise φ, from mpmath (independent of torch's derivatives)."""
    f, mp, positive = MP_CASES[name]
    g = torch.Generator().manual_seed(11)
    x = (0.3 + 2 * torch.rand(6, generator=g, dtype=D)) if positive else 3 * torch.randn(6, generator=g, dtype=D)
    v = 0.7 * torch.randn(6, generator=g, dtype=D)
    k = 4
    got = jet_coefficients(f, x, x + v, k)
    ref = torch.tensor([[c * float(v[i]) ** j for j, c in enumerate(_mp_taylor(mp, float(x[i]), k))] for i in range(6)], dtype=D).T
    assert_coefficients_close(got, ref, 1e-9, what=name)


def _act2fn():
    transformers = pytest.importorskip("transformers")
    from transformers.activations import ACT2CLS, ACT2FN

    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key in ACT2CLS:
            act = ACT2FN[key]
            out[key] = act.double() if isinstance(act, torch.nn.Module) else act
    assert transformers is not None
    return out


def test_every_transformers_activation_has_table_rules():
    """Every activation of transformers' ACT2FN (and elu/selu/celu/softplus/logsigmoid) is
    taken through by table rules only, and its jet matches nested JVPs for k = 0..4."""
    acts = _act2fn()
    acts.update({"elu": F.elu, "selu": F.selu, "celu": F.celu, "softplus": F.softplus, "logsigmoid": F.logsigmoid, "softsign": F.softsign})
    x, y = inputs((3, 4), seed=5)
    x, y = 2.5 * x, 2.5 * y  # reach the clipped / linear pieces too
    for key, act in acts.items():
        ops = variate_ops(act, x) - {operator.getitem}
        missing = [str(op) for op in ops if op not in RULES]
        assert not missing, f"{key}: no table rule for {missing}"
        for k in range(5):
            got = jet_coefficients(act, x, y, k)
            assert_coefficients_close(got, jet_coefficients_nested_jvp(act, x, y, k), 1e-6, what=f"{key} k={k}")


# table ops of every kind, forced through the fallback: the fallback reproduces them
FORCED = [
    aten.elu.default,
    aten.softplus.default,
    aten.mish.default,
    aten.gelu.default,
    aten.tanh.default,
    aten.rsqrt.default,
    aten.mul.Tensor,
    aten.div.Tensor,
    aten.bmm.default,
    aten._softmax.default,
    aten.var_mean.correction,
    aten.max.dim,
    aten.where.self,
]


@pytest.mark.parametrize("op", FORCED, ids=[str(op) for op in FORCED])
def test_forced_fallback_equals_table_rule(op):
    s = SAMPLES[op][-1]
    x, y = inputs(s.shape, s.positive, seed=2)
    table = jet_coefficients(s.fn, x, y, 3)
    with use_fallback(op):
        forced = jet_coefficients(s.fn, x, y, 3)
    assert_coefficients_close(forced, table, 1e-9, what=f"forced {op}")
    assert_coefficients_close(table, jet_coefficients_nested_jvp(s.fn, x, y, 3), 1e-6, what=f"table {op}")


def test_forced_fallback_is_cached_apart_and_differentiable():
    x, y = inputs((3, 4), seed=4)
    x.requires_grad_(True)
    f = lambda z: F.elu(z * 1.5).sum()
    g_table = torch.autograd.grad(jet(f, x, y, 3), x)[0]
    with use_fallback(aten.elu.default):
        g_fallback = torch.autograd.grad(jet(f, x, y, 3), x)[0]
    torch.testing.assert_close(g_fallback, g_table, rtol=1e-10, atol=1e-12)
    # the table rule's cached graph was not replaced by the forced one (and vice versa)
    assert aten.elu.default in variate_ops(f, x.detach())


def test_fallback_warns_once_per_op_naming_it():
    forget_warnings()
    clear_cache()
    x, y = inputs((3, 4), seed=1)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        jet(lambda z: torch.lgamma(z.exp()), x, y, 2)
        jet(lambda z: torch.lgamma(z * z + 1) * 2, x, y, 3)  # same op, other function: no second warning
        jet(lambda z: torch.digamma(z.exp()), x, y, 2)
    msgs = [str(m.message) for m in w if issubclass(m.category, FallbackRuleWarning)]
    assert len(msgs) == 2, msgs
    assert "aten.lgamma.default" in msgs[0] and "aten.digamma.default" in msgs[1]
    assert "nested first-order JVPs" in msgs[0]


def test_ops_with_table_rules_do_not_warn():
    forget_warnings()
    clear_cache()
    x, y = inputs((3, 4), seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackRuleWarning)
        jet(lambda z: F.elu(z) + F.mish(z) + F.softplus(z), x, y, 3)


@pytest.mark.parametrize(
    "fn,why",
    [
        (lambda z: torch.special.bessel_j0(z) * 2, r"aten\.special_bessel_j0\.default.*torch defines no derivative"),
        (lambda z: z.gather(1, z.argmin(1, keepdim=True)) * 1.0, r"aten\.argmin\.default.*int64.*piecewise constant"),
        (lambda z: torch.bernoulli(torch.sigmoid(z)) * z, r"aten\.bernoulli\.default.*random"),
        (lambda z: F.rrelu(z, training=True), r"rrelu_with_noise.*(in place|random)"),
        (lambda z: F.hardsigmoid(z * z), None),  # has a table rule: fine
        (lambda z: F.glu(z, -1), r"aten\.glu\.default.*cannot differentiate it 3 times"),
        (lambda z: F.instance_norm(z.view(1, 3, 4)), r"native_batch_norm.*wrong from the second order"),
    ],
)
def test_ops_without_possible_fallback_are_refused_with_the_reason(fn, why):
    x, y = inputs((3, 4), seed=6)
    if why is None:
        jet(fn, x, y, 3)
        return
    with pytest.raises(UnsupportedOpError, match=why):
        jet(fn, x, y, 3)


def test_layer_norm_is_not_forced_through_torchs_wrong_derivative():
    """torch's nested forward-mode derivative of native_layer_norm is wrong at k ≥ 2:
    the fallback refuses it there (k = 1 is right and allowed)."""
    s = SAMPLES[aten.native_layer_norm.default][0]
    x, y = inputs(s.shape, seed=0)
    with use_fallback(aten.native_layer_norm.default):
        assert_coefficients_close(jet_coefficients(s.fn, x, y, 1), jet_coefficients_nested_jvp(s.fn, x, y, 1), 1e-9)
        with pytest.raises(UnsupportedOpError, match="wrong from the second order"):
            jet_coefficients(s.fn, x, y, 2)
