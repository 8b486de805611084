"""Helpers for jet tests: float64 inputs and coefficient comparison against the oracle."""

from __future__ import annotations

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

