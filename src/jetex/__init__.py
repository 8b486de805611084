"""jetex: jet expansions of residual computation.

Interpret a language model as a sum of input-to-output paths plus a remainder
(Chen et al., "Jet Expansions of Residual Computation"), read it through jet lenses,
extract its jet n-gram statistics, and attribute its predictions to input tokens.
"""

from jetex.errors import JetexError
from jetex.models import LinearResidualNet, ResidualModel, ToyResidualNet, toy_two_block

__version__ = "0.1.0"

__all__ = [
    "JetexError",
    "LinearResidualNet",
    "ResidualModel",
    "ToyResidualNet",
    "toy_two_block",
]
