"""Every Taylor rule against nested float64 JVPs, for k = 0..4, on its registered samples."""

from __future__ import annotations

import operator

import pytest
import torch

from jet_helpers import assert_coefficients_close, inputs
from jetex.jets import RULES, jet_coefficients, jet_coefficients_nested_jvp
from jetex.jets.engine import clear_cache, variate_ops
from jetex.jets.rules import SAMPLES

CASES = [(op, i) for op in RULES for i in range(len(SAMPLES.get(op, [])))]


def test_every_rule_has_samples():
    missing = [str(op) for op in RULES if not SAMPLES.get(op)]
    assert not missing, f"rules without samples: {missing}"


def test_every_rule_is_reached_by_one_of_its_samples():
    """A sample that never reaches its op would test nothing."""
    unreached = []
    for op in RULES:
        reached = False
        for s in SAMPLES[op]:
            x, _ = inputs(s.shape, s.positive)
            if op in variate_ops(s.fn, x):
                reached = True
                break
        if not reached:
            unreached.append(str(op))
    assert not unreached, f"ops no sample reaches: {unreached}"


@pytest.mark.parametrize("op,i", CASES, ids=[f"{op}-{i}" for op, i in CASES])
def test_rule_matches_nested_jvp(op, i):
    s = SAMPLES[op][i]
    x, y = inputs(s.shape, s.positive, seed=i)
    for k in range(5):
        got = jet_coefficients(s.fn, x, y, k)
        ref = jet_coefficients_nested_jvp(s.fn, x, y, k)
        assert_coefficients_close(got, ref, 1e-6, what=f"{op} sample {i} k={k}")


def test_rules_are_keyed_by_op_overloads():
    for op in RULES:
        assert isinstance(op, torch._ops.OpOverload), op
    assert operator.getitem not in RULES


def test_float32_rules_stay_close():
    """Sanity in float32: a few non-linear rules agree with float64 to float32 precision."""
    clear_cache()
    for op in (torch.ops.aten._softmax.default, torch.ops.aten.silu.default, torch.ops.aten.gelu.default):
        s = SAMPLES[op][0]
        x, y = inputs(s.shape, s.positive)
        got = jet_coefficients(s.fn, x.float(), y.float(), 4).double()
        ref = jet_coefficients(s.fn, x, y, 4)
        assert float((got - ref).abs().max()) <= 1e-5 * (1 + float(ref.abs().max()))
