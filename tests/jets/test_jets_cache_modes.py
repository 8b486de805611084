"""The jet trace cache follows .train()/.eval(): of the module, of any submodule switched alone
(e.g. the Hugging Face model under a block wrapper), and of modules a function closes over."""

from __future__ import annotations

import torch
from torch import nn

from jetex.jets import jet_coefficients


class ModeDependent(nn.Module):
    """x² in eval mode, 3x in training mode (deterministic, unlike dropout)."""

    def forward(self, x):
        return 3 * x if self.training else x * x


class Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = ModeDependent()

    def forward(self, x):
        return self.inner(x) + 0


def _expected(mode_train: bool, x, y):
    v = y - x
    if mode_train:  # 3x + 3tv: c0 = 3x, c1 = 3v, c2 = 0
        return torch.stack([3 * x, 3 * v, torch.zeros_like(x)])
    return torch.stack([x * x, 2 * x * v, v * v])  # (x + tv)²


def test_cache_follows_train_eval_of_module_and_submodules():
    x, y = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    w = Wrapper().eval()
    torch.testing.assert_close(jet_coefficients(w, x, y, 2), _expected(False, x, y))
    w.inner.train()  # the child alone: w.training is still False
    assert not w.training
    torch.testing.assert_close(jet_coefficients(w, x, y, 2), _expected(True, x, y))
    w.eval()
    torch.testing.assert_close(jet_coefficients(w, x, y, 2), _expected(False, x, y))
    w.train()
    torch.testing.assert_close(jet_coefficients(w.forward, x, y, 2), _expected(True, x, y))  # a bound method


def test_cache_follows_train_eval_of_closed_over_modules():
    x, y = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    w = Wrapper().eval()
    f = lambda z: w(z)  # noqa: E731
    torch.testing.assert_close(jet_coefficients(f, x, y, 2), _expected(False, x, y))
    w.inner.train()
    torch.testing.assert_close(jet_coefficients(f, x, y, 2), _expected(True, x, y))
