"""Input validation shared by the Taylor engine and the nested-JVP oracle."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from jetex.errors import InputError
from jetex.orders import MAX_ORDER, check_max_order


def check_inputs(f: Any, x: Any, y: Any, k: Any) -> None:
    """Raise :class:`InputError` unless f is callable, x/y are alike tensors and k ≥ 0 is an int."""
    if not callable(f):
        raise InputError(f"f must be callable (a function or nn.Module), got {type(f).__name__}")
    if isinstance(k, bool) or not isinstance(k, int):
        raise InputError(f"order k must be a non-negative int, got {k!r} ({type(k).__name__})")
    if k < 0:
        raise InputError(f"order k must be a non-negative int, got {k}")
    for name, t in (("centre x", x), ("variate y", y)):
        if not isinstance(t, Tensor):
            raise InputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not (t.is_floating_point() or t.is_complex()):
            raise InputError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if x.shape != y.shape:
        raise InputError(f"centre x and variate y differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.dtype != y.dtype:
        raise InputError(f"centre x and variate y differ in dtype: {x.dtype} vs {y.dtype}")
    if x.device != y.device:
        raise InputError(f"centre x and variate y are on different devices: {x.device} vs {y.device}")


def check_output(out: Any) -> Tensor:
    """Raise :class:`InputError` unless ``f(x)`` returned a tensor."""
    if not isinstance(out, Tensor):
        raise InputError(f"f must return a torch.Tensor, got {type(out).__name__}")
    return out


def factorials(k: int) -> list[float]:
    """[0!, 1!, …, k!] as floats."""
    out = [1.0]
    for j in range(1, k + 1):
        out.append(out[-1] * j)
    return out


__all__ = ["MAX_ORDER", "check_inputs", "check_max_order", "check_output", "factorials"]
