"""The precisions jetex evaluates in (``--dtype``): names, aliases and their torch dtypes.

Kept at the bottom layer so that any command can check a ``--dtype`` before it loads a model
without importing the modules that use it (the n-gram engine, the precision report).
"""

from __future__ import annotations

import torch

from jetex.errors import InputError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_ALIASES = {"fp32": "float32", "f32": "float32", "bf16": "bfloat16", "fp16": "float16", "f16": "float16", "half": "float16"}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` → ``"bfloat16"``."""
    return str(dtype).replace("torch.", "")


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """The evaluation dtype: ``float32`` (default, None), ``bfloat16`` or ``float16``."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise InputError(f"unsupported dtype {dtype_name(dtype)}; use one of: {', '.join(DTYPES)}")
        return dtype
    if not isinstance(dtype, str):
        raise InputError(f"dtype must be a name such as 'bfloat16', got {dtype!r}")
    key = dtype.strip().lower().replace("torch.", "")
    key = _ALIASES.get(key, key)
    if key not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; use one of: {', '.join(DTYPES)}")
    return DTYPES[key]


__all__ = ["DTYPES", "dtype_name", "resolve_dtype"]
