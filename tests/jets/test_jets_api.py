"""The public jet API: exact identities, analytic coefficients, gradients, caching, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import jetex
from jet_helpers import assert_coefficients_close, inputs
from jetex.errors import InputError, UnsupportedOpError
from jetex.jets import clear_cache, jet, jet_coefficients, jet_coefficients_nested_jvp, jet_nested_jvp

D = torch.float64


def test_exported_from_package():
    assert jetex.jet is jet and jetex.jet_coefficients is jet_coefficients


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_polynomials_of_degree_at_most_k_are_reproduced(k):
    """J^k f(x)(y) = f(y) when f is a polynomial of degree ≤ k (here a multivariate one)."""
    A = torch.randn(4, 4, dtype=D)
    b = torch.randn(4, dtype=D)

    def f(z):
        out = z @ A + b  # degree 1
        for j in range(2, k + 1):  # add a degree-j term
            out = out + (z ** (j - 1)) * (z @ A.T) / j
        return out

    x, y = inputs((3, 4))
    assert torch.allclose(jet(f, x, y, k), f(y), rtol=1e-12, atol=1e-12)
    if k >= 2:  # degree k is not reproduced at order k - 1
        assert not torch.allclose(jet(f, x, y, k - 1), f(y), rtol=1e-6, atol=1e-6)


def test_analytic_coefficients_of_exp_times_sin():
    """f(z) = exp(a·z) sin(b·z): c_j = Im(e^{A+iB} (α+iβ)^j / j!) with A=a·x, B=b·x, α=a·v, β=b·v."""
    a, b = torch.randn(5, dtype=D), torch.randn(5, dtype=D)

    def f(z):
        return torch.exp(z @ a) * torch.sin(z @ b)

    x, y = inputs((7, 5))
    v = y - x
    A, B, al, be = x @ a, x @ b, v @ a, v @ b
    k = 4
    z0 = torch.complex(A, B).exp()
    w = torch.complex(al, be)
    expected = torch.stack([(z0 * w**j).imag / math.factorial(j) for j in range(k + 1)])
    assert_coefficients_close(jet_coefficients(f, x, y, k), expected, 1e-12)
    assert torch.allclose(jet(f, x, y, k), expected.sum(0), rtol=1e-12, atol=1e-12)


def test_analytic_coefficients_of_a_rational_softmax_chain():
    """f(z) = 1/(1 + |z|²) along a line: g(t) = 1/(p + 2qt + rt²), checked against its series."""
    x, y = inputs((4, 3))
    v = y - x
    f = lambda z: 1.0 / (1.0 + (z * z).sum(-1))  # noqa: E731
    p, q, r = 1 + (x * x).sum(-1), (x * v).sum(-1), (v * v).sum(-1)
    # series of 1/(p + 2q t + r t²): c_0 = 1/p, c_n = -(2q c_{n-1} + r c_{n-2})/p
    cs = [1 / p, -(2 * q) / p**2]
    for n in range(2, 5):
        cs.append(-(2 * q * cs[n - 1] + r * cs[n - 2]) / p)
    assert_coefficients_close(jet_coefficients(f, x, y, 4), torch.stack(cs), 1e-12)


def test_order_zero_is_the_forward_pass():
    blk = nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 4)).double()
    x, y = inputs((2, 3, 4))
    assert torch.equal(jet(blk, x, y, 0), blk(x))
    assert jet_coefficients(blk, x, y, 0).shape == (1, 2, 3, 4)


def test_coefficients_sum_to_the_jet_and_c0_is_f_of_x():
    blk = nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 6), nn.SiLU(), nn.Linear(6, 3)).double()
    x, y = inputs((2, 5, 4))
    c = jet_coefficients(blk, x, y, 3)
    assert c.shape == (4, 2, 5, 3)
    assert torch.allclose(c.sum(0), jet(blk, x, y, 3), rtol=0, atol=1e-14)
    assert torch.allclose(c[0], blk(x), rtol=1e-13, atol=1e-14)


def test_agrees_with_nested_jvps_on_a_module():
    blk = nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 4), nn.Softmax(-1)).double()
    x, y = inputs((3, 4))
    for k in range(5):
        assert_coefficients_close(jet_coefficients(blk, x, y, k), jet_coefficients_nested_jvp(blk, x, y, k), 1e-9)
        assert torch.allclose(jet(blk, x, y, k), jet_nested_jvp(blk, x, y, k), rtol=1e-9, atol=1e-12)


def test_gradients_match_the_oracle():
    """d/d(params, x, y) of a loss of the jet equals the oracle's gradients."""
    torch.manual_seed(1)
    blk = nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 6), nn.GELU(approximate="tanh"), nn.Linear(6, 4)).double()
    x0, y0 = inputs((2, 3, 4))
    grads = []
    for fn in (jet, jet_nested_jvp):
        blk.zero_grad()
        x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
        (fn(blk, x, y, 3) ** 2).sum().backward()
        grads.append([x.grad, y.grad] + [p.grad.clone() for p in blk.parameters()])
    for g_engine, g_oracle in zip(*grads):
        assert torch.allclose(g_engine, g_oracle, rtol=1e-9, atol=1e-12)


