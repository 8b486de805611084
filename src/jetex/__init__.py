"""jetex: jet expansions of residual computation.

Interpret a language model as a sum of input-to-output paths plus a remainder
(Chen et al., "Jet Expansions of Residual Computation"), read it through jet lenses,
extract its jet n-gram statistics, and attribute its predictions to input tokens.
"""

from jetex.attribution import Attribution, attribute
from jetex.errors import JetexError
from jetex.expand import (
    Contribution,
    Embedding,
    Expansion,
    Path,
    PathExpansion,
    PathFilter,
    PathRanking,
    RankedPath,
    Segment,
    Stream,
    exp_jet_expansion,
    jet_expand,
)
from jetex.jets import jet, jet_coefficients
from jetex.lenses import CosineCurve, LensResult, iterative_lens, joint_lens, lens_cosine_curve
from jetex.models import LinearResidualNet, ResidualModel, ToyResidualNet, toy_two_block
from jetex.models.interop import from_hf
from jetex.models.load import load
from jetex.ngrams import NgramStore, NgramTable, extract_ngrams, ngram_table
from jetex.results import Result, ResultList, load_result

__version__ = "0.1.0"

__all__ = [
    "Attribution",
    "CosineCurve",
    "Expansion",
    "LensResult",
    "NgramTable",
    "Path",
    "PathExpansion",
    "PathRanking",
    "RankedPath",
    "Result",
    "ResultList",
    "load_result",
    "from_hf",
    "ngram_table",
    "attribute",
    "Contribution",
    "Embedding",
    "PathFilter",
    "Segment",
    "Stream",
    "exp_jet_expansion",
    "jet_expand",
    "iterative_lens",
    "joint_lens",
    "lens_cosine_curve",
    "JetexError",
    "jet",
    "jet_coefficients",
    "LinearResidualNet",
    "ResidualModel",
    "ToyResidualNet",
    "toy_two_block",
    "load",
    "NgramStore",
    "extract_ngrams",
]
