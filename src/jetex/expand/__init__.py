"""Jet expansions (paper Sec. 3-4): Algorithm 1 (``jet_expand``), Algorithm 2 (``exp_jet_expansion``)."""

from jetex.expand.algorithm import (
    CentreGapWarning,
    Expansion,
    ExpansionValues,
    jet_expand,
    logit_lens_expansion,
)
from jetex.expand.paths import Path, PathExpansion, PathFilter, PathRanking, PathValues, RankedPath, exp_jet_expansion
from jetex.expand.terms import Contribution, Embedding, EvalContext, Given, Segment, Stream, Term

__all__ = [
    "CentreGapWarning",
    "Contribution",
    "Embedding",
    "EvalContext",
    "Expansion",
    "ExpansionValues",
    "Given",
    "Path",
    "PathExpansion",
    "PathFilter",
    "PathValues",
    "PathRanking",
    "RankedPath",
    "Segment",
    "Stream",
    "Term",
    "exp_jet_expansion",
    "jet_expand",
    "logit_lens_expansion",
]
