"""Tiny HF models wrapped as residual views, for the n-gram tests (unique module name: no conftest clash)."""

from __future__ import annotations

import torch


def _wrap(arch: str, seed: int = 0, dtype=torch.float64):
    from _tiny import make_hf, make_tokenizer

    from jetex.models.hf import HFResidualModel

    hf = make_hf(arch, seed=seed)
    m = HFResidualModel.from_hf(hf, make_tokenizer(), name=f"tiny-{arch}")
    return m.to(dtype)
