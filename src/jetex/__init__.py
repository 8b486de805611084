"""jetex: jet expansions of residual computation.

Interpret a language model as a sum of input-to-output paths plus a remainder
(Chen et al., "Jet Expansions of Residual Computation"), read it through jet lenses,
extract its jet n-gram statistics, and attribute its predictions to input tokens.

``import jetex`` is light: it imports neither torch nor transformers. The public names
below are resolved on first access (PEP 562 module ``__getattr__``), so
``from jetex import load`` or ``jetex.iterative_lens`` import only the sub-package that
defines them. This is lazy loading for start-up speed (the command line's ``--help``
needs none of it), not a way around an import cycle: every sub-package imports only the
layers below it (see ``tests/test_layering.py``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from jetex.errors import JetexError

__version__ = "0.1.0"

#: public name -> the module that defines it (imported on first access)
_LAZY: dict[str, str] = {
    "Attribution": "jetex.attribution",
    "attribute": "jetex.attribution",
    "Contribution": "jetex.expand",
    "Embedding": "jetex.expand",
    "Expansion": "jetex.expand",
    "Path": "jetex.expand",
    "PathExpansion": "jetex.expand",
    "PathFilter": "jetex.expand",
    "PathRanking": "jetex.expand",
    "RankedPath": "jetex.expand",
    "Segment": "jetex.expand",
    "Stream": "jetex.expand",
    "exp_jet_expansion": "jetex.expand",
    "jet_expand": "jetex.expand",
    "jet": "jetex.jets",
    "jet_coefficients": "jetex.jets",
    "CosineCurve": "jetex.lenses",
    "LensResult": "jetex.lenses",
    "iterative_lens": "jetex.lenses",
    "joint_lens": "jetex.lenses",
    "lens_cosine_curve": "jetex.lenses",
    "LinearResidualNet": "jetex.models",
    "ResidualModel": "jetex.models",
    "ToyResidualNet": "jetex.models",
    "toy_two_block": "jetex.models",
    "load": "jetex.models.load",
    "from_hf": "jetex.models.interop",
    "NgramStore": "jetex.ngrams",
    "NgramTable": "jetex.ngrams",
    "extract_ngrams": "jetex.ngrams",
    "ngram_table": "jetex.ngrams",
    "Result": "jetex.results",
    "ResultList": "jetex.results",
    "load_result": "jetex.results",
}

__all__ = ["JetexError", *_LAZY]


def __getattr__(name: str) -> Any:
    """Resolve a public name (or a sub-package, e.g. ``jetex.lenses``) on first access."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jetex' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later accesses skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from jetex.attribution import Attribution, attribute
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