def test_gradients_reach_tensors_a_closure_captures():
    W = torch.randn(4, 4, dtype=D, requires_grad=True)
    x, y = inputs((3, 4))
    jet(lambda z: torch.tanh(z @ W), x, y, 2).sum().backward()
    g = W.grad.clone()
    W.grad = None
    jet_nested_jvp(lambda z: torch.tanh(z @ W), x, y, 2).sum().backward()
    assert torch.allclose(g, W.grad, rtol=1e-10, atol=1e-12)


def test_batched_over_leading_dims():
    f = lambda z: torch.softmax(z @ z.transpose(-1, -2), -1) @ z  # noqa: E731
    x, y = inputs((2, 3, 5, 4))
    whole = jet_coefficients(f, x, y, 3)
    for i in range(2):
        for j in range(3):
            assert torch.allclose(whole[:, i, j], jet_coefficients(f, x[i, j], y[i, j], 3), rtol=1e-10, atol=1e-12)


def test_float32_inputs_give_float32_jets():
    blk = nn.Sequential(nn.Linear(4, 4), nn.SiLU())
    x, y = inputs((3, 4), dtype=torch.float32)
    c = jet_coefficients(blk, x, y, 2)
    assert c.dtype == torch.float32
    ref = jet_coefficients(blk.double(), x.double(), y.double(), 2)
    assert torch.allclose(c.double(), ref, rtol=1e-4, atol=1e-5)


def test_constant_function_has_zero_higher_coefficients():
    c = torch.randn(3, dtype=D)
    x, y = inputs((3,))
    out = jet_coefficients(lambda z: c * 2.0, x, y, 3)
    assert torch.equal(out[0], c * 2.0) and torch.equal(out[1:], torch.zeros(3, 3, dtype=D))


def test_cache_sees_new_closure_values_and_replaced_parameters():
    x, y = inputs((3, 4))
    outs = []
    for s in (1.0, 2.0):
        W = s * torch.eye(4, dtype=D)
        outs.append(jet(lambda z: torch.tanh(z @ W), x, y, 2))
    assert not torch.allclose(outs[0], outs[1])
    assert torch.allclose(outs[1], jet_nested_jvp(lambda z: torch.tanh(z @ (2.0 * torch.eye(4, dtype=D))), x, y, 2))
    lin = nn.Linear(4, 4).double()
    first = jet(lambda z: torch.tanh(lin(z)), x, y, 2)
    a = jet(lin, x, y, 2)
    lin.weight = nn.Parameter(lin.weight.detach() * 3)  # a new parameter object
    b = jet(lin, x, y, 2)
    assert torch.allclose(b, lin(y))  # linear: exact at any order ≥ 1
    assert not torch.allclose(a, b)
    with torch.no_grad():
        lin.bias.add_(1.0)  # in-place change
    assert torch.allclose(jet(lin, x, y, 2), lin(y))
    assert first.shape == (3, 4)


