"""Measured error of reduced-precision lens and path readouts (``--dtype float16/bfloat16``; issue 11).

A lens or path ranking computed with the model in float16 or bfloat16 comes with its error
measured against a float32 recomputation of the same readout, as the n-gram engine does for
its tables (:func:`jetex.ngrams.device.precision_report`):

- lenses: a deterministic sample of rows (``sample`` rows evenly spaced over the lens's rows,
  the first and the last included), every position, the whole vocabulary;
- paths: the ranked (shown) paths at the ranked position, the whole vocabulary.

For those logits z (``[rows, ..., V]``) in the low precision (widened to float64) and z₃₂ in
float32 (the same model's weights, converted):

- ``max_abs_logit_diff`` = max |z − z₃₂|
- ``max_abs_logit`` = max |z₃₂| (the scale)
- ``relative_error`` = max_abs_logit_diff / max_abs_logit, the number printed next to the result
- ``top1_agreement``: fraction of sampled cells whose argmax agrees.

The float32 recomputation costs about one more lens (paths: one more evaluation of the
shown paths) in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from jetex.lenses.lens import iterative_lens_logits, joint_centres, joint_lens_logits, layer_streams
from jetex.models.base import ResidualModel

#: lens rows compared with float32 by default
LENS_SAMPLE = 8


@dataclass(frozen=True)
class MeasuredError:
    """How far a reduced-precision readout is from its float32 recomputation (module docstring)."""

    dtype: str
    what: str
    sample: str
    max_abs_logit_diff: float
    max_abs_logit: float
    relative_error: float
    top1_agreement: float
    reference: str = "float32"

    def __post_init__(self) -> None:
        if not 0.0 <= self.top1_agreement <= 1.0:
            raise ValueError("MeasuredError.top1_agreement must lie in [0, 1]")
        if self.max_abs_logit_diff < 0 or self.max_abs_logit < 0:
            raise ValueError("MeasuredError: differences and scales must be >= 0")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MeasuredError":
        return cls(**d)

    def line(self) -> str:
        """One readable line, printed next to the result."""
        return (
            f"measured error of {self.dtype} vs a {self.reference} recomputation ({self.what}, {self.sample}): "
            f"max |Δlogit| {self.max_abs_logit_diff:.3g} = {self.relative_error:.2e} × max|logit| "
            f"({self.max_abs_logit:.3g}); top-1 agreement {self.top1_agreement:.0%}"
        )


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def compare_logits(low: Tensor, ref: Tensor, *, dtype: torch.dtype, what: str, sample: str) -> MeasuredError:
    """:class:`MeasuredError` of logits ``low`` against the float32 ``ref`` (same shape ``[..., V]``)."""
    if low.shape != ref.shape:
        raise ValueError(f"compare_logits: shapes differ, {list(low.shape)} vs {list(ref.shape)}")
    lo, r = low.double(), ref.double()
    diff = float((lo - r).abs().max())
    scale = float(r.abs().max())
    agree = float((lo.argmax(-1) == r.argmax(-1)).double().mean())
    rel = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
    return MeasuredError(_dtype_name(dtype), what, sample, diff, scale, rel, agree)


def sample_rows(n: int, sample: int = LENS_SAMPLE) -> list[int]:
    """``sample`` row indices evenly spaced over 0..n−1, first and last included (all when n ≤ sample)."""
    if n <= sample or sample < 2:
        return list(range(n)) if n <= sample else [n - 1]
    return sorted({round(i * (n - 1) / (sample - 1)) for i in range(sample)})


@torch.no_grad()
def _lens_rows(
    model: ResidualModel, ids: Tensor, kind: str, order: int, layers, centres, optimize: bool, rows: Sequence[int]
) -> Tensor:
    """Logits ``[r, t, V]`` of the chosen rows of the iterative or joint lens of one sequence."""
    h = model.stream(ids)
    if kind == "iterative":
        streams, _ = layer_streams(model, layers)
        return iterative_lens_logits(model, h, [streams[i] for i in rows], order)[:, 0]
    segs, _ = joint_centres(model, centres)
    logits, _, _ = joint_lens_logits(model, h[:, 0], segs, order, optimize)
    return logits[list(rows)]


def lens_error(
    low: ResidualModel,
    reference: ResidualModel,
    ids: Tensor,
    kind: str,
    order: int,
    *,
    layers=None,
    centres="layers",
    optimize: bool = False,
    n_rows: int,
    sample: int = LENS_SAMPLE,
) -> MeasuredError:
    """Measured error of the ``kind`` ("iterative" or "joint") lens of ``ids`` ``[1, t]`` computed with
    ``low`` (float16/bfloat16) against ``reference`` (float32): ``sample`` of its ``n_rows`` rows."""
    if reference.dtype != torch.float32:
        raise ValueError("the reference model must be float32")
    rows = sample_rows(n_rows, sample)
    z_lo = _lens_rows(low, ids.to(low.device), kind, order, layers, centres, optimize, rows)
    z32 = _lens_rows(reference, ids.to(reference.device), kind, order, layers, centres, optimize, rows)
    t = int(ids.shape[-1])
    return compare_logits(z_lo, z32, dtype=low.dtype, what=f"{kind} lens rows",
                          sample=f"{len(rows)} of {n_rows} rows × {t} positions × all tokens")


@torch.no_grad()
def paths_error(low_expansion, reference_expansion, ids: Tensor, paths: Sequence, *, position: int, weighted: bool) -> MeasuredError:
    """Measured error of the logits of ``paths`` (the shown ones) at ``position`` on ``ids``, evaluated
    with the :class:`~jetex.expand.paths.PathExpansion` of the low-precision model against that of the
    float32 one (same order and degrees)."""
    paths = list(paths)
    lo = low_expansion.evaluate(ids, paths, position=position, weighted=weighted).logits
    ref = reference_expansion.evaluate(ids, paths, position=position, weighted=weighted).logits
    V = lo.shape[-1]
    return compare_logits(lo.reshape(len(paths), V), ref.reshape(len(paths), V), dtype=low_expansion.model.dtype,
                          what="ranked paths", sample=f"the {len(paths)} shown paths × all tokens")


__all__ = ["LENS_SAMPLE", "MeasuredError", "compare_logits", "lens_error", "paths_error", "sample_rows"]
