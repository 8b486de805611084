"""Toy residual networks for tests and teaching (paper Sec. 2 and the Sec. 3 walk-through).

- :class:`LinearResidualNet`: γ_l(x) = A_l x, η = E, γ_{L+1} = id. Expands exactly into
  2^L paths U W_S E (Eq. 5); every jet expansion of order k ≥ 1 has zero remainder.
- :class:`ToyResidualNet`: small non-linear residual MLP nets (RMS-normalised input,
  tanh, GELU or SiLU hidden layer) of configurable depth and width, with a final RMS norm.

Both act position-wise on token sequences ``[*b, t]``; they have no tokenizer.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from jetex.errors import InputError
from jetex.models.base import Block, ResidualModel


class _LinearBlock(Block):
    def __init__(self, l: int, d: int, scale: float) -> None:
        super().__init__(f"block.{l}", "linear", l - 1)
        self.A = nn.Parameter(torch.randn(d, d) * scale)

    def forward(self, x: Float[Tensor, "*b t d"]) -> Float[Tensor, "*b t d"]:
        return x @ self.A.T


class _RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(1.0 + 0.1 * torch.randn(d))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU}


class _MLPBlock(Block):
    def __init__(self, l: int, d: int, hidden: int, activation: str, norm: bool) -> None:
        super().__init__(f"block.{l}", "nonlinear", l - 1)
        self.norm = _RMSNorm(d) if norm else nn.Identity()
        self.fc_in = nn.Linear(d, hidden)
        self.fc_out = nn.Linear(hidden, d)
        self.act = ACTIVATIONS[activation]()
        with torch.no_grad():
            self.fc_out.weight.mul_(0.5)

    def forward(self, x: Float[Tensor, "*b t d"]) -> Float[Tensor, "*b t d"]:
        return self.fc_out(self.act(self.fc_in(self.norm(x))))


class _ToyBase(ResidualModel):
    def __init__(self, vocab_size: int, d: int) -> None:
        super().__init__()
        self.E = nn.Parameter(torch.randn(vocab_size, d))
        self.U = nn.Parameter(torch.randn(vocab_size, d) / d**0.5)

    def embed(self, input_ids: Int[Tensor, "*b t"]) -> Float[Tensor, "*b t d"]:
        return self.E[input_ids]

    _arch: dict[str, Any]

    @property
    def unembedding_matrix(self) -> Float[Tensor, "v d"]:
        return self.U

    def architecture_config(self) -> dict[str, Any]:
        """The blocks plus the constructor's structural arguments (not the seed: the
        weights themselves are hashed)."""
        return {**super().architecture_config(), "toy": dict(self._arch)}

    @property
    def d_model(self) -> int:
        return int(self.E.shape[1])


class LinearResidualNet(_ToyBase):
    """The paper's linear residual net: γ_l(x) = A_l x, γ_{L+1} = id."""

    def __init__(self, depth: int = 3, d: int = 8, vocab_size: int = 11, *, seed: int = 0, dtype=torch.float64) -> None:
        g = torch.random.fork_rng()
        with g:
            torch.manual_seed(seed)
            super().__init__(vocab_size, d)
            self.blocks = nn.ModuleList(_LinearBlock(l, d, 0.5 / d**0.5) for l in range(1, depth + 1))
        self.name = f"toy-linear-L{depth}-d{d}"
        self._arch = {"depth": depth, "d": d, "vocab_size": vocab_size}
        self.to(dtype)

    def final_norm(self, x: Float[Tensor, "*b t d"]) -> Float[Tensor, "*b t d"]:
        return x


class ToyResidualNet(_ToyBase):
    """A small non-linear residual net: blocks norm → linear → activation → linear, final RMS norm."""

    def __init__(
        self,
        depth: int = 2,
        d: int = 16,
        vocab_size: int = 23,
        hidden: int = 32,
        *,
        activation: str = "tanh",
        norm: bool = True,
        seed: int = 0,
        dtype=torch.float64,
    ) -> None:
        if activation not in ACTIVATIONS:
            raise InputError(f"unknown activation {activation!r}; valid activations: {', '.join(ACTIVATIONS)}")
        g = torch.random.fork_rng()
        with g:
            torch.manual_seed(seed)
            super().__init__(vocab_size, d)
            self.blocks = nn.ModuleList(_MLPBlock(l, d, hidden, activation, norm) for l in range(1, depth + 1))
            self._final = _RMSNorm(d) if norm else nn.Identity()
        self.name = f"toy-{activation}-L{depth}-d{d}"
        self._arch = {"depth": depth, "d": d, "vocab_size": vocab_size, "hidden": hidden, "activation": activation, "norm": norm}
        self.to(dtype)

    def final_norm(self, x: Float[Tensor, "*b t d"]) -> Float[Tensor, "*b t d"]:
        return self._final(x)


def toy_two_block(d: int = 32, vocab_size: int = 50, seed: int = 0) -> ToyResidualNet:
    """The paper's Sec. 3 walk-through model: two non-linear residual blocks."""
    return ToyResidualNet(depth=2, d=d, vocab_size=vocab_size, hidden=2 * d, seed=seed)
