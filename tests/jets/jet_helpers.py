"""Helpers for jet tests: float64 inputs and coefficient comparison against the oracle."""

from __future__ import annotations

import contextlib

import torch


def inputs(shape, positive: bool = False, dtype=torch.float64, scale: float = 0.5, seed: int = 0):
    """A centre x and a variate y = x + scale·noise (both positive when asked)."""
    g = torch.Generator().manual_seed(seed)
    if positive:
        x = 0.5 + torch.rand(shape, generator=g, dtype=dtype)
        y = x + 0.3 * (torch.rand(shape, generator=g, dtype=dtype) - 0.5)
    else:
        x = torch.randn(shape, generator=g, dtype=dtype)
        y = x + scale * torch.randn(shape, generator=g, dtype=dtype)
    return x, y


def assert_coefficients_close(got: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-6, what: str = "") -> None:
    """Each coefficient c_j agrees to rtol relative to its own size (plus a tiny absolute floor)."""
    got, ref = got.detach(), ref.detach()
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert got.dtype == ref.dtype, (got.dtype, ref.dtype)
    scale0 = float(ref[0].abs().max()) if ref[0].numel() else 1.0
    for j in range(ref.shape[0]):
        err = float((got[j] - ref[j]).abs().max()) if ref[j].numel() else 0.0
        size = float(ref[j].abs().max()) if ref[j].numel() else 0.0
        tol = rtol * size + 1e-12 * (1.0 + scale0)
        assert err <= tol, f"{what} c_{j}: max error {err:.3e} > {tol:.3e} (|c_{j}| = {size:.3e})"



class KeepFloat64(torch.overrides.TorchFunctionMode):
    """Ignore casts of float64 tensors to float32 (``.float()``, ``.to(float32)``, softmax's dtype).

    Hugging Face RMSNorms (and some rotary modules and eager attention) compute in float32
    whatever the input dtype, which would make a "float64" copy of a block partly float32.
    Jets traced under this mode stay float64 throughout: :func:`float32_ops` checks it.
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


class _DtypeLog(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.float32: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        ins = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        if not any(a.is_floating_point() for a in ins):
            return out  # integers (positions) to float32: exact, not a loss of precision
        if any(isinstance(o, torch.Tensor) and o.dtype in (torch.float32, torch.float16, torch.bfloat16) for o in outs):
            self.float32.append(str(func))
        return out


def float32_ops(f, x: torch.Tensor, keep_float64: bool = True) -> list[str]:
    """The aten ops of ``f(x)`` that produce a float32 (or half) tensor from floating inputs
    (under :class:`KeepFloat64` unless ``keep_float64=False``); empty: f computes in float64."""
    log = _DtypeLog()
    mode = KeepFloat64() if keep_float64 else contextlib.nullcontext()
    with torch.no_grad(), mode, log:
        f(x)
    return log.float32
