"""Loading models and their residual-block view (paper Sec. 2)."""

from jetex.models.base import Block, FnBlock, HeadWeights, ResidualModel
from jetex.models.toy import LinearResidualNet, ToyResidualNet, toy_two_block
from jetex.models.hf import HFResidualModel

__all__ = [
    "Block",
    "FnBlock",
    "HeadWeights",
    "HFResidualModel",
    "ResidualModel",
    "LinearResidualNet",
    "ToyResidualNet",
    "toy_two_block",
]
