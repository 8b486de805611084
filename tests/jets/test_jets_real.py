"""Jets of real SmolLM2 and Gemma 3 blocks (float64 copies) against nested JVPs."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from jet_helpers import KeepFloat64, assert_coefficients_close, float32_ops
from jetex.jets import jet, jet_coefficients, jet_coefficients_nested_jvp

pytestmark = pytest.mark.real


def _centre_and_variate(model, l: int):
    """Centre: the stream entering block l for one text; variate: for another text (6 tokens)."""
    a = model.tokenize("The cat sat on the warm mat")[:, :6]
    b = model.tokenize("A dog ran in the cold park")[:, :6]
    with torch.no_grad():
        return model.stream(a)[l - 1], model.stream(b)[l - 1]


def _check_block(model, l: int, k: int = 3) -> None:
    x, y = (t.double() for t in _centre_and_variate(model, l))
    blk64 = copy.deepcopy(model.block(l)).double()
    with KeepFloat64():
        assert float32_ops(blk64, x) == []  # the float64 copy computes in float64 throughout
        ref = jet_coefficients_nested_jvp(blk64, x, y, k)
        got = jet_coefficients(blk64, x, y, k)
    assert_coefficients_close(got, ref, 1e-6, what=f"{model.name} {blk64.name}")
    # the float32 block itself: close to the float64 reference at float32 precision
    got32 = jet_coefficients(model.block(l), x.float(), y.float(), k).double()
    rel = float((got32 - ref).abs().max() / ref.abs().max())
    assert rel < 1e-3, rel


@pytest.mark.parametrize("l", [1, 2, 39, 40])
def test_smollm2_blocks(smollm2, l):
    _check_block(smollm2, l)


@pytest.mark.parametrize("l", [1, 2, 11, 12])
def test_gemma3_blocks(gemma3, l):
    _check_block(gemma3, l)


def test_smollm2_jet_of_a_linear_map_is_exact(smollm2):
    """A linear map of the stream (SmolLM2's down_proj ∘ up_proj, no biases) equals its
    first-order jet at any centre, for a variate far from the centre (two texts' streams)."""
    x, y = _centre_and_variate(smollm2, 2)
    mlp = smollm2.block(2).mlp
    f = lambda h: mlp.down_proj(mlp.up_proj(h))
    assert float((y - x).abs().max()) > 0.1 * float(x.abs().max())  # a real displacement, not v = 0
    with torch.no_grad():
        want = f(y)
        scale = float(want.abs().max())
        for k in (1, 2, 3):
            c = jet_coefficients(f, x, y, k)
            assert float((c.sum(0) - want).abs().max()) <= 1e-5 * scale, k
            assert float(c[1].abs().max()) > 0.1 * scale  # the linear term carries the change
            if k > 1:
                assert torch.count_nonzero(c[2:]) == 0  # no curvature


@pytest.mark.parametrize("k", [1, 2, 3])
def test_smollm2_mlp_jet_remainder_is_order_k_plus_1(smollm2, k):
    """|γ(x + s v) − J^k γ(x)(x + s v)| shrinks as s^(k+1) for the real MLP block γ_2 (float64):
    halving s divides the remainder by 2^(k+1). A wrong c_j for j ≤ k would leave an O(s^j) error."""
    x, y = (t.double() for t in _centre_and_variate(smollm2, 2))
    blk = copy.deepcopy(smollm2.block(2)).double()
    v = y - x
    with KeepFloat64(), torch.no_grad():
        errs = []
        for s in (0.1, 0.05, 0.025):
            ys = x + s * v
            errs.append(float((blk(ys) - jet(blk, x, ys, k)).abs().max()))
    slopes = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert errs[-1] > 1e-9  # above float64 noise: the slope is measured, not rounding
    assert abs(slopes[-1] - (k + 1)) < 0.2, (errs, slopes)