def test_unsupported_op_is_named():
    """An op without a rule and without a possible fallback (torch defines no derivative) is named."""
    x, y = inputs((3,))
    with pytest.raises(UnsupportedOpError, match=r"no Taylor rule for aten\.special_bessel_j0\.default.*no derivative"):
        jet(lambda z: torch.special.bessel_j0(z) * 2, x, y, 2)


def test_op_without_rule_goes_through_the_fallback_with_a_warning():
    """lgamma has no table rule: nested JVPs of the op give its jet (tests/jets/test_jets_fallback.py)."""
    from jetex.jets.fallback import FallbackRuleWarning, forget_warnings

    x, y = inputs((3,))
    forget_warnings()
    with pytest.warns(FallbackRuleWarning, match=r"aten\.lgamma\.default"):
        out = jet(lambda z: torch.lgamma(z.exp()), x, y, 1)
    assert torch.allclose(out, jet_nested_jvp(lambda z: torch.lgamma(z.exp()), x, y, 1), rtol=1e-12, atol=1e-12)


def test_data_dependent_python_is_refused():
    x, y = inputs((3,))
    with pytest.raises(UnsupportedOpError, match="tensor value in Python"):
        jet(lambda z: z * float(z.sum()), x, y, 1)


def test_unsupported_op_on_constants_only_is_fine():
    x, y = inputs((3,))
    out = jet(lambda z: z * torch.special.bessel_j0(torch.ones(3, dtype=D)), x, y, 2)
    assert torch.allclose(out, y * torch.special.bessel_j0(torch.ones(3, dtype=D)))


def test_bad_inputs():
    x, y = inputs((3,))
    f = torch.tanh
    cases = [
        (f, x, y, -1),
        (f, x, y, 1.0),
        (f, x, y, True),
        (f, x, y, "2"),
        (f, x, y[:2], 1),
        (f, x, y.float(), 1),
        (f, [1.0, 2.0], y, 1),
        (f, x, 3.0, 1),
        (f, torch.arange(3), torch.arange(3), 1),
        ("tanh", x, y, 1),
        (lambda z: (z, z), x, y, 1),
        (lambda z: z.sum().item(), x, y, 0),
        (lambda z: [z], x, y, 2),
    ]
    for fn, a, b, k in cases:
        with pytest.raises(InputError) as info:
            jet(fn, a, b, k)
        assert "\n" not in str(info.value)
        with pytest.raises(InputError):
            jet_nested_jvp(fn, a, b, k)


def test_device_mismatch_is_an_input_error():
    x, y = inputs((3,))
    meta = torch.empty(3, dtype=D, device="meta")
    with pytest.raises(InputError, match="devices"):
        jet(torch.tanh, x, meta, 1)


def test_clear_cache_keeps_results():
    x, y = inputs((3, 4))
    a = jet(torch.sigmoid, x, y, 3)
    clear_cache()
    assert torch.equal(a, jet(torch.sigmoid, x, y, 3))


def test_repeated_calls_with_new_lambdas_reuse_the_trace():
    from jetex.jets import engine

    lin = nn.Linear(4, 4).double()
    x, y = inputs((3, 4))
    clear_cache()
    for _ in range(3):
        jet(lambda z: torch.tanh(lin(z)), x, y, 2)
    assert len(engine._cache) == 1
    jet(lambda z: torch.sigmoid(lin(z)), x, y, 2)  # other code: another trace
    assert len(engine._cache) == 2


def test_structurally_identical_blocks_share_a_graph_but_not_weights():
    """Two blocks with the same code share one specialised graph; each jet uses its own weights."""
    from jetex.jets import engine

    torch.manual_seed(3)
    blocks = [nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 5), nn.SiLU(), nn.Linear(5, 4)).double() for _ in range(2)]
    x, y = inputs((2, 4))
    clear_cache()
    outs = [jet_coefficients(b, x, y, 3) for b in blocks]
    assert len(engine._shared) == 1 and len(engine._cache) == 2
    for b, out in zip(blocks, outs):
        assert_coefficients_close(out, jet_coefficients_nested_jvp(b, x, y, 3), 1e-9)
    assert not torch.allclose(outs[0], outs[1])
