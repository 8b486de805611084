"""Jets of real SmolLM2 and Gemma 3 blocks (float64 copies) against nested JVPs."""

from __future__ import annotations

import copy

import pytest
import torch

from jet_helpers import assert_coefficients_close
from jetex.jets import jet, jet_coefficients, jet_coefficients_nested_jvp

pytestmark = pytest.mark.real


def _centre_and_variate(model, l: int):
    """Centre: the stream entering block l for one text; variate: for another text (6 tokens)."""
    a = model.tokenize("The cat sat on the warm mat")[:, :6]
    b = model.tokenize("A dog ran in the cold park")[:, :6]
    with torch.no_grad():
        return model.stream(a)[l - 1], model.stream(b)[l - 1]


class KeepFloat64(torch.overrides.TorchFunctionMode):
    """Ignore casts of float64 tensors to float32 (``.float()``, ``.to(float32)``, softmax's dtype).

    Hugging Face RMSNorms and eager attention compute in float32 whatever the input dtype,
    which would make a "float64" copy of a block partly float32.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if args and isinstance(args[0], torch.Tensor) and args[0].dtype == torch.float64:
            if func is torch.Tensor.float:
                return args[0]
            if func is torch.Tensor.to:
                rest = [a for a in args[1:] if a is not torch.float32]
                if kwargs.get("dtype") is torch.float32:
                    kwargs.pop("dtype")
                return func(args[0], *rest, **kwargs)
            if kwargs.get("dtype") is torch.float32:
                kwargs.pop("dtype")
        return func(*args, **kwargs)


def _check_block(model, l: int, k: int = 3) -> None:
    x, y = (t.double() for t in _centre_and_variate(model, l))
    blk64 = copy.deepcopy(model.block(l)).double()
    with KeepFloat64():
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


def test_smollm2_jet_of_a_linear_path_is_exact(smollm2):
    """J^k of the MLP block at the variate itself is the block's output (v = 0)."""
    x, _ = _centre_and_variate(smollm2, 2)
    blk = smollm2.block(2)
    with torch.no_grad():
        assert torch.allclose(jet(blk, x, x, 3), blk(x), rtol=1e-5, atol=1e-6)
