"""Non-finite weights and results are errors (one line), unless explicitly allowed.

- :func:`check_finite_weights`: a model whose parameters or buffers hold NaN/±Inf is
  refused at load (:func:`jetex.load`, :meth:`HFResidualModel.from_hf`) with
  :class:`~jetex.errors.NonFiniteWeightsError` naming the first bad tensor and its count.
- :func:`check_finite`: a computed result (tensor, number, or a nested payload of them)
  holding NaN/±Inf raises :class:`~jetex.errors.NonFiniteResultError` naming where; every
  CLI command runs its readout through it before printing or writing anything.
- :func:`allow_nonfinite`: the debugging opt-out (Python ``allow_nonfinite=True``; the CLI's
  ``--allow-nonfinite`` sets :data:`ALLOW_NONFINITE` for the command), under which both checks pass.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from jetex.errors import NonFiniteResultError, NonFiniteWeightsError

#: default of ``allow_nonfinite`` where a call does not give it (the CLI's --allow-nonfinite sets it)
ALLOW_NONFINITE: contextvars.ContextVar[bool] = contextvars.ContextVar("jetex_allow_nonfinite", default=False)


@contextlib.contextmanager
def allow_nonfinite(flag: bool = True) -> Iterator[None]:
    """Within the block, non-finite weights and results are let through (for debugging)."""
    token = ALLOW_NONFINITE.set(bool(flag))
    try:
        yield
    finally:
        ALLOW_NONFINITE.reset(token)


def _allowed(flag: bool | None) -> bool:
    return ALLOW_NONFINITE.get() if flag is None else bool(flag)


def _count(t: Tensor) -> tuple[int, int]:
    """(number of NaN, number of ±Inf) in t."""
    return int(torch.isnan(t).sum()), int(torch.isinf(t).sum())


def _describe(n_nan: int, n_inf: int, numel: int) -> str:
    parts = []
    if n_nan:
        parts.append(f"{n_nan} NaN")
    if n_inf:
        parts.append(f"{n_inf} Inf")
    return " and ".join(parts) + f" of {numel} values"


def check_finite_weights(module: nn.Module, model_name: str = "model", allow: bool | None = None) -> None:
    """Raise :class:`NonFiniteWeightsError` if a floating parameter or buffer of ``module`` is not finite.

    The message names the first bad tensor (in ``named_parameters`` then ``named_buffers``
    order), its NaN/Inf count and how many tensors are bad in all. ``allow`` (default:
    :data:`ALLOW_NONFINITE`) skips the check.
    """
    if _allowed(allow):
        return
    first: tuple[str, Tensor] | None = None
    n_bad = 0
    with torch.no_grad():
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
                continue
            # one reduction per tensor, no copy: a NaN or Inf anywhere makes the sum non-finite
            # (a finite sum that overflows is re-checked elementwise)
            if bool(torch.isfinite(t.detach().sum())) or bool(torch.isfinite(t).all()):
                continue
            n_bad += 1
            if first is None:
                first = (name, t)
    if first is None:
        return
    name, t = first
    n_nan, n_inf = _count(t)
    more = f" ({n_bad} non-finite tensors in all)" if n_bad > 1 else ""
    raise NonFiniteWeightsError(
        f"{model_name} has non-finite weights: {name} holds {_describe(n_nan, n_inf, t.numel())}{more}; "
        "refusing to load it (allow_nonfinite=True / --allow-nonfinite loads it anyway, for debugging)"
    )


def _first_nonfinite(obj: Any, path: str) -> tuple[str, str] | None:
    """(where, what) of the first non-finite number in a tensor/number/payload, else None."""
    if isinstance(obj, Tensor):
        if not (obj.is_floating_point() or obj.is_complex()) or obj.numel() == 0:
            return None
        fin = torch.isfinite(obj.detach())
        if bool(fin.all()):
            return None
        n_nan, n_inf = _count(obj.detach())
        idx = tuple(int(i) for i in (~fin).nonzero()[0]) if obj.dim() else ()
        where = path + (str(list(idx)) if idx else "")
        return where, _describe(n_nan, n_inf, obj.numel())
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return None
    if isinstance(obj, (int, float)):
        return None if math.isfinite(obj) else (path, str(obj))
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            hit = _first_nonfinite(v, f"{path}.{k}" if path else str(k))
            if hit:
                return hit
        return None
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            hit = _first_nonfinite(v, f"{path}[{i}]")
            if hit:
                return hit
        return None
    if hasattr(obj, "__dataclass_fields__"):
        for k in obj.__dataclass_fields__:
            hit = _first_nonfinite(getattr(obj, k, None), f"{path}.{k}" if path else k)
            if hit:
                return hit
        return None
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):  # numpy arrays and scalars
        return _first_nonfinite(torch.as_tensor(obj), path)
    return None


def check_finite(obj: Any, what: str, hint: str = "", allow: bool | None = None) -> Any:
    """Return ``obj`` if every number in it is finite, else raise :class:`NonFiniteResultError`.

    ``obj``: a tensor, a number, or nested dicts/lists/tuples/dataclasses of them (a JSON
    payload). The one-line message names ``what``, the first non-finite entry (its path
    and index) and counts, then ``hint`` (what to try).
    """
    if _allowed(allow):
        return obj
    hit = _first_nonfinite(obj, "")
    if hit is None:
        return obj
    where, desc = hit
    at = f" at {where}" if where else ""
    tail = f"; {hint}" if hint else ""
    raise NonFiniteResultError(f"{what} is not finite{at} ({desc}){tail}")


__all__ = ["ALLOW_NONFINITE", "allow_nonfinite", "check_finite", "check_finite_weights"]
