"""The range of jet orders jetex accepts, checked without importing torch.

The command line validates ``--order`` before it loads a model (or, with ``--server``,
before it sends a request), so this check lives below every torch-importing layer.
"""

from __future__ import annotations

from jetex.errors import InputError

#: the highest jet order the expansions, lenses, attribution and commands accept: the Taylor
#: rules (and the nested-JVP fallback) are checked against the float64 oracle for k = 0..4
MAX_ORDER = 4


def check_max_order(order: object) -> int:
    """Validate an expansion order k: an int with 0 ≤ k ≤ :data:`MAX_ORDER`, else :class:`InputError` saying why."""
    if isinstance(order, bool) or not isinstance(order, int):
        raise InputError(f"order must be a non-negative integer, got {order!r}")
    if order < 0:
        raise InputError(f"order must be >= 0, got {order}")
    if order > MAX_ORDER:
        raise InputError(
            f"order {order} is beyond the supported maximum {MAX_ORDER}: jets are verified against nested JVPs "
            f"up to order {MAX_ORDER} only, and higher-order Taylor series of the final norm diverge on real models "
            "(their coefficients overflow to NaN); use --order 0..4"
        )
    return order


__all__ = ["MAX_ORDER", "check_max_order"]
