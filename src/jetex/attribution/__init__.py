"""Token attribution (METHODS.md §6): NormXLogit, its layer-wise and jet generalisations,
gradient baselines (Captum), and their faithfulness by erasure (comprehensiveness,
sufficiency, AOPC).
"""

from jetex.attribution.core import (
    FORWARD_METHODS,
    GRADIENT_METHODS,
    LAYERWISE_METHODS,
    METHODS,
    Attribution,
    GradientUnavailableError,
    attribute,
)
from jetex.attribution.faithfulness import (
    DEFAULT_RATIOS,
    FaithfulnessCurve,
    FaithfulnessReport,
    MethodSpec,
    erasure_curve,
    evaluate_faithfulness,
    faithfulness,
    load_prompts,
)

__all__ = [
    "Attribution",
    "DEFAULT_RATIOS",
    "FORWARD_METHODS",
    "FaithfulnessCurve",
    "FaithfulnessReport",
    "GRADIENT_METHODS",
    "GradientUnavailableError",
    "LAYERWISE_METHODS",
    "METHODS",
    "MethodSpec",
    "attribute",
    "erasure_curve",
    "evaluate_faithfulness",
    "faithfulness",
    "load_prompts",
]
