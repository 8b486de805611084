"""Fused torch functions computed from elementary ops while a jet is traced.

Some torch functions reach aten as ops the Taylor engine cannot take through:

- ``F.rms_norm`` / ``torch.rms_norm`` / ``torch.nn.RMSNorm``: torch's composite kernel adds
  eps *in place* (``aten.add_.Scalar``) on an intermediate;
- ``F.scaled_dot_product_attention`` (SDPA, what Hugging Face's ``"sdpa"`` attention
  calls): a fused kernel (``_scaled_dot_product_flash_attention_for_cpu`` and friends)
  with no Taylor rule and no forward-mode derivative.

:class:`ElementaryOps` is a ``TorchFunctionMode`` that replaces these calls by the same
mathematics written with elementary ops (mean, rsqrt, matmul, softmax, masking), which
do have rules. The engine traces every function under it. The nested-JVP oracle
evaluates under it with ``rms_norm=False`` (torch's own RMSNorm kernel is
forward-differentiable, so the oracle checks the composite independently) and
``layer_norm=True`` (the fused layer norm's forward-mode derivative is wrong from the
second order on) and ``hardsigmoid=True`` (torch's ``hardsigmoid_backward`` has no
forward-mode derivative, so nested JVPs need hardsigmoid as relu6(x + 3)/6).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from jetex.errors import UnsupportedOpError


def _shape_dims(normalized_shape: Any) -> tuple[int, ...]:
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    return tuple(range(-len(tuple(normalized_shape)), 0))


def layer_norm_composite(
    x: Tensor, normalized_shape: Any, weight: Any = None, bias: Any = None, eps: float | int = 1e-5
) -> Tensor:
    """``F.layer_norm`` from elementary ops (mean, pow, rsqrt)."""
    dims = _shape_dims(normalized_shape)
    mean = x.mean(dims, keepdim=True)
    var = (x - mean).pow(2).mean(dims, keepdim=True)
    out = (x - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


def rms_norm_composite(
    x: Tensor, normalized_shape: Any, weight: Tensor | None = None, eps: float | int | None = None
) -> Tensor:
    """``F.rms_norm`` from elementary ops: x · rsqrt(mean(x², dims) + eps) · weight.

    As torch's kernel: half-precision inputs are normalised (and weighted) in float32 and
    cast back at the end; eps defaults to the machine epsilon of that computation dtype.
    """
    dims = _shape_dims(normalized_shape)
    opmath = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    if eps is None:
        eps = torch.finfo(opmath).eps
    xu = x.to(opmath)
    out = xu * torch.rsqrt(xu.pow(2).mean(dims, keepdim=True) + eps)
    if weight is not None:
        out = out * weight
    return out.to(x.dtype)


def sdpa_composite(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float | int = 0.0,
    is_causal: bool = False,
    scale: float | int | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """``F.scaled_dot_product_attention`` as softmax(q kᵀ · scale + mask) v.

    ``attn_mask``: boolean (True = may attend) or additive; ``is_causal``: key j visible
    from query i iff j ≤ i (top-left aligned, as torch); ``enable_gqa``: key/value heads
    repeated to the query heads. Dropout cannot be part of a jet (it is random):
    ``dropout_p > 0`` raises :class:`UnsupportedOpError`.
    """
    if dropout_p:
        raise UnsupportedOpError(
            f"scaled_dot_product_attention with dropout_p={dropout_p}: dropout is random, so it has no jet; "
            "put the model in eval mode (or use attn_implementation='eager')"
        )
    L, S, E = query.shape[-2], key.shape[-2], query.shape[-1]
    s = 1.0 / math.sqrt(E) if scale is None else float(scale)
    if enable_gqa and query.dim() >= 3 and key.shape[-3] != query.shape[-3]:
        rep = query.shape[-3] // key.shape[-3]
        key = key.repeat_interleave(rep, dim=-3)
        value = value.repeat_interleave(rep, dim=-3)
    scores = (query @ key.transpose(-2, -1)) * s
    if is_causal:
        if attn_mask is not None:
            raise UnsupportedOpError("scaled_dot_product_attention: give either attn_mask or is_causal=True, not both")
        allowed = torch.ones(L, S, dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~allowed, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    return torch.softmax(scores, dim=-1) @ value


def hardsigmoid_composite(x: Tensor, inplace: bool = False) -> Tensor:
    """``F.hardsigmoid`` as relu6(x + 3) / 6 (a hardtanh, which nested JVPs can differentiate)."""
    return F.hardtanh(x + 3.0, 0.0, 6.0) / 6.0


_RMS = {F.rms_norm, getattr(torch, "rms_norm", F.rms_norm)}
_SDPA = {F.scaled_dot_product_attention, torch._C._nn.scaled_dot_product_attention}
_LAYER_NORM = {F.layer_norm, torch.layer_norm}


class ElementaryOps(torch.overrides.TorchFunctionMode):
    """Compute fused torch functions from elementary ops while active.

    ``rms_norm``: ``F.rms_norm`` / ``torch.rms_norm`` (and so ``nn.RMSNorm``);
    ``sdpa``: ``F.scaled_dot_product_attention``; ``layer_norm``: ``F.layer_norm``;
    ``hardsigmoid``: ``F.hardsigmoid`` (for the nested-JVP oracle only).
    """

    def __init__(self, *, rms_norm: bool = True, sdpa: bool = True, layer_norm: bool = False, hardsigmoid: bool = False) -> None:
        super().__init__()
        self.rms_norm = rms_norm
        self.sdpa = sdpa
        self.layer_norm = layer_norm
        self.hardsigmoid = hardsigmoid

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if self.rms_norm and func in _RMS:
            return rms_norm_composite(*args, **kwargs)
        if self.sdpa and func in _SDPA:
            return sdpa_composite(*args, **kwargs)
        if self.layer_norm and func in _LAYER_NORM:
            return layer_norm_composite(*args, **kwargs)
        if self.hardsigmoid and func is F.hardsigmoid:
            return hardsigmoid_composite(*args, **kwargs)
        return func(*args, **kwargs)


FUSED_ATTENTION_HINT = (
    "fused attention kernels have no Taylor rule: load the model with attn_implementation='eager' "
    "(jetex.load and HFResidualModel.from_hf do), or call F.scaled_dot_product_attention, which jets decompose"
)


def hint_for(op: Any) -> str:
    """Advice appended to the 'no Taylor rule' error for ops with a known way around."""
    name = str(op)
    if "attention" in name or "flash" in name:
        return "; " + FUSED_ATTENTION_HINT
    return ""


__all__: Sequence[str] = [
    "ElementaryOps",
    "hardsigmoid_composite",
    "layer_norm_composite",
    "rms_norm_composite",
    "sdpa_composite",
    "hint_for",
]
