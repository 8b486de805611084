"""Loading models and their residual-block view (paper Sec. 2)."""

from jetex.models.base import Block, FnBlock, HeadWeights, ResidualModel
from jetex.models.toy import LinearResidualNet, ToyResidualNet, toy_two_block

__all__ = [
    "Block",
    "FnBlock",
    "HeadWeights",
    "ResidualModel",
    "LinearResidualNet",
    "ToyResidualNet",
    "toy_two_block",
]
