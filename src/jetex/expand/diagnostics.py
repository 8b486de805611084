"""How far an expansion's readout can be trusted (issue 11, item 1; criteria in docs/trust.md).

Computed from what the jets already produce, for R rows (expansion terms, lens rows, paths)
at t positions, every field ``[R, t]``:

- ``decay``: the largest ratio ‖c_j‖ / ‖c_{j−1}‖ (j = 1..k) of successive Taylor-degree norms
  of the row's jet (NaN at k = 0, or for rows that are no jet). Below 1 the degrees shrink.
- ``distance``: ‖y − x‖ / ‖x‖, the centre-to-variate distance relative to the centre's norm.
  For an RMSNorm (or LayerNorm, on centred vectors) the Taylor series around x converges
  at y exactly when ‖y − x‖ < √(‖x‖² + d·eps), i.e. (eps aside) when ``distance`` < 1.
- ``remainder_share``: ‖U δ‖ / ‖q‖, the remainder's size against the logits it completes
  (stream space, ‖δ‖ / ‖h_{l+1}‖, for an expansion of an inner block).
- ``cancellation``: κ = (Σ_i ‖U e_i‖ + ‖U δ‖) / ‖q‖, how far the exact rewrite
  q = Σ_i U e_i + U δ relies on large terms cancelling (1 when nothing cancels).
- ``unit_roundoff``: u of the dtype the terms were computed in; κ·u bounds the relative
  rounding error of the readout (the rows are computed in that dtype even when their sums
  are accumulated in float64, :mod:`jetex.expand.numerics`).

A cell is **trusted** when none of these flags is raised (thresholds in :class:`Thresholds`):
``divergent`` (k ≥ 1 and distance ≥ 1 or decay > 1), ``remainder`` (remainder_share > 1:
the remainder is larger than the output), ``cancellation`` (κ > 10) and ``rounding``
(κ·u > 1e-3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor

FLAGS = ("divergent", "remainder", "cancellation", "rounding")

_WHAT = {
    "divergent": "the Taylor series diverges (centre→variate distance ≥ 1 or growing degree norms)",
    "remainder": "the remainder is larger than the model's logits",
    "cancellation": "terms and remainder cancel (Σ|terms| ≫ |q|)",
    "rounding": "rounding in the working dtype exceeds 1e-3 of the logits",
}


@dataclass(frozen=True)
class Thresholds:
    """The trust criteria (see the module docstring and docs/trust.md)."""

    max_distance: float = 1.0
    max_decay: float = 1.0
    max_remainder_share: float = 1.0
    max_cancellation: float = 10.0
    max_rounding: float = 1e-3

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class Diagnostics:
    """Trust diagnostics of R rows at t positions (all tensors ``[R, t]``, float64 on the CPU)."""

    order: int
    decay: Tensor
    distance: Tensor
    remainder_share: Tensor
    cancellation: Tensor
    unit_roundoff: float
    thresholds: Thresholds = field(default_factory=Thresholds)

    def __post_init__(self) -> None:
        shape = tuple(self.decay.shape)
        if len(shape) != 2:
            raise ValueError("Diagnostics: fields must be [R, t]")
        for name in ("distance", "remainder_share", "cancellation"):
            v = getattr(self, name)
            if tuple(v.shape) != shape:
                raise ValueError(f"Diagnostics: {name} must be {list(shape)}, got {list(v.shape)}")
        if self.order < 0 or not (0 < self.unit_roundoff < 1):
            raise ValueError("Diagnostics: bad order or unit roundoff")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.decay.shape)  # type: ignore[return-value]

    def flags(self) -> dict[str, Tensor]:
        """Boolean ``[R, t]`` per criterion (True = the criterion fails)."""
        th = self.thresholds
        if self.order >= 1:
            div = (self.distance >= th.max_distance) | (self.decay > th.max_decay)
        else:
            div = torch.zeros(self.shape, dtype=torch.bool)
        return {
            "divergent": div,
            "remainder": self.remainder_share > th.max_remainder_share,
            "cancellation": self.cancellation > th.max_cancellation,
            "rounding": self.cancellation * self.unit_roundoff > th.max_rounding,
        }

    @property
    def trusted(self) -> Tensor:
        """Boolean ``[R, t]``: no criterion fails (NaN diagnostics count as failing)."""
        bad = torch.zeros(self.shape, dtype=torch.bool)
        for f in self.flags().values():
            bad |= f
        bad |= ~torch.isfinite(self.remainder_share) | ~torch.isfinite(self.cancellation)
        return ~bad

    def trusted_rows(self) -> Tensor:
        """Boolean ``[R]``: rows trusted at every position."""
        return self.trusted.all(-1)

    def reasons(self, r: int, i: int) -> list[str]:
        """Names of the criteria cell (r, i) fails."""
        return [k for k, v in self.flags().items() if bool(v[r, i])]

    def dominant(self) -> str | None:
        """The criterion failing at the most cells, or None when every cell is trusted."""
        counts = {k: int(v.sum()) for k, v in self.flags().items()}
        k = max(counts, key=lambda n: counts[n])
        return k if counts[k] else None

    def warning(self, what: str = "cells", hint: str = "") -> str | None:
        """One line when most cells are untrusted (the readout is dominated by a failure), else None."""
        n = self.trusted.numel()
        bad = n - int(self.trusted.sum())
        if n == 0 or bad * 2 <= n:
            return None
        k = self.dominant() or "remainder"
        detail = {
            "divergent": f"distance up to {_g(self.distance)}",
            "remainder": f"‖Uδ‖/‖q‖ up to {_g(self.remainder_share)}",
            "cancellation": f"κ up to {_g(self.cancellation)}",
            "rounding": f"κ·u up to {_g(self.cancellation * self.unit_roundoff)}",
        }[k]
        line = f"{bad} of {n} {what} are untrusted: {_WHAT[k]} ({detail})"
        return line + (f"; {hint}" if hint else "")

    def summary(self) -> str:
        """A short text: trusted share and the worst value of each diagnostic."""
        n = self.trusted.numel()
        return (
            f"trusted {int(self.trusted.sum())}/{n}; max distance {_g(self.distance)}, decay {_g(self.decay)}, "
            f"‖Uδ‖/‖q‖ {_g(self.remainder_share)}, κ {_g(self.cancellation)}"
        )

    def __repr__(self) -> str:
        R, t = self.shape
        return f"Diagnostics(order={self.order}, {R}×{t}, {self.summary()})"

    def row(self, r: int) -> dict:
        """Per-row maxima over positions and the trusted verdict (JSON-ready)."""
        return {
            "trusted": bool(self.trusted[r].all()),
            "decay": _num(_nanmax(self.decay[r])),
            "distance": _num(_nanmax(self.distance[r])),
            "remainder_share": _num(_nanmax(self.remainder_share[r])),
            "cancellation": _num(_nanmax(self.cancellation[r])),
            "reasons": sorted(k for k, v in self.flags().items() if bool(v[r].any())),  # failed at some position
        }

    def to_dict(self) -> dict:
        """JSON-ready (NaN → None); :meth:`from_dict` inverts it."""

        def grid(x: Tensor) -> list:
            return [[_num(v) for v in row] for row in x.tolist()]

        return {
            "order": self.order,
            "unit_roundoff": self.unit_roundoff,
            "thresholds": self.thresholds.to_dict(),
            "decay": grid(self.decay),
            "distance": grid(self.distance),
            "remainder_share": grid(self.remainder_share),
            "cancellation": grid(self.cancellation),
            "trusted": self.trusted.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Diagnostics":
        def t(x) -> Tensor:
            return torch.tensor([[math.nan if v is None else v for v in row] for row in x], dtype=torch.float64)

        return cls(
            order=int(d["order"]),
            decay=t(d["decay"]),
            distance=t(d["distance"]),
            remainder_share=t(d["remainder_share"]),
            cancellation=t(d["cancellation"]),
            unit_roundoff=float(d["unit_roundoff"]),
            thresholds=Thresholds(**d.get("thresholds", {})),
        )


def _nanmax(x: Tensor) -> float:
    x = x[~torch.isnan(x)]
    return float(x.max()) if x.numel() else math.nan


def _num(x: float) -> float | None:
    if math.isnan(x):
        return None
    return x if math.isinf(x) else float(f"{x:.4g}")


def _g(x: Tensor) -> str:
    v = _nanmax(x)
    return "n/a" if math.isnan(v) else f"{v:.3g}"


# ----------------------------------------------------------------------------- computing


def decay_from_norms(norms: Float[Tensor, "k1 *rest"]) -> Float[Tensor, "*rest"]:
    """max_j ‖c_j‖ / ‖c_{j−1}‖ over j = 1..k from stacked degree norms (NaN for k = 0; a
    non-zero degree after a zero one counts as infinite growth, zero after zero as none)."""
    norms = norms.double()
    if norms.shape[0] < 2:
        return torch.full(norms.shape[1:], math.nan, dtype=torch.float64)
    num, den = norms[1:], norms[:-1]
    ratio = torch.where(den > 0, num / den.clamp_min(1e-300), torch.where(num > 0, math.inf, 0.0))
    return ratio.max(0).values


def relative_distance(x: Float[Tensor, "*b d"], y: Float[Tensor, "*c d"]) -> Float[Tensor, "*b"]:
    """‖y − x‖ / ‖x‖ over the last dim (∞ where x = 0 ≠ y), in float64; y broadcasts to x."""
    x, y = x.double(), y.double().expand_as(x)
    num = (y - x).norm(dim=-1)
    den = x.norm(dim=-1)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.where(num > 0, math.inf, 0.0))


def ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den in float64, ∞ where den = 0 < num and 0 where both are 0."""
    num, den = num.double(), den.double()
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.where(num > 0, math.inf, 0.0))


__all__ = ["FLAGS", "Diagnostics", "Thresholds", "decay_from_norms", "ratio", "relative_distance"]
