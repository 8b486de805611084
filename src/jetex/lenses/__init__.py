"""Jet lenses (paper Sec. 4): iterative (per layer) and joint (per block contribution)."""

from jetex.lenses.lens import (
    CosineCurve,
    LensResult,
    iterative_lens,
    iterative_lens_logits,
    joint_centres,
    joint_lens,
    joint_lens_logits,
    layer_streams,
    lens_cosine_curve,
)
from jetex.lenses.weights import adam_simplex, optimal_weights, remainder_loss, simplex_qp

__all__ = [
    "CosineCurve",
    "LensResult",
    "adam_simplex",
    "iterative_lens",
    "iterative_lens_logits",
    "joint_centres",
    "joint_lens",
    "joint_lens_logits",
    "layer_streams",
    "lens_cosine_curve",
    "optimal_weights",
    "remainder_loss",
    "simplex_qp",
]
